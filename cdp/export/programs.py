"""torch.export of the encoder and decoder with every size dynamic: the common first step of ONNX and pt2.

Tracing runs without torch's fake-tensor dispatch cache: with every size symbolic, a cache hit rebuilds
its output's symbolic sizes and strides, which here costs more than the dispatch it saves (demo model:
torch.export 5.0 → 3.1 CPU-s; the graphs are the same).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch.export import Dim

from cdp.export.context import blame, export_context


def dims():
    """Dynamic dimensions: atoms N, atom edges E, probes M, probe edges Ep (edges may be zero)."""
    return Dim("N", min=1), Dim("E", min=0), Dim("M", min=1), Dim("Ep", min=0)


def export_programs(model, enc, dec, enc_args, dec_args, decompose: bool = True) -> Tuple[object, object]:
    """(encoder, decoder) ExportedPrograms; decompositions turn einsum into MatMul/Reshape (faster in ORT)."""
    n, e, m, ep = dims()
    num_layers = len(dec_args) - 3
    with export_context(), torch._dynamo.config.patch(fake_tensor_cache_enabled=False):
        try:
            enc_ep = torch.export.export(enc, enc_args, dynamic_shapes=({0: n}, {1: e}, {0: e}), strict=False)
            if decompose:
                enc_ep = enc_ep.run_decompositions()
        except Exception as exc:
            raise blame(exc, model, "encoder") from None
        layer_shapes = tuple({0: n} for _ in range(num_layers))
        try:
            dec_ep = torch.export.export(dec, dec_args, dynamic_shapes=(layer_shapes + ({1: ep}, {0: ep}, {0: m}),), strict=False)
            if decompose:
                dec_ep = dec_ep.run_decompositions()
        except Exception as exc:
            raise blame(exc, model, "decoder") from None
    return enc_ep, dec_ep
