"""Grid geometry and assembly shared by every predictor: an empty frame to fill, and streamed chunks into it."""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from cdp.core.errors import CdpError
from cdp.core.types import DensityGrid


def grid_frame(atoms, shape: Sequence[int], cell=None, origin=None) -> DensityGrid:
    """An empty-valued DensityGrid (broadcast zeros) giving the geometry of a grid to predict; checks it."""
    cell = np.asarray(atoms.cell.array if cell is None else cell, dtype=np.float64)
    origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise CdpError(f"grid shape must be three positive integers, got {shape}")
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
