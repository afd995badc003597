"""torch.export of the encoder and decoder with every size dynamic: the common first step of ONNX and pt2.

Tracing runs without torch's fake-tensor dispatch cache: with every size symbolic, a cache hit rebuilds
its output's symbolic sizes and strides, which here costs more than the dispatch it saves (demo model:
torch.export 5.0 → 3.1 CPU-s; the graphs are the same).
"""

from __future__ import annotations

import contextlib
from typing import Tuple

import torch
from torch.export import Dim

from cdp.export.context import blame, export_context


def dims():
    """Dynamic dimensions: atoms N, atom edges E, probes M, probe edges Ep (edges may be zero)."""
    return Dim("N", min=1), Dim("E", min=0), Dim("M", min=1), Dim("Ep", min=0)


def dynamic_shapes(role: str, num_inputs: int):
    """torch.export ``dynamic_shapes`` of the encoder (numbers [N], edge_index [2, E], edge_vec [E, 3]) or the
    decoder (``num_inputs`` − 3 atom tensors [N, ·], probe_edge_index [2, Ep], probe_edge_vec [Ep, 3], probe_slots [M])."""
    n, e, m, ep = dims()
    if role == "encoder":
        return ({0: n}, {1: e}, {0: e})
    return (tuple({0: n} for _ in range(num_inputs - 3)) + ({1: ep}, {0: ep}, {0: m}),)


def _no_fake_tensor_cache():
    """torch's fake-tensor dispatch cache off (module docstring); a no-op on a torch without it."""
    config = torch._dynamo.config
    if not hasattr(config, "fake_tensor_cache_enabled"):
        return contextlib.nullcontext()
    return config.patch(fake_tensor_cache_enabled=False)


def export_program(model, role: str, module, args):
    """The ExportedProgram of ``module`` (the model's ``role``: encoder or decoder), every size dynamic;
    a failure is a CdpError naming the component (:func:`cdp.export.context.blame`)."""
    with export_context(), _no_fake_tensor_cache():
        try:
            return torch.export.export(module, args, dynamic_shapes=dynamic_shapes(role, len(args)), strict=False)
        except Exception as exc:
            raise blame(exc, model, role) from None


def export_programs(model, enc, dec, enc_args, dec_args) -> Tuple[object, object]:
    """(encoder, decoder) ExportedPrograms (:func:`export_program`), not decomposed."""
    return export_program(model, "encoder", enc, enc_args), export_program(model, "decoder", dec, dec_args)
