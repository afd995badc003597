"""Sidecar ``<file>.json`` metadata: neither CHGCAR nor cube stores periodicity, so a sidecar may."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from cdp.core.errors import CdpError
from cdp.core.atomic import atomic_write_bytes
from cdp.io.compression import split_compression


def sidecar_candidates(path) -> list:
    """Sidecar paths for ``path``, most specific first: ``x.cube.gz.json`` then ``x.cube.json``."""
    path = Path(path)
    out = [path.with_name(path.name + ".json")]
    stem, codec = split_compression(path.name)
    if codec is not None:
        out.append(path.with_name(stem + ".json"))
    return out


def parse_pbc(value, name: str) -> np.ndarray:
    """Turn ``true``/``false`` or a list of three booleans into a bool array [3]."""
    if isinstance(value, (bool, np.bool_)):
        return np.full(3, bool(value))
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 3 and all(
        isinstance(v, (bool, np.bool_)) for v in value
    ):
        return np.array([bool(v) for v in value])
    raise CdpError(f"{name}: 'pbc' must be true, false or a list of three booleans, got {value!r}")


def read_sidecar(path) -> dict:
    """Return the first sidecar's JSON object for ``path`` (``{}`` when there is none)."""
    for cand in sidecar_candidates(path):
        if not cand.is_file():
            continue
        try:
            meta = json.loads(cand.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            msg = " ".join(str(exc).split())
            raise CdpError(f"{cand}: unreadable sidecar JSON ({msg})") from None
        if not isinstance(meta, dict):
            raise CdpError(f"{cand}: sidecar must hold a JSON object")
        if "pbc" in meta:
            meta["pbc"] = parse_pbc(meta["pbc"], str(cand))
        return meta
    return {}


def sidecar_pbc(path) -> Optional[np.ndarray]:
    """The ``pbc`` a sidecar gives for ``path``, or None."""
    return read_sidecar(path).get("pbc")


def write_sidecar_pbc(path, pbc: np.ndarray) -> None:
    """Write (or update) ``<file>.json`` with ``pbc``, keeping any other keys already there."""
    target = sidecar_candidates(path)[0]
    meta = {}
    if target.is_file():
        try:
            meta = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
    pbc = [bool(v) for v in np.asarray(pbc, dtype=bool).reshape(3)]
    meta["pbc"] = pbc[0] if len(set(pbc)) == 1 else pbc
    atomic_write_bytes(target, (json.dumps(meta, indent=1) + "\n").encode())
