"""The Python API users import: ``load_model`` and ``Predictor.predict`` / ``Predictor.predict_grid``.

Atom features are computed once per structure; probes stream through the decoder in batches, so memory
does not grow with the number of probes (full grids included).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import NamedTuple, Optional, Set, Union

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from cdp.core.checkpoint import load_checkpoint
from cdp.core.constants import DEFAULT_PROBE_BATCH  # noqa: F401  (re-exported: cdp.predict.DEFAULT_PROBE_BATCH)
from cdp.core.device import resolve_device  # noqa: F401  (re-exported: cdp.predict.resolve_device)
from cdp.core.frame import LocalFrame  # noqa: F401  (re-exported)
from cdp.core.grid import MAX_GRID_POINTS, assemble_grid, check_grid_points, grid_frame  # noqa: F401  (re-exported)
from cdp.core.model import DensityModel
from cdp.core.predictor import DensityPredictor, check_memory, format_bytes  # noqa: F401  (re-exported)
from cdp.core.registry import get_registry
from cdp.core.types import AtomFeatures, Batch, CdpError, DensityGrid  # noqa: F401  (DensityGrid re-exported)
from cdp.core.validate import check_overlap, validate_atoms
from cdp.export.runtime import load_onnx_predictor

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Encoded(NamedTuple):
    """One structure ready for decoding: the Batch (in ``frame``), its atom features and the frame."""

    batch: Batch
    features: AtomFeatures
    frame: LocalFrame


class Predictor(DensityPredictor):
    """Densities from a DensityModel at arbitrary points or on full grids, in probe batches.

    ``predict`` / ``iter_grid`` / ``predict_grid`` / ``batch_for_memory`` come from
    :class:`cdp.core.predictor.DensityPredictor`; this class runs the model's encode and decode in PyTorch.
    """

    def __init__(self, model: DensityModel, device: Optional[str] = "cpu", probe_batch: int = DEFAULT_PROBE_BATCH,
                 name: str = "model", max_memory: Optional[int] = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        super().__init__(probe_batch=probe_batch, max_memory=max_memory, name=name)

    @property
    def spin(self) -> bool:
        return self.model.spin

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    @property
    def itemsize(self) -> int:
        return torch.finfo(self.model.dtype).bits // 8

    def probe_memory(self, itemsize: int, edges_per_probe: float):
        """The backbone's ``probe_memory`` estimate (fixed bytes, bytes per probe), or None without one."""
        return self.model.backbone.probe_memory(itemsize, edges_per_probe)  # Backbone contract (default None)

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


def load_model(
    model: Union[str, os.PathLike, DensityModel],
    device: Optional[str] = "cpu",
    dtype: Optional[str] = None,
    probe_batch: int = DEFAULT_PROBE_BATCH,
    runtime: str = "torch",
    max_memory: Optional[int] = None,
) -> DensityPredictor:
    """A Predictor from a cdp checkpoint path, a preset name (untrained weights), or a DensityModel.

    ``runtime="onnx"`` loads an exported directory with onnxruntime (``cdp[onnx]`` / ``cdp[gpu]``) as an
    :class:`cdp.export.runtime.ExportedPredictor` (same interface).  ``max_memory`` (bytes) sizes the
    probe batches of one decode call instead of ``probe_batch`` (see ``batch_for_memory``).
    """
    if runtime not in ("torch", "onnx"):
        raise CdpError(f"unknown runtime '{runtime}' (torch or onnx)")
    if runtime == "onnx":
        return load_onnx_predictor(model, device=device, probe_batch=probe_batch, max_memory=max_memory)
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
    known = model_elements(predictor)
    if known is None:
        return
    for z in dict.fromkeys(int(z) for z in atoms.numbers):
        if z not in known:
            have = ", ".join(chemical_symbols[k] for k in sorted(known))
            raise CdpError(f"{name}: element {chemical_symbols[z]} is not among the model's elements ({have})")


def _named_models() -> dict:
    """Checkpoints shipped with the package, by name (e.g. ``demo``)."""
    root = Path(str(importlib.resources.files("cdp").joinpath("assets")))
    return {p.stem: p for p in root.glob("*.ckpt")} if root.is_dir() else {}
