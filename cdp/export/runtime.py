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
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from cdp.core.checkpoint import file_sha256
from cdp.core.constants import DEFAULT_PROBE_BATCH
from cdp.core.device import resolve_device
from cdp.core.frame import LocalFrame
from cdp.core.predictor import DensityPredictor
from cdp.core.provenance import check_provenance
from cdp.core.registry import get_registry
from cdp.core.types import CdpError
from cdp.core.validate import check_overlap, validate_atoms
from cdp.export import metadata as md
from cdp.export.custom_ops import custom_ops_library, graph_custom_ops, torch_custom_ops

NP_DTYPES = {"float32": np.float32, "float64": np.float64}


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
            import onnxruntime as ort  # optional dependency (cdp[onnx] / cdp[gpu])
        except ImportError:
            raise CdpError("onnxruntime is not installed (pip install 'cdp[onnx]', or 'cdp[gpu]' for CUDA)") from None
        self.ort = ort
        self.providers = self._providers(device)
        self.custom_library = self._custom_library(model_dir, meta)
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

    def _custom_library(self, model_dir: Path, meta: dict) -> Optional[str]:
        """Operators of cdp's plugins (``--ops cdp``): the library cdp builds from its own sources, never the
        copy in the export directory (that one is for C++ deployments) — but the copy must be the file
        ``cdp_export.json`` records, as every other file of the directory.  None without custom operators."""
        section = meta.get("onnx", {})
        if not isinstance(section, dict):
            raise CdpError(f"{model_dir}/cdp_export.json: 'onnx' must be an object")
        custom = section.get("custom_ops")
        if custom is None:
            return None
        if not isinstance(custom, dict):
            raise CdpError(f"{model_dir}/cdp_export.json: onnx.custom_ops must be an object")
        name = custom.get("library")
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CdpError(f"{model_dir}/cdp_export.json: onnx.custom_ops.library must be a file name in the directory")
        copy = model_dir / name
        if not copy.is_file() or file_sha256(copy) != custom.get("sha256"):
            raise CdpError(f"{copy}: missing or not the library cdp_export.json records (SHA-256 differs)")
        library = str(custom_ops_library(custom))
        try:  # a library onnxruntime cannot load is named here, not blamed on the first model
            self.ort.SessionOptions().register_custom_ops_library(library)
        except Exception as exc:
            raise CdpError(f"{library}: onnxruntime cannot load cdp's operator library ({str(exc).splitlines()[0][-200:]})") from None
        return library

    def session_options(self):
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = 1  # ScatterND(add) races with more threads on CPU
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        if self.custom_library:
            so.register_custom_ops_library(self.custom_library)
        return so

    def _providers(self, device: Optional[str]) -> list:
        """onnxruntime's providers for ``device``.  CUDA runs with ``use_tf32=0``: onnxruntime's default
        TF32 float32 matrix products (10-bit mantissas) put the density ~4e-4 of max|ρ| off the float32
        result (measured on an H200, ``python -m benchmarks gpu``)."""
        available = self.ort.get_available_providers()
        want_cuda = device not in (None, "cpu") and str(device).startswith(("cuda", "auto"))
        if device not in (None, "cpu", "auto") and not str(device).startswith("cuda"):
            raise CdpError(f"unknown device '{device}' for the onnx runtime (cpu, cuda, auto)")
        options = {"use_tf32": "0"}
        text = str(device)
        if text.startswith("cuda:"):  # cuda:N → onnxruntime's device_id N
            index = text.split(":", 1)[1]
            if not index.isdigit():
                raise CdpError(f"unknown device '{device}' for the onnx runtime (cpu, cuda, cuda:N, auto)")
            options["device_id"] = index
        if want_cuda or device is None:
            if "CUDAExecutionProvider" in available:
                return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
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
    """encoder/decoder as TorchScript (``torch.jit.load``) or AOTInductor packages (``aoti_load_package``).

    A TorchScript export made with ``--ops cdp`` calls operators of a cdp plugin: they are made available
    (registered in this process) through the provider ``cdp_export.json`` names, a registered plugin's
    marked function (:func:`cdp.export.custom_ops.torch_custom_ops`), before the files are loaded; a file
    calling any custom operator the metadata does not declare is refused."""

    def __init__(self, model_dir: Path, meta: dict, device: Optional[str] = "cpu"):
        self.torch = torch
        self.device = resolve_device(device)
        self.modules = {}
        self.custom_ops = self._custom_ops(model_dir, meta) if meta["artifact"] == "torchscript" else []
        if self.custom_ops and self.device.type != "cpu":  # cdp's operators run on CPU tensors only
            if device not in (None, "auto"):
                raise CdpError(f"{model_dir}: this TorchScript export calls cdp's CPU operators ({', '.join(self.custom_ops)}); "
                               f"run it with device cpu (or export with --ops standard)")
            self.device = torch.device("cpu")
        for role in ("encoder", "decoder"):
            path = model_dir / meta[role]["file"]
            if meta["artifact"] == "torchscript":
                extra = {"cdp_export.json": ""}
                try:
                    mod = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
                except Exception as exc:
                    line = next((s.strip() for s in str(exc).splitlines() if s.strip()), type(exc).__name__)
                    if line.startswith("Unknown builtin op"):
                        raise CdpError(f"{path}: calls an operator not registered here ({line[:200]}); cdp_export.json "
                                       f"declares {', '.join(self.custom_ops) or 'no custom operators'}") from None
                    raise CdpError(f"{path}: torch.jit cannot load it ({line[:200]})") from None
                undeclared = sorted(set(graph_custom_ops(mod)) - set(self.custom_ops))
                if undeclared:
                    raise CdpError(f"{path}: calls {', '.join(undeclared)}, which cdp_export.json does not declare "
                                   f"(torchscript.custom_ops)")
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

    @staticmethod
    def _custom_ops(model_dir: Path, meta: dict) -> List[str]:
        """Qualified names of the plugin operators a TorchScript export calls (``torchscript.custom_ops``),
        registered here by their provider; [] without custom operators."""
        section = meta.get("torchscript", {})
        if not isinstance(section, dict):
            raise CdpError(f"{model_dir}/cdp_export.json: 'torchscript' must be an object")
        custom = section.get("custom_ops")
        return [] if custom is None else torch_custom_ops(custom)

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


