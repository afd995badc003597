"""The local frame a structure is computed in (float64 shift and periodic wrap before the model's dtype)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


class LocalFrame(NamedTuple):
    """The frame a structure is computed in: moved near the origin in float64 before the model's dtype.

    Points (atoms and probes alike) move by ``-shift`` (the centre of the atoms' bounding box), then by
    whole lattice vectors along periodic axes into [-1/2, 1/2) of the cell.  The density is invariant
    under both, and edge vectors formed from small coordinates keep their float32 precision whatever the
    user's origin (a molecule 10⁵ Å away loses no digits).  Files keep the user's positions.
    """

    shift: np.ndarray  # [3] Å
    cell: np.ndarray  # [3, 3] Å, rows are lattice vectors
    inv: Optional[np.ndarray]  # [3, 3] inverse of ``cell``; None without periodic axes
    pbc: np.ndarray  # [3] bool

    @classmethod
    def of(cls, atoms) -> "LocalFrame":
        pos = np.asarray(atoms.positions, dtype=np.float64)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool).reshape(-1)
        pbc = np.broadcast_to(pbc, (3,)).copy() if pbc.size in (1, 3) else np.zeros(3, dtype=bool)
        shift = 0.5 * (pos.min(axis=0) + pos.max(axis=0)) if len(pos) else np.zeros(3)
        inv = np.linalg.inv(cell) if pbc.any() else None
        return cls(shift, cell, inv, pbc)

    def points(self, points: np.ndarray) -> np.ndarray:
        """[M, 3] Å points (float64) in this frame."""
        out = np.asarray(points, dtype=np.float64) - self.shift
        if self.inv is not None:
            n = np.where(self.pbc, np.floor(out @ self.inv + 0.5), 0.0)
            out = out - n @ self.cell
        return out

    def atoms(self, atoms):
        """A copy of ``atoms`` with its positions in this frame."""
        moved = atoms.copy()
        moved.positions = self.points(atoms.positions)
        return moved
