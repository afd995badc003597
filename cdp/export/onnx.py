"""ONNX export: torch.export → ``torch.onnx.export(..., dynamo=True)``, opset ≥ 18.

The programs are decomposed once, by torch.onnx itself, and written without the onnxscript optimiser
(onnxruntime folds constants and fuses at session creation; the optimiser cost most of the export time
and changed no latency).  ``index_add`` is translated straight to ScatterND(add).  Backbones with a
capture form (ChargE3Net: :func:`cdp.export.wrappers.capture_backbone`) are exported in it.

Never the legacy TorchScript-based exporter: it silently mis-exports e3nn's Gate and ``index_add``.
Scatter-sums become ScatterND(reduction='add'); onnxruntime's CPU kernel for it races with more than
one intra-op thread, so cdp's runtime (and the C++ example) use one intra-op thread per session.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path
from typing import Callable, List, Optional

import torch

from cdp.core.atomic import atomic_write
from cdp.core.checkpoint import file_sha256
from cdp.core.types import CdpError
from cdp.export import metadata as md
from cdp.export.context import blame, export_context
from cdp.export.custom_ops import LIBRARY_FILE, custom_ops_library
from cdp.export.fork import run_pair
from cdp.export.programs import export_program
from cdp.export.wrappers import DECODER_EDGE_INPUTS, ENCODER_INPUTS, capture_summary

MIN_OPSET = 18


def _index_add(self, dim: int, index, source, alpha: float = 1.0):
    """``aten.index_add`` (dim 0, alpha 1: the scatter-sums of cdp's models) as one ScatterND(add).

    Without it torch.onnx decomposes index_add into index_put, whose translation adds Transposes and an
    Expand of the scattered values around the ScatterND (a copy of every message).
    """
    from onnxscript import opset18 as op  # optional dependency (the onnx extra), only while exporting

    if dim != 0 or alpha != 1:
        raise NotImplementedError("index_add: only dim=0, alpha=1 is translated")
    return op.ScatterND(self, op.Unsqueeze(index, op.Constant(value_ints=[-1])), source, reduction="add")


def _translations(extra: dict) -> dict:
    return {torch.ops.aten.index_add.default: _index_add, **extra}


def _to_onnx(program, path: Path, input_names: List[str], output_names: List[str], opset: int, props: dict,
             extra: dict) -> dict:
    import onnx  # optional dependency (the onnx extra)

    with export_context():
        onx = torch.onnx.export(program, (), dynamo=True, opset_version=opset, input_names=input_names,
                                output_names=output_names, verbose=False, optimize=False,
                                custom_translation_table=_translations(extra))
    proto = onx.model_proto
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)

    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    ops = sorted({n.op_type for n in proto.graph.node})
    opset_found = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return {"ops": ops, "opset": opset_found, "nodes": len(proto.graph.node)}


def _export_stage(model, role: str, module, args, input_names: List[str], output_names: List[str], path: Path,
                  opset: int, props: dict, translations: Optional[dict] = None) -> dict:
    """torch.export, then ONNX, of one stage (encoder or decoder) to ``path``; returns its ops, opset, node
    count and the seconds of each step (a JSON-able record: it may come from a second process)."""
    t0 = time.perf_counter()
    program = export_program(model, role, module, args)
    t1 = time.perf_counter()
    try:
        info = _to_onnx(program, path, input_names, output_names, opset, props, translations or {})
    except CdpError:
        raise
    except Exception as exc:
        raise blame(exc, model, role) from None
    info.update(export_s=t1 - t0, onnx_s=time.perf_counter() - t1, pid=os.getpid())
    return info


def export_onnx(model, enc, dec, enc_args, dec_args, layer_names: List[str], out: Path, meta: dict,
                opset: int = 20, log: Callable[[str], None] = lambda s: None, jobs: int = 1) -> dict:
    """Write encoder.onnx / decoder.onnx; returns the ONNX section of the metadata.

    ``jobs`` ≥ 2: the encoder is exported in a forked second process while the decoder is exported here
    (:func:`cdp.export.fork.run_pair`; Linux), the same files as one after the other.
    """

    if int(opset) < MIN_OPSET:
        raise CdpError(f"ONNX opset must be ≥ {MIN_OPSET}, got {opset}")
    summary = capture_summary(enc)
    if summary:
        tables = summary.get("radial_tables", {})
        log("captured " + summary["form"] + "".join(
            f"; {k} radial table {t['intervals']} intervals, max error {t['max_rel_error']:.1e} of max|w|" for k, t in tables.items()))
    form = getattr(enc, "backbone", None)
    translations = getattr(form, "onnx_translations", dict)()  # a capture form's own operators, if any
    custom = (summary or {}).get("custom_ops")
    stages = {
        role: functools.partial(_export_stage, model, role, module, args, ins, outs, out / meta[role]["file"], int(opset),
                                md.embedded(meta, role), translations)
        for role, module, args, ins, outs in (
            ("encoder", enc, enc_args, list(ENCODER_INPUTS), list(layer_names)),
            ("decoder", dec, dec_args, list(layer_names) + list(DECODER_EDGE_INPUTS), ["density"]),
        )
    }
    if jobs >= 2:
        _warm_imports()
    t0 = time.perf_counter()
    info = dict(zip(("encoder", "decoder"), run_pair(stages["encoder"], stages["decoder"], jobs, log=log)))
    wall = time.perf_counter() - t0
    here = os.getpid()
    for role in ("encoder", "decoder"):
        r = info[role]
        where = "" if r["pid"] == here else " (second process)"
        log(f"{role}: torch.export {r['export_s']:.1f} s, ONNX {r['onnx_s']:.1f} s, {r['nodes']} nodes{where}")
    log(f"encoder + decoder: {wall:.1f} s")
    section = {}
    if custom:
        # the operator library beside the models, for C++ deployments (cdp's own runtime builds its own)
        library = custom_ops_library(custom)
        target = out / LIBRARY_FILE
        atomic_write(target, lambda tmp: shutil.copyfile(library, tmp))
        section["custom_ops"] = dict(custom, library=LIBRARY_FILE, sha256=file_sha256(target))
        log(f"operators {custom['domain']}: {', '.join(custom['ops'])} (library {LIBRARY_FILE})")
    return {
        **section,
        "opset": info["decoder"]["opset"],
        "exporter": "torch.export + torch.onnx.export(dynamo=True)",
        "ops": {r: info[r]["ops"] for r in info},
        "intra_op_num_threads": 1,
        "note": "onnxruntime CPU ScatterND(add) races with >1 intra-op thread: run sessions with intra_op_num_threads=1",
        "capture": summary,
    }


def _warm_imports() -> None:
    """Import what both stages import on first use (torch.export's tracer, torch.onnx's exporter and
    onnxscript's op library, ~1 s) once, before the second process is forked; a missing one is left to the
    stages to report."""
    try:
        import onnx  # noqa: F401  (optional dependency, the onnx extra; start-up: imported once, before forking)
        import onnxscript  # noqa: F401  (as above)
        import torch.export._trace  # noqa: F401  (as above)
        import torch.onnx._internal.exporter._core  # noqa: F401  (as above)
    except ImportError:
        pass