def _graph_builder(meta: dict, where: str = "cdp_export.json"):
    """The exported model's own graph builder, built through the registry (graph construction stays outside
    the exported programs); a builder that is not installed here is refused by name.

    The graph builder is the one component an export runs from installed code (featurizer, backbone and
    readout are inside the exported programs), so its recorded plugin package is checked as a checkpoint's
    are: missing → a CdpError naming the package; another version → one warning."""
    spec = (meta.get("model_config") or {}).get("graph") or {"name": "periodic"}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise CdpError(f"cdp_export.json: model_config.graph must be a component mapping, got {spec!r}")
    recorded = meta.get("components")
    if isinstance(recorded, dict) and recorded.get("graph") is not None:
        check_provenance({"graph": recorded["graph"]}, get_registry(), where)
    try:
        return get_registry().build("graph", spec)
    except CdpError as exc:
        raise CdpError(f"cannot run this export: its graph builder is unavailable here ({exc})") from None


class ExportedEncoded(NamedTuple):
    """One structure ready for decoding: its arrays in ``frame`` and the encoder's per-layer atom features."""

    positions: np.ndarray  # [N, 3] Å, float64, in ``frame``
    cell: np.ndarray  # [3, 3] Å
    pbc: np.ndarray  # [3] bool
    frame: LocalFrame
    layers: List[np.ndarray]


