"""The predictor base: densities at points or on full grids, written once over ``encode`` / ``decode``.

A subclass supplies the two stages of its model and nothing else:

* ``encode(atoms)`` — the part computed once per structure (atom features, in a local frame);
* ``decode(encoded, probes)`` — ρ at ``probes`` [k, 3] (Å, the user's frame) → [k] or [k, 2] (spin), e/Å³;
* ``probe_memory(itemsize, edges_per_probe)`` — optional (fixed bytes, bytes per probe) of one decode call.

The base streams probes through ``decode`` in batches (``predict``, ``iter_grid``, ``predict_grid``),
sizes those batches for a memory budget, and checks structures and probes.  Both the PyTorch predictor
(:class:`cdp.predict.Predictor`) and the exported-model runtime (:class:`cdp.export.runtime.ExportedPredictor`)
are subclasses.  An atomic prior needs nothing here: each model's decoder returns the total density.
Numpy only (no torch), so that the exported runtime does not depend on the PyTorch side.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from cdp.core.constants import DEFAULT_PROBE_BATCH
from cdp.core.errors import CdpError
from cdp.core.grid import DensityGrid, assemble_grid, grid_frame
from cdp.core.validate import validate_probes

EDGE_MARGIN = 1.5  # edges per probe estimated as 1.5 × the mean atom count in the cutoff sphere


def check_memory(value) -> int:
    """A memory budget in bytes: a finite number of at least one byte, else a CdpError."""
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise CdpError(f"max memory must be a number of bytes, got {value!r}") from None
    if not np.isfinite(v) or v < 1:
        raise CdpError(f"max memory must be a finite positive number of bytes, got {value}")
    if v > 2.0**62:
        raise CdpError(f"max memory {value} bytes is beyond any machine (at most 2^62)")
    return int(v)


def format_bytes(n: float) -> str:
    """'1.5 GiB'-style text for a byte count."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"


def edges_per_probe(atoms, cutoff: float) -> float:
    """Atom→probe edges expected per probe: atoms in the cutoff sphere at the cell's mean density (× 1.5),
    or the atom count when there is no periodic cell; at least 1."""
    n = len(atoms)
    volume = abs(float(np.linalg.det(np.asarray(atoms.cell.array, dtype=np.float64)))) if any(atoms.pbc) else 0.0
    sphere = 4.0 / 3.0 * np.pi * float(cutoff) ** 3
    edges = n / volume * sphere * EDGE_MARGIN if volume > 1e-9 else float(n)
    return max(edges, 1.0)


