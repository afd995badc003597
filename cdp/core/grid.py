"""Densities on grids (numpy only, so that cdp.io needs no torch): :class:`DensityGrid`, the empty frame of a
grid to predict, and the assembly of streamed chunks into it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

from cdp.core.errors import CdpError

MAX_GRID_POINTS = 10**10  # 80 GB of float64 values: beyond this a spacing or shape is a mistake


@dataclass
class DensityGrid:
    """A density on a regular grid: ``values[ix, iy, iz]`` in e/Å³ at ``origin + (i/nx, j/ny, k/nz)·cell``.

    ``spin`` (same shape) is the magnetisation density for collinear spin data; ``augmentation`` is the
    verbatim PAW augmentation-occupancy text of a CHGCAR (kept so that a written CHGCAR can restart VASP).
    ``magnetisation`` [3, nx, ny, nz] (μB/Å³) is the vector magnetisation of a non-collinear CHGCAR, with
    the verbatim text after each of its three blocks in ``magnetisation_augmentation``; ``spin`` is None
    then, so that a collinear-spin model is never compared with it.
    """

    cell: np.ndarray
    values: np.ndarray
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    spin: Optional[np.ndarray] = None
    augmentation: Optional[str] = None
    spin_augmentation: Optional[str] = None
    pbc: Optional[np.ndarray] = None
    magnetisation: Optional[np.ndarray] = None
    magnetisation_augmentation: Optional[List[Optional[str]]] = None

    @property
    def shape(self) -> tuple:
        return tuple(self.values.shape)

    @property
    def voxel_volume(self) -> float:
        return abs(float(np.linalg.det(self.cell))) / float(np.prod(self.values.shape))

    @property
    def electrons(self) -> float:
        """Number of electrons on the grid (Σρ·dV)."""
        return float(self.values.sum(dtype=np.float64) * self.voxel_volume)

    def grid_points(self, start: int = 0, stop: Optional[int] = None, order: str = "C") -> np.ndarray:
        """Cartesian positions [K, 3] of flat grid indices ``start:stop`` (order "C": z fastest, as
        ``values``; "F": x fastest, the order CHGCAR files store)."""
        nx, ny, nz = self.values.shape
        total = nx * ny * nz
        stop = total if stop is None else min(stop, total)
        flat = np.arange(start, stop, dtype=np.int64)
        if order == "C":
            ix, rem = np.divmod(flat, ny * nz)
            iy, iz = np.divmod(rem, nz)
        elif order == "F":
            iz, rem = np.divmod(flat, nx * ny)
            iy, ix = np.divmod(rem, nx)
        else:
            raise ValueError(f"grid order must be 'C' or 'F', got {order!r}")
        frac = np.stack([ix / nx, iy / ny, iz / nz], axis=1)
        return np.asarray(self.origin, dtype=np.float64) + frac @ np.asarray(self.cell, dtype=np.float64)


def grid_frame(atoms, shape: Sequence[int], cell=None, origin=None) -> DensityGrid:
    """An empty-valued DensityGrid (broadcast zeros) giving the geometry of a grid to predict; checks it."""
    cell = np.asarray(atoms.cell.array if cell is None else cell, dtype=np.float64)
    origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise CdpError(f"grid shape must be three positive integers, got {shape}")
    check_grid_points(shape)
    if not (np.all(np.isfinite(cell)) and np.all(np.isfinite(origin))):
        raise CdpError("the grid cell and origin must be finite")
    if abs(np.linalg.det(cell)) < 1e-12:
        raise CdpError("the grid cell is singular (a molecule needs a box: see cdp.predict.molecule_box)")
    return DensityGrid(cell=cell, values=np.broadcast_to(np.zeros(1), shape), origin=origin, pbc=np.asarray(atoms.pbc))


def assemble_grid(frame: DensityGrid, chunks: Iterable[tuple], spin: bool,
                  progress: Optional[Callable[[int], None]] = None) -> DensityGrid:
    """Fill ``frame``'s grid from streamed ``(start, values)`` chunks ([k] or [k, 2] with spin)."""
    shape = frame.values.shape
    total = int(np.prod(shape))
    flat = np.zeros(total, dtype=np.float64)
    mag = np.zeros(total, dtype=np.float64) if spin else None
    for start, out in chunks:
        k = len(out)
        if spin:
            flat[start : start + k], mag[start : start + k] = out[:, 0], out[:, 1]
        else:
            flat[start : start + k] = out
        if progress is not None:
            progress(k)
    grid = DensityGrid(cell=frame.cell, values=flat.reshape(shape), origin=frame.origin, pbc=frame.pbc)
    if mag is not None:
        grid.spin = mag.reshape(shape)
    return grid


def check_grid_points(shape: Sequence[int]) -> None:
    """Refuse a grid of more than ``MAX_GRID_POINTS`` points (before anything is allocated)."""
    with np.errstate(over="ignore"):
        total = float(np.prod([float(n) for n in shape]))
    if not total <= MAX_GRID_POINTS:
        raise CdpError(f"grid {'x'.join(str(int(n)) for n in shape)} has {total:.3g} points "
                       f"(at most {MAX_GRID_POINTS:.0e}); use a coarser grid")