class ExportedPredictor(DensityPredictor):
    """Densities from an export directory; ``predict`` / ``iter_grid`` / ``predict_grid`` /
    ``batch_for_memory`` from :class:`cdp.core.predictor.DensityPredictor`, as cdp.predict.Predictor.

    Probe batches run ``workers`` at a time when the backend allows concurrent runs; a memory budget is
    shared between them.  The memory estimate is the one recorded at export (``probe_memory`` of
    cdp_export.json, the PyTorch decoder's); an export without one uses ``probe_batch``.
    """

    def __init__(self, model_dir, meta: dict, backend, probe_batch: int = DEFAULT_PROBE_BATCH, workers: Optional[int] = None,
                 max_memory: Optional[int] = None):
        self.model_dir = Path(model_dir)
        self.meta = meta
        self.backend = backend
        self.graph = _graph_builder(meta, str(self.model_dir))
        super().__init__(probe_batch=probe_batch, max_memory=max_memory, name=self.model_dir.name)
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self.np_dtype = NP_DTYPES[meta["dtype"]]
        self.elements = set(meta["elements"])

    @property
    def spin(self) -> bool:
        return bool(self.meta.get("spin", False))

    @property
    def cutoff(self) -> float:
        return float(self.meta["cutoff"])

    @property
    def itemsize(self) -> int:
        return np.dtype(self.np_dtype).itemsize

    @property
    def concurrency(self) -> int:
        return self.workers if getattr(self.backend, "parallel_safe", False) else 1

    def probe_memory(self, itemsize: int, edges_per_probe: float):
        """(fixed bytes, bytes per probe) from the export's ``probe_memory`` record, or None without one."""
        rec = self.meta.get("probe_memory")
        if not rec:
            return None
        return int(rec["fixed"]), int(rec["per_probe"] + rec["per_edge"] * edges_per_probe)

    def _check(self, atoms) -> None:
        validate_atoms(atoms)
        check_overlap(atoms)
        bad = sorted(set(int(z) for z in atoms.numbers) - self.elements)
        if bad:
            raise CdpError(f"{self.model_dir}: the exported model does not cover element(s) {bad} (its elements: {sorted(self.elements)})")

    def encode(self, atoms) -> ExportedEncoded:
        """Structure arrays and per-layer atom features of one structure: computed once per structure.

        Positions (and later the probes) are moved near the origin in float64 (cdp.core.frame.LocalFrame),
        so the artifact's float32 never sees large absolute coordinates.
        """
        self._check(atoms)
        frame = LocalFrame.of(atoms)
        pos = frame.points(atoms.positions)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        ei, off = self.graph.atom_edges(pos, cell, pbc, self.cutoff)
        vec = pos[ei[1]] - (pos[ei[0]] + off.astype(np.float64) @ cell)
        numbers = np.asarray(atoms.numbers, dtype=np.int64)
        layers = self.backend.encode(numbers, np.ascontiguousarray(ei, dtype=np.int64), np.ascontiguousarray(vec, dtype=self.np_dtype))
        return ExportedEncoded(pos, cell, pbc, frame, layers)

    def decode(self, encoded: ExportedEncoded, probes: np.ndarray) -> np.ndarray:
        """ρ at ``probes`` [k, 3] (Å, the user's frame): [k] or [k, 2] (spin), e/Å³, float64."""
        pos, cell, pbc = encoded.positions, encoded.cell, encoded.pbc
        pts = encoded.frame.points(probes)
        ei, off = self.graph.probe_edges(pos, cell, pbc, pts, self.cutoff)
        vec = pts[ei[1]] - (pos[ei[0]] + off.astype(np.float64) @ cell)
        slots = np.zeros(len(pts), dtype=self.np_dtype)
        out = self.backend.decode(encoded.layers, np.ascontiguousarray(ei, dtype=np.int64), np.ascontiguousarray(vec, dtype=self.np_dtype), slots)
        return np.asarray(out, dtype=np.float64)

    def decode_batches(self, encoded: ExportedEncoded, batches: Sequence[Callable[[], np.ndarray]]) -> Iterator[np.ndarray]:
        """Decoded batches in order, several in flight when the backend allows concurrent runs."""
        n = self.concurrency
        if n == 1 or len(batches) <= 1:
            yield from super().decode_batches(encoded, batches)
            return
        with ThreadPoolExecutor(max_workers=n) as pool:
            for start in range(0, len(batches), 2 * n):
                futs = [pool.submit(lambda mk=mk: self.decode(encoded, mk())) for mk in batches[start : start + 2 * n]]
                for f in futs:
                    yield f.result()


def load_exported(model_dir, device: Optional[str] = "cpu", probe_batch: int = DEFAULT_PROBE_BATCH, workers: Optional[int] = None,
                  expect_format: Optional[str] = None, max_memory: Optional[int] = None) -> ExportedPredictor:
    """An ExportedPredictor for any export directory (onnx → onnxruntime, torchscript/pt2 → torch)."""
    model_dir = Path(model_dir)
    meta = md.read_metadata(model_dir, expect_format=expect_format)
    backend = OnnxBackend(model_dir, meta, device) if meta["artifact"] == "onnx" else TorchBackend(model_dir, meta, device)
    return ExportedPredictor(model_dir, meta, backend, probe_batch=probe_batch, workers=workers, max_memory=max_memory)


def load_onnx_predictor(model_dir, device: Optional[str] = "cpu", probe_batch: int = DEFAULT_PROBE_BATCH,
                        max_memory: Optional[int] = None) -> ExportedPredictor:
    """``cdp.load_model(DIR, runtime="onnx")``: the ONNX export in DIR run by onnxruntime."""
    if not isinstance(model_dir, (str, os.PathLike)):
        raise CdpError("runtime='onnx' needs an export directory written by `cdp export --format onnx`")
    return load_exported(model_dir, device=device, probe_batch=probe_batch, expect_format="onnx", max_memory=max_memory)
