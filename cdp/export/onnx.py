"""ONNX export: torch.export (+ decompositions) → ``torch.onnx.export(..., dynamo=True)``, opset ≥ 18.

Never the legacy TorchScript-based exporter: it silently mis-exports e3nn's Gate and ``index_add``.
Scatter-sums become ScatterND(reduction='add'); onnxruntime's CPU kernel for it races with more than
one intra-op thread, so cdp's runtime (and the C++ example) use one intra-op thread per session.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, List

import torch

from cdp.core.types import CdpError
from cdp.export import metadata as md
from cdp.export.context import blame, export_context
from cdp.export.wrappers import DECODER_EDGE_INPUTS, ENCODER_INPUTS

MIN_OPSET = 18


def _to_onnx(program, path: Path, input_names: List[str], output_names: List[str], opset: int, props: dict) -> dict:
    import onnx

    with export_context():
        onx = torch.onnx.export(program, (), dynamo=True, opset_version=opset, input_names=input_names,
                                output_names=output_names, verbose=False, optimize=True)
    proto = onx.model_proto
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    from cdp.core.atomic import atomic_write

    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    ops = sorted({n.op_type for n in proto.graph.node})
    opset_found = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return {"ops": ops, "opset": opset_found, "nodes": len(proto.graph.node)}


def export_onnx(model, enc, dec, enc_args, dec_args, layer_names: List[str], out: Path, meta: dict,
                opset: int = 20, log: Callable[[str], None] = lambda s: None) -> dict:
    """Write encoder.onnx / decoder.onnx; returns the ONNX section of the metadata."""
    from cdp.export.programs import export_programs

    if int(opset) < MIN_OPSET:
        raise CdpError(f"ONNX opset must be ≥ {MIN_OPSET}, got {opset}")
    t0 = time.perf_counter()
    enc_ep, dec_ep = export_programs(model, enc, dec, enc_args, dec_args)
    log(f"torch.export: {time.perf_counter() - t0:.1f} s")
    info = {}
    for role, program, ins, outs in (
        ("encoder", enc_ep, list(ENCODER_INPUTS), list(layer_names)),
        ("decoder", dec_ep, list(layer_names) + list(DECODER_EDGE_INPUTS), ["density"]),
    ):
        t0 = time.perf_counter()
        try:
            info[role] = _to_onnx(program, out / meta[role]["file"], ins, outs, int(opset), md.embedded(meta, role))
        except CdpError:
            raise
        except Exception as exc:
            raise blame(exc, model, role) from None
        log(f"{role}.onnx: {time.perf_counter() - t0:.1f} s, {info[role]['nodes']} nodes")
    return {
        "opset": info["decoder"]["opset"],
        "exporter": "torch.export + torch.onnx.export(dynamo=True)",
        "ops": {r: info[r]["ops"] for r in info},
        "intra_op_num_threads": 1,
        "note": "onnxruntime CPU ScatterND(add) races with >1 intra-op thread: run sessions with intra_op_num_threads=1",
    }
