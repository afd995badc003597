"""torch.export keeps the ChargE3Net encoder's sizes dynamic, whatever inference-only shortcuts the fast
backend takes (they must never read a size while the graph is being captured)."""

from __future__ import annotations

import torch

import cdp.plugins.backbones.chargee3net.fast_conv as fast_conv
from cdp.export.examples import encoder_example
from cdp.export.exporter import export_context
from cdp.export.programs import dims
from cdp.export.wrappers import split_model
from tests.helpers.export import tiny_model


def test_chargee3net_encoder_exports_with_dynamic_edges(monkeypatch):
    # a window smaller than the example's edge count: a size test taken before the capture check would
    # specialise E and torch.export would refuse the dynamic dimension
    monkeypatch.setattr(fast_conv, "FEATURE_WINDOW", 4)
    model = tiny_model("chargee3net")
    assert model.backbone.backend == "fast"
    enc, _ = split_model(model)
    args = encoder_example([1, 8], model.cutoff, model.dtype, n=5, e=12)
    n, e, _, _ = dims()
    with export_context(), torch.no_grad():
        program = torch.export.export(enc, args, dynamic_shapes=({0: n}, {1: e}, {0: e}), strict=False)
        want = enc(*encoder_example([1, 8], model.cutoff, model.dtype, n=7, e=20, seed=3))
    got = program.module()(*encoder_example([1, 8], model.cutoff, model.dtype, n=7, e=20, seed=3))
    for a, b in zip(want, got):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5 * float(a.abs().max()))
