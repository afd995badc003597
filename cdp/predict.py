"""The Python API users import: ``load_model`` and ``Predictor.predict`` / ``Predictor.predict_grid``.

Atom features are computed once per structure; probes stream through the decoder in batches, so memory
does not grow with the number of probes (full grids included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Callable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from cdp.core.checkpoint import load_checkpoint
from cdp.core.model import DensityModel
from cdp.core.types import AtomFeatures, Batch, CdpError, DensityGrid
from cdp.core.validate import check_overlap, validate_atoms, validate_probes
from cdp.core.device import resolve_device  # noqa: F401  (re-exported: cdp.predict.resolve_device)
from cdp.core.frame import LocalFrame  # noqa: F401  (re-exported)
from cdp.core.grid import MAX_GRID_POINTS, assemble_grid, check_grid_points, grid_frame  # noqa: F401  (re-exported)

DEFAULT_PROBE_BATCH = 2500
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Encoded(NamedTuple):
    """One structure ready for decoding: the Batch (in ``frame``), its atom features and the frame."""

    batch: Batch
    features: AtomFeatures
    frame: LocalFrame


class Predictor:
    """Densities from a DensityModel at arbitrary points or on full grids, in probe batches."""

    def __init__(self, model: DensityModel, device: Optional[str] = "cpu", probe_batch: int = DEFAULT_PROBE_BATCH,
                 name: str = "model", max_memory: Optional[int] = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.probe_batch = int(probe_batch)
        self.name = name
        self.metadata: dict = {}
        self.max_memory = None
        if self.probe_batch < 1:
            raise CdpError("probe batch size must be at least 1")
        if max_memory is not None:
            self.max_memory = check_memory(max_memory)

    def batch_for_memory(self, atoms, max_memory: Optional[int] = None) -> int:
        """Probes per batch that keep one decode call within ``max_memory`` bytes.

        Uses the backbone's ``probe_memory(itemsize, edges_per_probe)`` estimate when it gives one (edges per
        probe from the atom density within the cutoff sphere); otherwise the configured probe batch.  A
        budget below one probe's cost (the fixed part plus one probe) is a CdpError giving that minimum.
        """
        budget = self.max_memory if max_memory is None else check_memory(max_memory)
        if budget is None:
            return self.probe_batch
        n = len(atoms)
        volume = abs(float(np.linalg.det(np.asarray(atoms.cell.array, dtype=np.float64)))) if any(atoms.pbc) else 0.0
        sphere = 4.0 / 3.0 * np.pi * self.cutoff**3
        edges = n / volume * sphere * 1.5 if volume > 1e-9 else float(n)  # 1.5: margin over the mean
        itemsize = torch.finfo(self.model.dtype).bits // 8
        estimate = self.model.backbone.probe_memory(itemsize, max(edges, 1.0))  # Backbone contract
        if estimate is None:
            return self.probe_batch
        fixed, per_probe = estimate
        per_probe = max(int(per_probe), 1)
        if budget < fixed + per_probe:
            raise CdpError(f"max memory {format_bytes(budget)} is below the {format_bytes(fixed + per_probe)} "
                           f"one probe of this model needs for this structure (fixed {format_bytes(fixed)} "
                           f"+ {format_bytes(per_probe)} per probe); give at least {fixed + per_probe} bytes")
        return int((budget - fixed) // per_probe)

    @property
    def spin(self) -> bool:
        return self.model.spin

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    def _batch(self, atoms) -> Batch:
        validate_atoms(atoms)
        check_overlap(atoms)
        return Batch.from_atoms([atoms]).to(self.device, self.model.dtype)

    @torch.no_grad()
    def encode(self, atoms) -> Encoded:
        """Batch, atom features and frame of one structure: the part computed once per structure.

        The batch holds the atoms in ``frame`` (see :class:`LocalFrame`); probes for :meth:`decode` go
        through ``frame.points`` first.
        """
        validate_atoms(atoms)
        frame = LocalFrame.of(atoms)
        batch = self._batch(frame.atoms(atoms))
        return Encoded(batch, self.model.encode(batch), frame)

    @torch.no_grad()
    def decode(self, encoded: Encoded, probes: np.ndarray) -> np.ndarray:
        """ρ at ``probes`` [k, 3] (Å, the user's frame) for an encoded structure: [k] or [k, 2] (spin), e/Å³."""
        pts = encoded.frame.points(probes)
        chunk = torch.from_numpy(pts).to(self.device, self.model.dtype)
        return self.model.decode(encoded.batch, encoded.features, chunk).detach().cpu().double().numpy()

    @torch.no_grad()
    def predict(self, atoms, probes, probe_batch: Optional[int] = None) -> np.ndarray:
        """ρ at ``probes`` [M, 3] (Å) for ``atoms``: [M] in e/Å³, or [M, 2] (total, magnetisation) with spin."""
        pts = validate_probes(probes)
        encoded = self.encode(atoms)
        step = int(probe_batch or self.batch_for_memory(atoms))
        chunks = [self.decode(encoded, pts[start : start + step]) for start in range(0, len(pts), step)]
        width = (0, 2) if self.spin else (0,)
        return np.concatenate(chunks) if chunks else np.zeros(width, dtype=np.float64)

    @torch.no_grad()
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
        grid = grid_frame(atoms, shape, cell, origin)
        step = int(probe_batch or self.batch_for_memory(atoms))
        encoded = self.encode(atoms)
        total = int(np.prod(grid.values.shape))
        for start in range(0, total, step):
            yield start, self.decode(encoded, grid.grid_points(start, start + step, order))

    @torch.no_grad()
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


def molecule_box(atoms, vacuum: float = 3.0):
    """A copy of a molecule centred in an orthorhombic box: axis-aligned extent + ``vacuum`` on each side."""
    boxed = atoms.copy()
    pos = boxed.positions
    lengths = pos.max(axis=0) - pos.min(axis=0) + 2.0 * vacuum
    boxed.set_cell(np.diag(lengths))
    boxed.positions = pos - pos.min(axis=0) + vacuum
    boxed.pbc = False
    return boxed


def grid_shape_for(cell: np.ndarray, spacing: float) -> tuple:
    """Points per axis n_i = ceil(L_i / spacing) (at least 1); ``spacing`` in Å, finite and positive.

    A spacing giving more than ``MAX_GRID_POINTS`` points is refused before anything is allocated.
    """
    try:
        spacing = float(spacing)
    except (TypeError, ValueError):
        raise CdpError(f"grid spacing must be a number of Å, got {spacing!r}") from None
    if not (np.isfinite(spacing) and spacing > 0):
        raise CdpError(f"grid spacing must be a finite positive number of Å, got {spacing}")
    lengths = np.linalg.norm(np.asarray(cell, dtype=float), axis=1)
    if spacing > lengths.max():
        raise CdpError(f"grid spacing {spacing:g} Å is larger than the cell ({lengths.max():.3g} Å at most): "
                       f"it would give one grid point")
    with np.errstate(over="ignore"):
        counts = np.maximum(1.0, np.ceil(lengths / spacing - 1e-9))
        total = float(np.prod(counts))
    if not np.isfinite(total) or total > MAX_GRID_POINTS:
        raise CdpError(f"grid spacing {spacing:g} Å gives {total:.3g} points over the cell "
                       f"(at most {MAX_GRID_POINTS:.0e}); use a larger spacing")
    return tuple(int(c) for c in counts)


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


def load_model(
    model: Union[str, os.PathLike, DensityModel],
    device: Optional[str] = "cpu",
    dtype: Optional[str] = None,
    probe_batch: int = DEFAULT_PROBE_BATCH,
    runtime: str = "torch",
    max_memory: Optional[int] = None,
) -> Predictor:
    """A Predictor from a cdp checkpoint path, a preset name (untrained weights), or a DensityModel.

    ``runtime="onnx"`` loads an exported directory with onnxruntime (``cdp[onnx]`` / ``cdp[gpu]``).
    """
    if runtime not in ("torch", "onnx"):
        raise CdpError(f"unknown runtime '{runtime}' (torch or onnx)")
    if runtime == "onnx":
        try:
            from cdp.export.runtime import load_onnx_predictor
        except ImportError as exc:
            raise CdpError(f"the onnx runtime is not available: {exc}") from None
        return load_onnx_predictor(model, device=device, probe_batch=probe_batch)
    name = "model"
    metadata: dict = {}
    if isinstance(model, DensityModel):
        net = model
    else:
        text = str(model)
        path = Path(text)
        if path.is_file():
            if path.stat().st_size == 0:
                raise CdpError(f"{path}: the checkpoint file is empty (0 bytes)")
            net, info = load_checkpoint(path)
            name, metadata = path.stem, dict(info.get("metadata") or {})
        elif text in _named_models():
            net, info = load_checkpoint(_named_models()[text])
            name, metadata = text, dict(info.get("metadata") or {})
        else:
            from cdp.core.registry import get_registry

            reg = get_registry()
            if text in reg.presets:
                net = DensityModel.from_config(reg.preset(text))
                name = text
            elif path.suffix or os.sep in text:
                raise CdpError(f"{text}: no such model file")
            else:
                raise CdpError(f"unknown model '{text}': not a file, a shipped model or a preset ({', '.join(sorted(reg.presets))})")
    if dtype is not None:
        if dtype not in DTYPES:
            raise CdpError(f"unknown dtype '{dtype}' (float32 or float64)")
        net = net.to(DTYPES[dtype])
    predictor = Predictor(net, device=device, probe_batch=probe_batch, name=name, max_memory=max_memory)
    predictor.metadata = metadata
    return predictor


def model_elements(predictor) -> Optional[set]:
    """Atomic numbers a model was trained on (checkpoint metadata ``elements``), or None when unrecorded."""
    from ase.data import atomic_numbers

    elements = (getattr(predictor, "metadata", None) or {}).get("elements")
    if not elements:
        return None
    out = set()
    for e in elements:
        if isinstance(e, str):
            if e not in atomic_numbers:
                raise CdpError(f"model metadata names an unknown element '{e}'")
            out.add(atomic_numbers[e])
        else:
            out.add(int(e))
    return out


def check_elements(predictor, atoms, name: str = "structure") -> None:
    """Refuse a structure holding an element the model was not trained on, naming the element."""
    from ase.data import chemical_symbols

    known = model_elements(predictor)
    if known is None:
        return
    for z in dict.fromkeys(int(z) for z in atoms.numbers):
        if z not in known:
            have = ", ".join(chemical_symbols[k] for k in sorted(known))
            raise CdpError(f"{name}: element {chemical_symbols[z]} is not among the model's elements ({have})")


def _named_models() -> dict:
    """Checkpoints shipped with the package, by name (e.g. ``demo``)."""
    import importlib.resources

    root = Path(str(importlib.resources.files("cdp").joinpath("assets")))
    return {p.stem: p for p in root.glob("*.ckpt")} if root.is_dir() else {}
