"""Verify a regenerated reference dataset against an earlier run of the same recipe.

File hashes cannot do this: PySCF's last digits vary with the BLAS and the CPU.  Instead each structure
present in both is compared by its SCF energy (|ΔE| ≤ 1e-6 Ha, from the manifests), its grid electron
count (≤ 1e-6 relative) and, when the earlier grids are at hand, ε_mae between the two grids
(≤ 1e-3 %).  A structure in the reference but not regenerated is listed, not failed.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

from cdp.core.errors import CdpError
from cdp.data.generate import read_manifest
from cdp.io import read

ENERGY_TOLERANCE = 1e-6  # Ha
ELECTRON_TOLERANCE = 1e-6  # relative
EPS_MAE_TOLERANCE = 1e-3  # percent


def _manifest(path: str) -> dict:
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "manifest.json")):
            raise CdpError(f"{path}: no manifest.json (not a dataset made by `cdp data make`)")
        return read_manifest(path)

    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CdpError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("structures"), dict):
        raise CdpError(f"{path}: manifest must be an object with a 'structures' object")
    return data


def _grid_values(directory: str, entry: dict) -> np.ndarray:
    return read(os.path.join(directory, entry["file"]), pbc=False)[1].values


def verify_regeneration(new: str, reference: str) -> dict:
    """Compare dataset directory ``new`` with ``reference`` (a dataset directory, or its manifest.json alone).

    Returns ``{"structures": [{name, energy_diff_hartree, electrons_rel_diff, eps_mae_percent|None, ok}],
    "missing": [...], "ok": bool, "tolerances": {...}}``; raises CdpError when nothing can be compared or the
    recipes differ.
    """
    new_m, ref_m = _manifest(new), _manifest(reference)
    new_recipe = (new_m.get("generator") or {}).get("recipe")
    ref_recipe = (ref_m.get("generator") or {}).get("recipe")
    if new_recipe and ref_recipe and new_recipe != ref_recipe:
        diff = sorted(k for k in set(new_recipe) | set(ref_recipe) if new_recipe.get(k) != ref_recipe.get(k))
        raise CdpError(f"the two datasets were made with different recipes (they differ in: {', '.join(diff)})")
    ref_dir = reference if os.path.isdir(reference) else None
    rows, missing = [], []
    for name, ref in sorted(ref_m["structures"].items()):
        entry: Optional[Dict] = new_m["structures"].get(name)
        if entry is None:
            missing.append(name)
            continue
        de = abs(float(entry["energy_hartree"]) - float(ref["energy_hartree"]))
        dn = abs(float(entry["electrons_grid"]) - float(ref["electrons_grid"])) / max(abs(float(ref["electrons_grid"])), 1e-12)
        eps = None
        if ref_dir is not None:
            a, b = _grid_values(ref_dir, ref), _grid_values(new, entry)
            if a.shape != b.shape:
                raise CdpError(f"{name}: grids differ in shape ({a.shape} vs {b.shape})")
            eps = 100.0 * float(np.abs(a - b).sum() / np.abs(a).sum())
        ok = de <= ENERGY_TOLERANCE and dn <= ELECTRON_TOLERANCE and (eps is None or eps <= EPS_MAE_TOLERANCE)
        rows.append({"name": name, "energy_diff_hartree": de, "electrons_rel_diff": dn, "eps_mae_percent": eps, "ok": ok})
    if not rows:
        raise CdpError("no structure of the reference is in the regenerated dataset: nothing to compare")
    return {
        "structures": rows,
        "missing": missing,
        "ok": all(r["ok"] for r in rows),
        "tolerances": {"energy_hartree": ENERGY_TOLERANCE, "electrons_relative": ELECTRON_TOLERANCE,
                       "eps_mae_percent": EPS_MAE_TOLERANCE},
    }
