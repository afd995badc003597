"""The Python API users import: ``load_model`` and ``Predictor.predict`` / ``Predictor.predict_grid``.

Atom features are computed once per structure; probes stream through the decoder in batches, so memory
does not grow with the number of probes (full grids included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from cdp.core.checkpoint import load_checkpoint
from cdp.core.model import DensityModel
from cdp.core.types import AtomFeatures, Batch, CdpError, DensityGrid
from cdp.core.validate import validate_atoms, validate_probes

DEFAULT_PROBE_BATCH = 2500
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device: Optional[str]) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or None (cuda when available, else cpu); a missing GPU is a clear error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CdpError(f"device '{device}' requested but no CUDA device is available")
    return dev


class Predictor:
    """Densities from a DensityModel at arbitrary points or on full grids, in probe batches."""

    def __init__(self, model: DensityModel, device: Optional[str] = "cpu", probe_batch: int = DEFAULT_PROBE_BATCH,
                 name: str = "model"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.probe_batch = int(probe_batch)
        self.name = name
        if self.probe_batch < 1:
            raise CdpError("probe batch size must be at least 1")

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
        chunks = [c for c in self._stream(batch, feats, pts, probe_batch)]
        width = (0, 2) if self.spin else (0,)
        return np.concatenate(chunks) if chunks else np.zeros(width, dtype=np.float64)

    def _stream(self, batch: Batch, feats: AtomFeatures, pts: np.ndarray, probe_batch: Optional[int]) -> Iterator[np.ndarray]:
        step = int(probe_batch or self.probe_batch)
        for start in range(0, len(pts), step):
            chunk = torch.from_numpy(pts[start : start + step]).to(self.device, self.model.dtype)
            out = self.model.decode(batch, feats, chunk)
            yield out.detach().cpu().double().numpy()

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
        batch, feats = self.encode(atoms)
        cell = np.asarray(atoms.cell.array if cell is None else cell, dtype=np.float64)
        origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise CdpError(f"grid shape must be three positive integers, got {shape}")
        if abs(np.linalg.det(cell)) < 1e-12:
            raise CdpError("the grid cell is singular (a molecule needs a box: see cdp.predict.molecule_box)")
        grid = DensityGrid(cell=cell, values=np.zeros(shape), origin=origin, pbc=np.asarray(atoms.pbc))
        total = int(np.prod(shape))
        flat = np.zeros(total, dtype=np.float64)
        spin = np.zeros(total, dtype=np.float64) if self.spin else None
        step = int(probe_batch or self.probe_batch)
        for start in range(0, total, step):
            pts = grid.grid_points(start, start + step)
            chunk = torch.from_numpy(pts).to(self.device, self.model.dtype)
            out = self.model.decode(batch, feats, chunk).detach().cpu().double().numpy()
            if self.spin:
                flat[start : start + len(pts)] = out[:, 0]
                spin[start : start + len(pts)] = out[:, 1]
            else:
                flat[start : start + len(pts)] = out
            if progress is not None:
                progress(len(pts))
        grid.values = flat.reshape(shape)
        if spin is not None:
            grid.spin = spin.reshape(shape)
        return grid


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
    if isinstance(model, DensityModel):
        net = model
    else:
        text = str(model)
        path = Path(text)
        if path.is_file():
            net, _ = load_checkpoint(path)
            name = path.stem
        elif text in _named_models():
            net, _ = load_checkpoint(_named_models()[text])
            name = text
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
    return Predictor(net, device=device, probe_batch=probe_batch, name=name)


def _named_models() -> dict:
    """Checkpoints shipped with the package, by name (e.g. ``demo``)."""
    import importlib.resources

    root = Path(str(importlib.resources.files("cdp").joinpath("assets")))
    return {p.stem: p for p in root.glob("*.ckpt")} if root.is_dir() else {}
