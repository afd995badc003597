"""Regeneration of reference data is verified by physics (energy, electrons, ε_mae), not by file hashes."""

from __future__ import annotations

import json
import shutil

import pytest

from cdp.core.errors import CdpError
from cdp.data.paths import embedded_path
from cdp.data.verify import verify_regeneration

pytest.importorskip("pyscf")


def _subset(tmp_path, names, src=None):
    src = src or embedded_path()
    man = json.load(open(f"{src}/manifest.json"))
    out = tmp_path / "ref"
    out.mkdir()
    man["structures"] = {n: man["structures"][n] for n in names}
    for n in names:
        shutil.copy(f"{src}/{man['structures'][n]['file']}", out)
    (out / "manifest.json").write_text(json.dumps(man))
    return out


def test_regenerated_water_matches_the_embedded_grid(tmp_path):
    from cdp.data.molecules import make_molecules
    from cdp.data.qm9 import load_qm9

    ref = _subset(tmp_path, ["qm9_000003"])
    make_molecules([("qm9_000003", load_qm9([3])[3])], str(tmp_path / "new"), spacing=0.3, progress=False)
    res = verify_regeneration(str(tmp_path / "new"), str(ref))
    (row,) = res["structures"]
    assert res["ok"], row
    assert row["energy_diff_hartree"] <= 1e-6 and row["eps_mae_percent"] < 1e-3


def test_a_changed_grid_or_energy_is_reported(tmp_path):
    from cdp.io import read, write

    ref = _subset(tmp_path, ["qm9_000003", "qm9_000010"])
    new = tmp_path / "new"
    shutil.copytree(ref, new)
    man = json.loads((new / "manifest.json").read_text())
    man["structures"]["qm9_000010"]["energy_hartree"] += 1e-5
    (new / "manifest.json").write_text(json.dumps(man))
    f = new / man["structures"]["qm9_000003"]["file"]
    atoms, grid = read(f, pbc=False)
    grid.values = grid.values * 1.001
    write(f, atoms, grid, sidecar=False)
    res = verify_regeneration(str(new), str(ref))
    rows = {r["name"]: r for r in res["structures"]}
    assert not res["ok"]
    assert not rows["qm9_000003"]["ok"] and rows["qm9_000003"]["eps_mae_percent"] == pytest.approx(0.1, rel=1e-3)
    assert not rows["qm9_000010"]["ok"] and rows["qm9_000010"]["energy_diff_hartree"] == pytest.approx(1e-5, rel=1e-3)
    # against the manifest alone: energies and electrons only
    res = verify_regeneration(str(new), str(ref / "manifest.json"))
    assert {r["name"]: r["ok"] for r in res["structures"]} == {"qm9_000003": True, "qm9_000010": False}


def test_nothing_in_common_is_refused(tmp_path):
    ref = _subset(tmp_path, ["qm9_000003"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"structures": {}}))
    with pytest.raises(CdpError, match="nothing to compare"):
        verify_regeneration(str(other), str(ref))
