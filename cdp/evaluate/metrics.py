"""Density metrics: ε_mae (paper Eq. 5), its summary over structures, and the angular variance ζ (Eq. 6).

Conventions for degenerate inputs (documented, tested):

* ε_mae with Σ|ρ| = 0 (an all-zero reference): 0.0 when the prediction is also all zero, else ``inf``
  (written as ``null`` in JSON).
* ζ of a density without gradient anywhere (e.g. a constant): 0.0 — nothing deviates from radial.
* Grid points that coincide with an atom (distance < 1e-10 Å) have no direction r̂ and are left out of
  both sums of ζ.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree

from cdp.core.types import CdpError, DensityGrid

_ON_ATOM = 1e-10


class EpsMae:
    """Streaming ε_mae = 100·Σ|ρ−ρ̂|/Σ|ρ|: feed slices of the grid with :meth:`update`, read :attr:`value`."""

    def __init__(self) -> None:
        self.numerator = 0.0
        self.denominator = 0.0
        self.count = 0

    def update(self, reference: np.ndarray, predicted: np.ndarray) -> None:
        ref = np.asarray(reference, dtype=np.float64).reshape(-1)
        pred = np.asarray(predicted, dtype=np.float64).reshape(-1)
        if ref.shape != pred.shape:
            raise CdpError(f"ε_mae: reference has {ref.size} values but the prediction {pred.size}")
        self.numerator += float(np.abs(ref - pred).sum())
        self.denominator += float(np.abs(ref).sum())
        self.count += ref.size

    @property
    def value(self) -> float:
        """The percentage; 0/0 → 0.0 and x/0 → inf (see module docstring)."""
        if self.denominator > 0.0:
            return 100.0 * self.numerator / self.denominator
        return 0.0 if self.numerator == 0.0 else math.inf


def eps_mae(reference: np.ndarray, predicted: np.ndarray) -> float:
    """ε_mae in percent over the whole grid (one-shot form of :class:`EpsMae`)."""
    acc = EpsMae()
    acc.update(reference, predicted)
    return acc.value


def summarize(values: Iterable[float]) -> dict:
    """``{"mean", "stderr", "median", "max"}``; stderr = std(ddof=1)/√n, None when n = 1; all None when n = 0."""
    arr = np.asarray(list(values), dtype=np.float64)
    n = arr.size
    if n == 0:
        return {"mean": None, "stderr": None, "median": None, "max": None}
    return {
        "mean": float(arr.mean()),
        "stderr": float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "median": float(np.median(arr)),
        "max": float(arr.max()),
    }


# -- ζ -----------------------------------------------------------------------------------------------


def _axis_pbc(grid: DensityGrid, atoms, pbc) -> np.ndarray:
    if pbc is None:
        pbc = grid.pbc if grid.pbc is not None else (atoms.pbc if atoms is not None else True)
    arr = np.asarray(pbc, dtype=bool).reshape(-1)
    return np.broadcast_to(arr, (3,)).copy() if arr.size in (1, 3) else np.ones(3, dtype=bool)


def grid_gradient(values: np.ndarray, cell: np.ndarray, pbc: Sequence[bool]) -> np.ndarray:
    """Cartesian ∇ρ [nx, ny, nz, 3] by finite differences on the grid.

    Central differences inside; periodic wrap along periodic axes; one-sided (first order) at the ends
    of non-periodic axes. Derivatives along the fractional coordinates u_a (grid step 1/n_a) are turned
    into Cartesian ones with the inverse cell: ∂ρ/∂u = C ∇ρ (C rows = lattice vectors) → ∇ρ = C⁻¹ ∂ρ/∂u,
    which is the inverse-metric form Cᵀ G⁻¹ ∂ρ/∂u (G = C Cᵀ) and holds for triclinic cells.
    """
    values = np.asarray(values, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    du = np.empty(values.shape + (3,), dtype=np.float64)
    for a in range(3):
        n = values.shape[a]
        if n == 1:
            du[..., a] = 0.0
        elif pbc[a]:
            du[..., a] = (np.roll(values, -1, axis=a) - np.roll(values, 1, axis=a)) * (n / 2.0)
        else:
            du[..., a] = np.gradient(values, 1.0 / n, axis=a, edge_order=1)
    return du @ np.linalg.inv(cell).T


def _nearest_atom_vectors(points: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Vector from each point to its nearest atom [K, 3], minimum image along periodic axes (exact)."""
    inv = np.linalg.inv(cell)
    pf = points @ inv
    af = positions @ inv
    pf[:, pbc] -= np.floor(pf[:, pbc])
    af[:, pbc] -= np.floor(af[:, pbc])
    p_cart = pf @ cell
    volume = abs(np.linalg.det(cell))
    heights = np.array([volume / np.linalg.norm(np.cross(cell[(a + 1) % 3], cell[(a + 2) % 3])) for a in range(3)])
    reach = np.where(pbc, 1, 0)
    while True:
        ranges = [np.arange(-r, r + 1) for r in reach]
        shifts = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
        images = (af[None, :, :] + shifts[:, None, :]).reshape(-1, 3) @ cell
        dist, idx = cKDTree(images).query(p_cart)
        # any image |n_a| > 1 + R/h_a is farther than R from every point of the cell: stop when covered
        needed = np.where(pbc, 1 + np.floor(dist.max() / heights + 1e-9).astype(int), 0)
        if np.all(needed <= reach):
            return images[idx] - p_cart
        reach = np.maximum(reach, needed)


def zeta(grid: DensityGrid, atoms, pbc=None, block: int = 262144) -> float:
    """Angular variance of the reference density, ζ = 1 − Σ_k |∇ρ(g_k)·r̂_k| / Σ_k ‖∇ρ(g_k)‖ (paper Eq. 6).

    r̂_k is the unit vector from grid point g_k to its nearest atom (minimum image where periodic). ``pbc``
    overrides the grid's (else the atoms') periodicity. 0 for a purely radial density around each
    nearest atom; see the module docstring for the degenerate cases.
    """
    periodic = _axis_pbc(grid, atoms, pbc)
    cell = np.asarray(grid.cell, dtype=np.float64)
    grad = grid_gradient(grid.values, cell, periodic).reshape(-1, 3)
    positions = np.asarray(atoms.positions, dtype=np.float64)
    if len(positions) == 0:
        raise CdpError("ζ: the structure has no atoms")
    radial = 0.0
    total = 0.0
    n = grad.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        g = grad[start:stop]
        vec = _nearest_atom_vectors(grid.grid_points(start, stop), positions, cell, periodic)
        dist = np.linalg.norm(vec, axis=1)
        keep = dist > _ON_ATOM
        rhat = vec[keep] / dist[keep, None]
        g = g[keep]
        radial += float(np.abs(np.einsum("ij,ij->i", g, rhat)).sum())
        total += float(np.linalg.norm(g, axis=1).sum())
    if total == 0.0:
        return 0.0
    return 1.0 - radial / total
