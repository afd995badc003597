"""``--format torchscript --ops cdp``: ChargE3Net's probe convolutions traced as calls of the PyTorch operator
``cdp::uvu_conv_table`` (the fused kernel), registered by the plugin through the provider the metadata
names before cdp's runtime loads the files — the PyTorch model's densities, and one-line refusals for
metadata or plugins that do not provide the operator."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from cdp.core.registry import get_registry
from cdp.core.types import CdpError
from cdp.export import export_model
from cdp.export.custom_ops import graph_custom_ops, torch_custom_ops
from cdp.export.runtime import load_exported
from cdp.predict import Predictor
from tests.helpers.export import cases, tiny_model

OP = "cdp::uvu_conv_table"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model("chargee3net")
    out = tmp_path_factory.mktemp("ts-cdp-ops") / "ts"
    meta = export_model(model, out, "torchscript", ops="cdp")
    return model, out, meta


def test_the_decoder_calls_the_operator_and_matches_pytorch(exported):
    model, out, meta = exported
    custom = meta["torchscript"]["custom_ops"]
    assert custom["namespace"] == "cdp" and custom["ops"] == ["uvu_conv_table"]
    assert custom["calls"] == {"encoder": [], "decoder": [OP]}
    assert json.loads((out / "cdp_export.json").read_text())["torchscript"]["custom_ops"] == custom
    # the saved code calls the operator (one call per probe convolution), no inlined Python body
    with zipfile.ZipFile(out / "decoder.pt") as z:
        code = "".join(z.read(n).decode() for n in z.namelist() if n.endswith(".py"))
    assert code.count("ops.cdp.uvu_conv_table(") == len(model.backbone.probe_convs)
    decoder = torch.jit.load(str(out / "decoder.pt"))
    assert graph_custom_ops(decoder) == [OP]
    assert str(decoder.inlined_graph).count(OP) == len(model.backbone.probe_convs)
    assert graph_custom_ops(torch.jit.load(str(out / "encoder.pt"))) == []
    pred = load_exported(out, workers=1)
    assert pred.backend.custom_ops == [OP]
    for label, atoms, probes in cases():
        want = Predictor(model, probe_batch=7).predict(atoms, probes)
        got = pred.predict(atoms, probes, probe_batch=7)
        scale = np.abs(want).max()
        assert got.shape == want.shape and scale > 0, label
        assert np.abs(got - want).max() <= 2e-6 * scale, (label, np.abs(got - want).max() / scale)


def test_bad_edges_are_refused_by_the_operator_not_read_out_of_bounds(exported):
    _, out, meta = exported
    decoder = torch.jit.load(str(out / "decoder.pt"))
    layers = [torch.ones((3, i["shape"][1])) for i in meta["decoder"]["inputs"] if i["name"].startswith("atom_layer")]
    vec, slots = torch.full((2, 3), 0.5), torch.zeros(2)
    ok = decoder(*layers, torch.tensor([[0, 2], [0, 1]]), vec, slots)
    assert ok.shape[0] == 2 and torch.isfinite(ok).all()
    with pytest.raises(Exception, match="cdp::uvu_conv_table: a sender index is out of range"):
        decoder(*layers, torch.tensor([[0, 7], [0, 1]]), vec, slots)  # sender 7 of 3 atoms
    with pytest.raises(Exception, match="cdp::uvu_conv_table: a receiver index is out of range"):
        decoder(*layers, torch.tensor([[0, 1], [0, 5]]), vec, slots)  # receiver 5 of 2 probes


def test_the_operator_checks_its_inputs_and_plan(exported):
    """Malformed calls (as a hand-written TorchScript caller could make) are errors naming the operator."""
    from cdp.plugins.backbones.chargee3net.kernel_capture import capture_with_kernel

    model = exported[0]
    conv = capture_with_kernel(model.backbone).probe_convs[0]
    rng = torch.Generator().manual_seed(0)
    x = torch.randn((3, conv.lin1.shape[1]), generator=rng)
    sh = torch.randn((4, model.backbone.irreps_sh.dim), generator=rng)
    r, ei, slots = torch.tensor([0.5, 1.0, 1.5, 2.0]), torch.tensor([[0, 1, 2, 0], [0, 0, 1, 1]]), torch.zeros(2)
    args = dict(x=x, sh=sh, r=r, src=ei[0], dst=ei[1], slots=slots, coef=conv.knots, inv_h=conv.inv_h, paths=conv.paths,
                pairs=conv.pairs, mj=conv.mj, c=conv.c, path_block=conv.path_block, mid_dim=conv.mid_dim)
    ok = torch.ops.cdp.uvu_conv_table(**args)
    assert ok.shape == (2 * conv.mid_dim,) and torch.isfinite(ok).all()
    bad_paths = conv.paths.clone()
    bad_paths[0, 0] = 5000
    for change, why in ((dict(x=x.double()), "input dtypes do not match"), (dict(r=r[:3]), "sh, r, src and dst disagree on the edge count"),
                        (dict(inv_h=float("nan")), "inv_h must be finite and positive"), (dict(inv_h=-1.0), "inv_h must be"),
                        (dict(coef=conv.knots[:1]), "input shapes do not match"), (dict(paths=bad_paths), "path table out of range"),
                        (dict(mj=conv.mj + 99), "harmonic index out of range"),
                        (dict(mid_dim=conv.mid_dim + 1), "mid_dim .* does not match the path table"),
                        (dict(src=torch.tensor([0, 1, 2, -1])), "a sender index is out of range")):
        with pytest.raises(RuntimeError, match=f"cdp::uvu_conv_table: {why}"):
            torch.ops.cdp.uvu_conv_table(**dict(args, **change))


def _tampered(out, tmp_path, change):
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    meta = json.loads((bad / "cdp_export.json").read_text())
    change(meta["torchscript"])
    (bad / "cdp_export.json").write_text(json.dumps(meta))
    return bad


@pytest.mark.parametrize("change, message", ids=["foreign", "unmarked", "onnx-builder", "unprovided-op", "bad-op-name",
                                                  "not-an-object", "undeclared"], argvalues=[
    (lambda s: s["custom_ops"].update(provider="os:getcwd"), "provider 'os:getcwd' is not a registered plugin's PyTorch operator provider"),
    # a registered plugin's function, but unmarked, or marked as another kind of provider
    (lambda s: s["custom_ops"].update(provider="cdp.plugins.backbones.chargee3net.kernel_capture:check_inputs"),
     "is not a registered plugin's PyTorch operator provider"),
    (lambda s: s["custom_ops"].update(provider="cdp.plugins.backbones.chargee3net.ort_ops:build"),
     "is not a registered plugin's PyTorch operator provider"),
    (lambda s: s["custom_ops"].update(ops=["uvu_conv_table_v9"]), "does not provide cdp::uvu_conv_table_v9"),
    (lambda s: s["custom_ops"].update(ops=["os.system"]), "needs a 'namespace' and a non-empty list of 'ops'"),
    (lambda s: s.update(custom_ops="os:system"), "torchscript.custom_ops must be an object with a 'provider' string"),
    # the files call an operator the metadata no longer declares
    (lambda s: s.pop("custom_ops"), "decoder.pt: calls cdp::uvu_conv_table, which cdp_export.json does not declare"),
])
def test_tampered_operator_metadata_refuses_in_one_line(exported, tmp_path, change, message):
    _, out, _ = exported
    with pytest.raises(CdpError, match=message) as info:
        load_exported(_tampered(out, tmp_path, change), workers=1)
    assert "\n" not in str(info.value)


def test_without_the_plugin_the_export_is_refused_in_one_line(exported, monkeypatch):
    _, out, meta = exported
    registry = get_registry()
    monkeypatch.setattr(registry, "plugins", [p for p in registry.plugins if "chargee3net" not in p.name])
    with pytest.raises(CdpError, match="custom operators 'cdp': provider 'cdp.plugins.backbones.chargee3net.kernel_capture:"
                                       "torch_ops' is not a registered plugin's PyTorch operator provider") as info:
        load_exported(out, workers=1)
    assert "\n" not in str(info.value)
    with pytest.raises(CdpError, match="is not a registered plugin's PyTorch operator provider"):
        torch_custom_ops(meta["torchscript"]["custom_ops"])


def test_a_gpu_device_is_refused_and_auto_runs_on_cpu(exported, monkeypatch):
    """cdp's operator takes CPU tensors: an explicit GPU is refused at load, ``auto`` stays on the CPU."""
    import cdp.export.runtime as runtime

    _, out, _ = exported
    monkeypatch.setattr(runtime, "resolve_device", lambda device: torch.device("cuda"))  # as on a machine with a GPU
    with pytest.raises(CdpError, match=r"calls cdp's CPU operators \(cdp::uvu_conv_table\); run it with device cpu"):
        load_exported(out, device="cuda", workers=1)
    assert load_exported(out, device="auto", workers=1).backend.device == torch.device("cpu")


def test_a_file_calling_an_unregistered_operator_is_refused_in_one_line(exported, tmp_path):
    """What a process without the operator sees (here an operator registered for the trace, then removed)."""
    from cdp.core.checkpoint import file_sha256

    class Calls(torch.nn.Module):
        def forward(self, x):
            return torch.ops.cdptest.noop(x)

    _, out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    lib = torch.library.Library("cdptest", "DEF")
    try:
        lib.define("noop(Tensor x) -> Tensor")
        lib.impl("noop", lambda x: x.clone(), "CompositeExplicitAutograd")
        torch.jit.save(torch.jit.trace(Calls(), (torch.ones(2),)), str(bad / "decoder.pt"))
    finally:
        lib._destroy()
    meta = json.loads((bad / "cdp_export.json").read_text())
    meta["decoder"]["sha256"] = file_sha256(bad / "decoder.pt")
    (bad / "cdp_export.json").write_text(json.dumps(meta))
    with pytest.raises(CdpError, match=r"decoder.pt: calls an operator not registered here \(Unknown builtin op: "
                                       r"cdptest::noop.\); cdp_export.json declares cdp::uvu_conv_table$") as info:
        load_exported(bad, workers=1)
    assert "\n" not in str(info.value)
