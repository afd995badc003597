"""Checks on user-supplied structures, raising :class:`CdpError` with a one-line message."""

from __future__ import annotations

import numpy as np

from cdp.core.errors import CdpError

MAX_Z = 118


def validate_atoms(atoms, name: str = "structure") -> None:
    """Refuse structures the models cannot handle: no atoms, unknown elements, non-finite or singular data."""
    n = len(atoms)
    if n == 0:
        raise CdpError(f"{name}: the structure has no atoms")
    numbers = np.asarray(atoms.numbers)
    bad = numbers[(numbers < 1) | (numbers > MAX_Z)]
    if bad.size:
        raise CdpError(f"{name}: unknown element with atomic number {int(bad[0])}")
    pos = np.asarray(atoms.positions, dtype=float)
    if pos.shape != (n, 3):
        raise CdpError(f"{name}: positions have shape {pos.shape}, expected ({n}, 3)")
    if not np.all(np.isfinite(pos)):
        raise CdpError(f"{name}: non-finite atomic coordinates")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not np.all(np.isfinite(cell)):
        raise CdpError(f"{name}: non-finite cell")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        periodic = cell[pbc]
        if np.linalg.matrix_rank(periodic, tol=1e-8) < periodic.shape[0] or abs(np.linalg.det(cell)) < 1e-8:
            raise CdpError(f"{name}: singular cell for a periodic structure")


def validate_probes(probes: np.ndarray, name: str = "probes") -> np.ndarray:
    """Return probes as float64 [M, 3] or refuse them."""
    arr = np.asarray(probes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise CdpError(f"{name}: expected an array of shape [M, 3], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise CdpError(f"{name}: non-finite probe coordinates")
    return arr
