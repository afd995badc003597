"""TorchScript export through e3nn's jit helpers: e3nn modules are scripted/traced by their own compile
mode, the encoder/decoder wrappers are traced (checked at other sizes) and saved with embedded metadata.

With ``--ops cdp`` the capture form calls its plugin's PyTorch operators (ChargE3Net: each probe
convolution one ``cdp::uvu_conv_table`` call); the trace records those calls, the metadata names them
(``torchscript.custom_ops``: namespace, ops, the plugin's provider) and cdp's runtime has the plugin
register them before ``torch.jit.load`` (:func:`cdp.export.custom_ops.torch_custom_ops`).  Such a file
needs cdp (the operator is registered in Python), not libtorch alone.

torch 2.13 deprecates TorchScript; ``pt2`` (torch.export + AOTInductor) is the forward path.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, Dict, List

from e3nn.util import jit as e3jit
import torch

from cdp.core.atomic import atomic_write
from cdp.core.types import CdpError
from cdp.export import metadata as md
from cdp.export.custom_ops import graph_custom_ops, torch_custom_ops
from cdp.export.examples import decoder_example, encoder_example
from cdp.export.context import blame, export_context
from cdp.export.wrappers import capture_summary


def export_torchscript(model, enc, dec, enc_args, dec_args, out: Path, meta: dict, log: Callable[[str], None] = lambda s: None) -> dict:
    """Write encoder.pt / decoder.pt (load with ``torch.jit.load``); returns the TorchScript metadata section.

    Raises CdpError when the capture form calls operators without a TorchScript form, or when a traced
    graph calls other custom operators than the ones it declares (or none of them)."""
    summary = capture_summary(enc)
    spec = (summary or {}).get("torch_ops")
    if (summary or {}).get("custom_ops") and not spec:
        raise CdpError("--ops cdp: this model's operators have no TorchScript form (use --format onnx)")
    declared = torch_custom_ops(spec) if spec else []  # registered here, as the runtime will
    dtype = enc_args[2].dtype
    check_enc = [encoder_example(meta["elements"], meta["cutoff"], dtype, 9, 31, seed=5)]
    with torch.no_grad():
        check_layers = enc(*check_enc[0])
    check_dec = [decoder_example(check_layers, meta["cutoff"], 4, 17, seed=6)]
    calls: Dict[str, List[str]] = {}
    traced = {}
    with export_context(), torch.no_grad():
        for role, module, args, checks in (("encoder", enc, enc_args, check_enc), ("decoder", dec, dec_args, check_dec)):
            try:
                traced[role] = e3jit.trace(copy.deepcopy(module), example_inputs=args, check_inputs=checks, in_place=True)
            except Exception as exc:
                raise blame(exc, model, role) from None
            calls[role] = graph_custom_ops(traced[role])
            undeclared = sorted(set(calls[role]) - set(declared))
            if undeclared:
                raise CdpError(f"{role}: the traced graph calls {', '.join(undeclared)}, which the capture form does not declare")
        if declared and not any(calls.values()):
            raise CdpError(f"--ops cdp: the traced graphs call none of {', '.join(declared)} (the operators were inlined)")
        for role in ("encoder", "decoder"):  # written once both are traced and checked
            path = out / meta[role]["file"]
            extra = {"cdp_export.json": json.dumps(md.embedded(meta, role), sort_keys=True)}
            atomic_write(path, lambda tmp: torch.jit.save(traced[role], tmp, _extra_files=extra))
            log(f"{role}.pt written" + (f" (calls {', '.join(calls[role])})" if calls[role] else ""))
    section = {"method": "e3nn.util.jit.trace (e3nn modules compiled by their compile mode)", "load": "torch.jit.load",
               "capture": summary}
    if declared:
        section["custom_ops"] = dict(spec, calls=calls)
        section["load"] = "torch.jit.load after cdp registers the custom operators (needs cdp)"
    return section
