"""TorchScript export through e3nn's jit helpers: e3nn modules are scripted/traced by their own compile
mode, the encoder/decoder wrappers are traced (checked at other sizes) and saved with embedded metadata.

torch 2.13 deprecates TorchScript; ``pt2`` (torch.export + AOTInductor) is the forward path.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

from e3nn.util import jit as e3jit
import torch

from cdp.core.atomic import atomic_write
from cdp.export import metadata as md
from cdp.export.examples import decoder_example, encoder_example
from cdp.export.context import blame, export_context
from cdp.export.wrappers import capture_summary


def export_torchscript(model, enc, dec, enc_args, dec_args, out: Path, meta: dict, log: Callable[[str], None] = lambda s: None) -> dict:
    """Write encoder.pt / decoder.pt (load with ``torch.jit.load``); returns the TorchScript metadata section."""
    dtype = enc_args[2].dtype
    check_enc = [encoder_example(meta["elements"], meta["cutoff"], dtype, 9, 31, seed=5)]
    with torch.no_grad():
        check_layers = enc(*check_enc[0])
    check_dec = [decoder_example(check_layers, meta["cutoff"], 4, 17, seed=6)]
    with export_context(), torch.no_grad():
        for role, module, args, checks in (("encoder", enc, enc_args, check_enc), ("decoder", dec, dec_args, check_dec)):
            try:
                traced = e3jit.trace(copy.deepcopy(module), example_inputs=args, check_inputs=checks, in_place=True)
            except Exception as exc:
                raise blame(exc, model, role) from None
            path = out / meta[role]["file"]
            extra = {"cdp_export.json": json.dumps(md.embedded(meta, role), sort_keys=True)}
            atomic_write(path, lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))
            log(f"{role}.pt written")
    return {"method": "e3nn.util.jit.trace (e3nn modules compiled by their compile mode)", "load": "torch.jit.load",
            "capture": capture_summary(enc)}
