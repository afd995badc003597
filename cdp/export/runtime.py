"""Run an export directory: onnxruntime (or torch.jit / AOTInductor) behind cdp's Predictor interface.

Graphs are built by cdp's periodic graph builder, edge vectors in float64 then cast to the artifact's
dtype.  onnxruntime's CPU ScatterND(add) gives wrong sums with more than one intra-op thread (upstream
issues 18048, 23396), so every CPU session runs with ``intra_op_num_threads=1``; speed comes from running
independent probe batches concurrently (``workers``), each ``Run`` on the caller's thread.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from cdp.core.types import CdpError, DensityGrid
from cdp.core.validate import check_overlap, validate_atoms, validate_probes
from cdp.export import metadata as md

NP_DTYPES = {"float32": np.float32, "float64": np.float64}
DEFAULT_PROBE_BATCH = 2500


def default_workers() -> int:
    """Concurrent probe batches: ``CDP_ORT_WORKERS`` or min(4, CPU count)."""
    env = os.environ.get("CDP_ORT_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


class OnnxBackend:
    """encoder.onnx / decoder.onnx in onnxruntime sessions (one intra-op thread on CPU)."""

    def __init__(self, model_dir: Path, meta: dict, device: Optional[str] = "cpu"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CdpError("onnxruntime is not installed (pip install 'cdp[onnx]', or 'cdp[gpu]' for CUDA)") from None
        self.ort = ort
        self.providers = self._providers(device)
        self.sessions = {}
        for role in ("encoder", "decoder"):
            path = model_dir / meta[role]["file"]
            try:
                sess = ort.InferenceSession(str(path), self.session_options(), providers=self.providers)
            except Exception as exc:
                raise CdpError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None
            md.check_embedded(meta, role, dict(sess.get_modelmeta().custom_metadata_map), str(path))
            self.sessions[role] = sess
        self.layer_names = [o.name for o in self.sessions["encoder"].get_outputs()]
        self.parallel_safe = True

    def session_options(self):
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = 1  # ScatterND(add) races with more threads on CPU
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        return so

    def _providers(self, device: Optional[str]) -> List[str]:
        available = self.ort.get_available_providers()
        want_cuda = device not in (None, "cpu") and str(device).startswith(("cuda", "auto"))
        if device not in (None, "cpu", "auto") and not str(device).startswith("cuda"):
            raise CdpError(f"unknown device '{device}' for the onnx runtime (cpu, cuda, auto)")
        if want_cuda or device is None:
            if "CUDAExecutionProvider" in available:
                return ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if device not in (None, "auto"):
                raise CdpError(f"device '{device}' requested but onnxruntime has no CUDA provider (install 'cdp[gpu]')")
        return ["CPUExecutionProvider"]

    def encode(self, numbers, edge_index, edge_vec) -> List[np.ndarray]:
        return self.sessions["encoder"].run(None, {"numbers": numbers, "edge_index": edge_index, "edge_vec": edge_vec})

    def decode(self, layers, edge_index, edge_vec, slots) -> np.ndarray:
        feed = dict(zip(self.layer_names, layers))
        feed.update(probe_edge_index=edge_index, probe_edge_vec=edge_vec, probe_slots=slots)
        return self.sessions["decoder"].run(None, feed)[0]


class TorchBackend:
    """encoder/decoder as TorchScript (``torch.jit.load``) or AOTInductor packages (``aoti_load_package``)."""

    def __init__(self, model_dir: Path, meta: dict, device: Optional[str] = "cpu"):
        import torch

        from cdp.core.device import resolve_device

        self.torch = torch
        self.device = resolve_device(device)
        self.modules = {}
        for role in ("encoder", "decoder"):
            path = model_dir / meta[role]["file"]
            if meta["artifact"] == "torchscript":
                extra = {"cdp_export.json": ""}
                try:
                    mod = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
                except Exception as exc:
                    raise CdpError(f"{path}: torch.jit cannot load it ({str(exc).splitlines()[0][:200]})") from None
                found = json.loads(extra["cdp_export.json"] or "{}")
            else:
                side = model_dir / f"{role}.pt2.json"
                found = json.loads(side.read_text()) if side.is_file() else {}
                md.check_embedded(meta, role, found, str(path))
                try:
                    mod = torch._inductor.aoti_load_package(str(path))
                except Exception as exc:
                    raise CdpError(f"{path}: AOTInductor cannot load it ({str(exc).splitlines()[0][:200]})") from None
            md.check_embedded(meta, role, found, str(path))
            self.modules[role] = mod
        self.parallel_safe = meta["artifact"] == "torchscript"

    def _t(self, a):
        return self.torch.from_numpy(a).to(self.device)

    def encode(self, numbers, edge_index, edge_vec) -> List[np.ndarray]:
        with self.torch.no_grad():
            out = self.modules["encoder"](self._t(numbers), self._t(edge_index), self._t(edge_vec))
        return [t.cpu().numpy() for t in out]

    def decode(self, layers, edge_index, edge_vec, slots) -> np.ndarray:
        with self.torch.no_grad():
            args = [self._t(x) for x in layers] + [self._t(edge_index), self._t(edge_vec), self._t(slots)]
            out = self.modules["decoder"](*args)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.cpu().numpy()


def _graph_builder(meta: dict):
    """The exported model's own graph builder, built through the registry (graph construction stays outside
    the exported programs); a builder that is not installed here is refused by name."""
    from cdp.core.registry import get_registry

    spec = (meta.get("model_config") or {}).get("graph") or {"name": "periodic"}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise CdpError(f"cdp_export.json: model_config.graph must be a component mapping, got {spec!r}")
    try:
        return get_registry().build("graph", spec)
    except CdpError as exc:
        raise CdpError(f"cannot run this export: its graph builder is unavailable here ({exc})") from None


class ExportedPredictor:
    """Densities from an export directory; same ``predict`` / ``predict_grid`` as cdp.predict.Predictor."""

    def __init__(self, model_dir, meta: dict, backend, probe_batch: int = DEFAULT_PROBE_BATCH, workers: Optional[int] = None):
        self.model_dir = Path(model_dir)
        self.meta = meta
        self.backend = backend
        self.graph = _graph_builder(meta)
        self.probe_batch = int(probe_batch)
        if self.probe_batch < 1:
            raise CdpError("probe batch size must be at least 1")
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self.np_dtype = NP_DTYPES[meta["dtype"]]
        self.elements = set(meta["elements"])
        self.name = self.model_dir.name

    @property
    def spin(self) -> bool:
        return bool(self.meta.get("spin", False))

    @property
    def cutoff(self) -> float:
        return float(self.meta["cutoff"])

    def _check(self, atoms) -> None:
        validate_atoms(atoms)
        check_overlap(atoms)
        bad = sorted(set(int(z) for z in atoms.numbers) - self.elements)
        if bad:
            raise CdpError(f"{self.model_dir}: the exported model does not cover element(s) {bad} (its elements: {sorted(self.elements)})")

    def encode(self, atoms):
        """(structure arrays, per-layer atom features) for one structure: computed once per structure.

        Positions (and later the probes) are moved near the origin in float64 (cdp.core.frame.LocalFrame),
        so the artifact's float32 never sees large absolute coordinates.
        """
        from cdp.core.frame import LocalFrame

        self._check(atoms)
        frame = LocalFrame.of(atoms)
        pos = frame.points(atoms.positions)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        ei, off = self.graph.atom_edges(pos, cell, pbc, self.cutoff)
        vec = pos[ei[1]] - (pos[ei[0]] + off.astype(np.float64) @ cell)
        numbers = np.asarray(atoms.numbers, dtype=np.int64)
        layers = self.backend.encode(numbers, np.ascontiguousarray(ei, dtype=np.int64), np.ascontiguousarray(vec, dtype=self.np_dtype))
        return (pos, cell, pbc, frame), layers

    def _decode_chunk(self, struct, layers, pts: np.ndarray) -> np.ndarray:
        pos, cell, pbc, frame = struct
        pts = frame.points(pts)
        ei, off = self.graph.probe_edges(pos, cell, pbc, pts, self.cutoff)
        vec = pts[ei[1]] - (pos[ei[0]] + off.astype(np.float64) @ cell)
        slots = np.zeros(len(pts), dtype=self.np_dtype)
        out = self.backend.decode(layers, np.ascontiguousarray(ei, dtype=np.int64), np.ascontiguousarray(vec, dtype=self.np_dtype), slots)
        return np.asarray(out, dtype=np.float64)

    def _run_chunks(self, struct, layers, chunks: Sequence[Callable[[], np.ndarray]]):
        """Yield decoded chunks in order, several in flight when the backend allows concurrent runs."""
        n = self.workers if getattr(self.backend, "parallel_safe", False) else 1
        if n == 1 or len(chunks) <= 1:
            for make in chunks:
                yield self._decode_chunk(struct, layers, make())
            return
        with ThreadPoolExecutor(max_workers=n) as pool:
            for start in range(0, len(chunks), 2 * n):
                futs = [pool.submit(lambda mk=mk: self._decode_chunk(struct, layers, mk())) for mk in chunks[start : start + 2 * n]]
                for f in futs:
                    yield f.result()

    def predict(self, atoms, probes, probe_batch: Optional[int] = None) -> np.ndarray:
        """ρ at ``probes`` [M, 3] (Å): [M] in e/Å³, or [M, 2] (total, magnetisation) with spin."""
        pts = validate_probes(probes)
        struct, layers = self.encode(atoms)
        step = int(probe_batch or self.probe_batch)
        chunks = [lambda s=s: pts[s : s + step] for s in range(0, len(pts), step)]
        out = list(self._run_chunks(struct, layers, chunks))
        return np.concatenate(out) if out else np.zeros((0, 2) if self.spin else (0,), dtype=np.float64)

    def iter_grid(self, atoms, shape: Sequence[int], cell: Optional[np.ndarray] = None, origin: Optional[np.ndarray] = None,
                  probe_batch: Optional[int] = None, order: str = "C"):
        """Yield ``(start, values)`` per probe batch over the flat grid index in ``order`` (as Predictor.iter_grid)."""
        from cdp.core.grid import grid_frame

        frame = grid_frame(atoms, shape, cell, origin)
        struct, layers = self.encode(atoms)
        step = int(probe_batch or self.probe_batch)
        starts = list(range(0, int(np.prod(frame.values.shape)), step))
        chunks = [lambda s=s: frame.grid_points(s, s + step, order) for s in starts]
        yield from zip(starts, self._run_chunks(struct, layers, chunks))

    def predict_grid(self, atoms, shape: Sequence[int], cell: Optional[np.ndarray] = None, origin: Optional[np.ndarray] = None,
                     probe_batch: Optional[int] = None, progress: Optional[Callable[[int], None]] = None) -> DensityGrid:
        """The density on a full grid ``shape`` over ``cell`` (default: the structure's cell), streamed."""
        from cdp.core.grid import assemble_grid, grid_frame

        frame = grid_frame(atoms, shape, cell, origin)
        chunks = self.iter_grid(atoms, frame.values.shape, frame.cell, frame.origin, probe_batch)
        return assemble_grid(frame, chunks, self.spin, progress)


def load_exported(model_dir, device: Optional[str] = "cpu", probe_batch: int = DEFAULT_PROBE_BATCH, workers: Optional[int] = None,
                  expect_format: Optional[str] = None) -> ExportedPredictor:
    """An ExportedPredictor for any export directory (onnx → onnxruntime, torchscript/pt2 → torch)."""
    model_dir = Path(model_dir)
    meta = md.read_metadata(model_dir, expect_format=expect_format)
    backend = OnnxBackend(model_dir, meta, device) if meta["artifact"] == "onnx" else TorchBackend(model_dir, meta, device)
    return ExportedPredictor(model_dir, meta, backend, probe_batch=probe_batch, workers=workers)


def load_onnx_predictor(model_dir, device: Optional[str] = "cpu", probe_batch: int = DEFAULT_PROBE_BATCH) -> ExportedPredictor:
    """``cdp.load_model(DIR, runtime="onnx")``: the ONNX export in DIR run by onnxruntime."""
    if not isinstance(model_dir, (str, os.PathLike)):
        raise CdpError("runtime='onnx' needs an export directory written by `cdp export --format onnx`")
    return load_exported(model_dir, device=device, probe_batch=probe_batch, expect_format="onnx")