class DensityPredictor:
    """Densities of one model at arbitrary points or on full grids, probes streamed in batches.

    ``probe_batch``: probes per decode call (≥ 1); ``max_memory``: a byte budget for one decode call
    that sizes the batches instead (see :meth:`batch_for_memory`); ``concurrency``: decode calls in flight
    at once (the budget is shared between them).
    """

    name: str = "model"
    concurrency: int = 1

    def __init__(self, probe_batch: int = DEFAULT_PROBE_BATCH, max_memory: Optional[int] = None, name: str = "model"):
        self.probe_batch = int(probe_batch)
        if self.probe_batch < 1:
            raise CdpError("probe batch size must be at least 1")
        self.max_memory = None if max_memory is None else check_memory(max_memory)
        self.name = name
        self.metadata: dict = {}

    # -- what a subclass provides ----------------------------------------------------------------------
    @property
    def spin(self) -> bool:
        raise NotImplementedError

    @property
    def cutoff(self) -> float:
        raise NotImplementedError

    @property
    def itemsize(self) -> int:
        """Bytes per floating-point value of the model (4 for float32)."""
        raise NotImplementedError

    def encode(self, atoms) -> Any:
        raise NotImplementedError

    def decode(self, encoded, probes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def probe_memory(self, itemsize: int, edges_per_probe: float) -> Optional[Tuple[int, int]]:
        """(fixed bytes, bytes per probe) of one decode call, or None when the model has no estimate."""
        return None

    def decode_batches(self, encoded, batches: Sequence[Callable[[], np.ndarray]]) -> Iterator[np.ndarray]:
        """``decode`` of each batch of probes (made by calling the entry), yielded in order."""
        for make in batches:
            yield self.decode(encoded, make())

    # -- batching ----------------------------------------------------------------------------------------
    def batch_for_memory(self, atoms, max_memory: Optional[int] = None) -> int:
        """Probes per batch that keep one decode call within ``max_memory`` bytes (default: the predictor's).

        Uses the model's ``probe_memory(itemsize, edges_per_probe)`` estimate when it has one (edges per
        probe from the atom density within the cutoff sphere), the budget shared by the decode calls in
        flight; otherwise, or without a budget, the configured probe batch.  A budget below one probe's
        cost (the fixed part plus one probe) is a CdpError giving that minimum.
        """
        budget = self.max_memory if max_memory is None else check_memory(max_memory)
        if budget is None:
            return self.probe_batch
        estimate = self.probe_memory(self.itemsize, edges_per_probe(atoms, self.cutoff))
        if estimate is None:
            return self.probe_batch
        budget = budget // max(1, int(self.concurrency))
        fixed, per_probe = int(estimate[0]), max(int(estimate[1]), 1)
        if budget < fixed + per_probe:
            raise CdpError(f"max memory {format_bytes(budget)} is below the {format_bytes(fixed + per_probe)} "
                           f"one probe of this model needs for this structure (fixed {format_bytes(fixed)} "
                           f"+ {format_bytes(per_probe)} per probe); give at least {fixed + per_probe} bytes")
        return int((budget - fixed) // per_probe)

    def _step(self, atoms, probe_batch: Optional[int]) -> int:
        return int(probe_batch or self.batch_for_memory(atoms))

    # -- predictions -------------------------------------------------------------------------------------
    def predict(self, atoms, probes, probe_batch: Optional[int] = None) -> np.ndarray:
        """ρ at ``probes`` [M, 3] (Å) for ``atoms``: [M] in e/Å³, or [M, 2] (total, magnetisation) with spin.

        Invalid probes (shape, non-finite) or structures are a CdpError before any model call.
        """
        pts = validate_probes(probes)
        encoded = self.encode(atoms)
        step = self._step(atoms, probe_batch)
        batches = [lambda s=s: pts[s : s + step] for s in range(0, len(pts), step)]
        out: List[np.ndarray] = list(self.decode_batches(encoded, batches))
        return np.concatenate(out) if out else np.zeros((0, 2) if self.spin else (0,), dtype=np.float64)

    def iter_grid(
        self,
        atoms,
        shape: Sequence[int],
        cell: Optional[np.ndarray] = None,
        origin: Optional[np.ndarray] = None,
        probe_batch: Optional[int] = None,
        order: str = "C",
    ) -> Iterator[tuple]:
        """Stream a full grid: yields ``(start, values)`` per probe batch over the flat grid index in
        ``order`` ("C": z fastest; "F": x fastest, CHGCAR's order).

        ``values`` is [k] (or [k, 2] with spin). Atom features are computed once, before the first batch;
        memory stays independent of the grid size, so a caller may reduce or write each slice as it comes.
        """
        frame = grid_frame(atoms, shape, cell, origin)
        step = self._step(atoms, probe_batch)
        encoded = self.encode(atoms)
        starts = list(range(0, int(np.prod(frame.values.shape)), step))
        batches = [lambda s=s: frame.grid_points(s, s + step, order) for s in starts]
        yield from zip(starts, self.decode_batches(encoded, batches))

    def predict_grid(
        self,
        atoms,
        shape: Sequence[int],
        cell: Optional[np.ndarray] = None,
        origin: Optional[np.ndarray] = None,
        probe_batch: Optional[int] = None,
        progress: Optional[Callable[[int], None]] = None,
    ) -> DensityGrid:
        """The density on a full grid ``shape`` over ``cell`` (default: the structure's cell), streamed."""
        frame = grid_frame(atoms, shape, cell, origin)
        chunks = self.iter_grid(atoms, frame.values.shape, frame.cell, frame.origin, probe_batch)
        return assemble_grid(frame, chunks, self.spin, progress)
