"""The Python API users import: ``load_model`` and ``Predictor.predict`` / ``Predictor.predict_grid``.

Atom features are computed once per structure; probes stream through the decoder in batches, so memory
does not grow with the number of probes (full grids included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from cdp.core.checkpoint import load_checkpoint
from cdp.core.model import DensityModel
from cdp.core.types import AtomFeatures, Batch, CdpError, DensityGrid
from cdp.core.validate import validate_atoms, validate_probes
from cdp.core.device import resolve_device  # noqa: F401  (re-exported: cdp.predict.resolve_device)
from cdp.core.grid import assemble_grid, grid_frame  # noqa: F401  (re-exported)

DEFAULT_PROBE_BATCH = 2500
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Predictor:
    """Densities from a DensityModel at arbitrary points or on full grids, in probe batches."""

    def __init__(self, model: DensityModel, device: Optional[str] = "cpu", probe_batch: int = DEFAULT_PROBE_BATCH,
                 name: str = "model", max_memory: Optional[int] = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.probe_batch = int(probe_batch)
        self.name = name
        self.metadata: dict = {}
        self.max_memory = None if max_memory is None else int(max_memory)
        if self.probe_batch < 1:
            raise CdpError("probe batch size must be at least 1")
        if self.max_memory is not None and self.max_memory <= 0:
            raise CdpError(f"max_memory must be a positive number of bytes, got {max_memory}")

    def batch_for_memory(self, atoms, max_memory: Optional[int] = None) -> int:
        """Probes per batch that keep one decode call within ``max_memory`` bytes (at least 1).

        Uses the backbone's ``probe_memory(itemsize, edges_per_probe)`` estimate when it has one (edges per
        probe from the atom density within the cutoff sphere); otherwise the configured probe batch.
        """
        budget = self.max_memory if max_memory is None else int(max_memory)
        estimate = getattr(self.model.backbone, "probe_memory", None)
        if budget is None or estimate is None:
            return self.probe_batch
        n = len(atoms)
        volume = abs(float(np.linalg.det(np.asarray(atoms.cell.array, dtype=np.float64)))) if any(atoms.pbc) else 0.0
        sphere = 4.0 / 3.0 * np.pi * self.cutoff**3
        edges = n / volume * sphere * 1.5 if volume > 1e-9 else float(n)  # 1.5: margin over the mean
        itemsize = torch.finfo(self.model.dtype).bits // 8
        fixed, per_probe = estimate(itemsize, max(edges, 1.0))
        return int(max(1, (budget - fixed) // max(per_probe, 1)))

    @property
    def spin(self) -> bool:
        return self.model.spin

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    def _batch(self, atoms) -> Batch:
        validate_atoms(atoms)
        return Batch.from_atoms([atoms]).to(self.device, self.model.dtype)

    @torch.no_grad()
    def encode(self, atoms) -> tuple:
        """(Batch, AtomFeatures) for one structure: the part computed once per structure."""
        batch = self._batch(atoms)
        return batch, self.model.encode(batch)

    @torch.no_grad()
    def predict(self, atoms, probes, probe_batch: Optional[int] = None) -> np.ndarray:
        """ρ at ``probes`` [M, 3] (Å) for ``atoms``: [M] in e/Å³, or [M, 2] (total, magnetisation) with spin."""
        pts = validate_probes(probes)
        batch, feats = self.encode(atoms)
        chunks = [c for c in self._stream(batch, feats, pts, probe_batch, atoms)]
        width = (0, 2) if self.spin else (0,)
        return np.concatenate(chunks) if chunks else np.zeros(width, dtype=np.float64)

    def _stream(self, batch: Batch, feats: AtomFeatures, pts: np.ndarray, probe_batch: Optional[int],
                atoms=None) -> Iterator[np.ndarray]:
        step = int(probe_batch or (self.batch_for_memory(atoms) if atoms is not None else self.probe_batch))
        for start in range(0, len(pts), step):
            chunk = torch.from_numpy(pts[start : start + step]).to(self.device, self.model.dtype)
            out = self.model.decode(batch, feats, chunk)
            yield out.detach().cpu().double().numpy()

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
        batch, feats = self.encode(atoms)
        total = int(np.prod(grid.values.shape))
        step = int(probe_batch or self.batch_for_memory(atoms))
        for start in range(0, total, step):
            pts = grid.grid_points(start, start + step, order)
            chunk = torch.from_numpy(pts).to(self.device, self.model.dtype)
            yield start, self.model.decode(batch, feats, chunk).detach().cpu().double().numpy()

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
    """Points per axis n_i = ceil(L_i / spacing) (at least 1)."""
    if spacing <= 0:
        raise CdpError(f"grid spacing must be positive, got {spacing}")
    lengths = np.linalg.norm(np.asarray(cell, dtype=float), axis=1)
    return tuple(int(max(1, np.ceil(l / spacing - 1e-9))) for l in lengths)


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
    """Checkpoints shipped with the package, by name (``demo``, ``qm9``)."""
    from cdp.shipped import shipped_checkpoints

    return shipped_checkpoints()
