"""Readouts say which irreps they read; fast ChargE3Net inference then skips the rest of its last probe layer
(paths, radial-table columns, lin2 outputs) and gives the same densities."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from e3nn import o3

from cdp.core.components import Backbone, Readout
from cdp.core.model import DensityModel
from cdp.core.registry import get_registry
from cdp.core.types import edge_vectors
from cdp.plugins.readouts.e3nn_linear import LinearReadout, LinearSpinCompatReadout, LinearSpinReadout
from cdp.predict import Predictor
from tests.helpers.export import cases


def test_readouts_say_what_they_read():
    irreps = "4x0e+2x0o+1x1o"
    assert LinearReadout(irreps).reads() == "0e"
    assert LinearSpinReadout(irreps).reads() == "0e"
    assert LinearSpinCompatReadout(irreps).reads() == "0e+0o"
    assert Readout().reads() is None  # the default: everything
    assert Backbone().read_only("0e") is None  # the default backbone ignores it


def _model(readout: str = "linear") -> DensityModel:
    cfg = copy.deepcopy(get_registry().preset("chargee3net-cpu"))
    cfg["readout"] = {"name": readout}
    torch.manual_seed(0)
    model = DensityModel.from_config(cfg).eval()
    with torch.no_grad():  # untrained outputs are tiny; make densities O(1)
        for p in model.readout.parameters():
            p.mul_(10.0)
    return model


@pytest.mark.parametrize("readout", ["linear", "linear-spin-compat"])
def test_pruned_last_layer_gives_the_same_densities(readout):
    model = _model(readout)
    backbone = model.backbone
    assert backbone.__dict__["_read_types"] == frozenset(ir for _, ir in o3.Irreps(model.readout.reads()))
    last = backbone.probe_convs[-1]
    if not last.kernel_reads_tables(torch.empty(0)):
        pytest.skip("the fused kernel is not available here")
    pred = Predictor(model)
    keep = backbone._last_layer_keep()
    _, atoms, probes = cases()[0]
    pred.predict(atoms, probes)
    assert [k[4] for k in last.__dict__["_radial_tables"]] == [keep]  # the whole table was never built
    for label, atoms, probes in cases():
        pruned = pred.predict(atoms, probes)
        backbone.read_only(None)
        full = pred.predict(atoms, probes)
        backbone.read_only(model.readout.reads())
        scale = max(float(np.abs(full).max()), 1e-12)
        assert np.abs(pruned - full).max() <= 1e-6 * scale, label
    # the restricted plan ran, with a table of only its radial-weight columns
    plan, small, _ = last.restricted(keep, backbone.probe_basis, torch.float32, torch.device("cpu"), backbone.radial_rtol)
    assert 0 < plan.paths.shape[0] < last.plan.paths.shape[0]
    assert small.width < last.radial_width()
    assert all(row[1] == 1 for row in plan.paths.tolist())  # scalar outputs only: d_k = 1


def test_only_unread_channels_differ_and_autograd_is_whole():
    model = _model()
    backbone = model.backbone
    if not backbone.probe_convs[-1].kernel_reads_tables(torch.empty(0)):
        pytest.skip("the fused kernel is not available here")
    _, atoms, probes = cases()[0]
    pred = Predictor(model)
    enc = pred.encode(atoms)
    pts = torch.from_numpy(enc.frame.points(probes)).float()
    graph = model.probe_graph(enc.batch, pts)
    vec = edge_vectors(enc.batch.positions, pts, graph.edge_index, graph.offsets, enc.batch.cell, enc.batch.atom_batch)
    with torch.no_grad():
        pruned = backbone.decode(enc.features.layers, graph.edge_index, vec, len(pts))
        backbone.read_only(None)
        full = backbone.decode(enc.features.layers, graph.edge_index, vec, len(pts))
        backbone.read_only("0e")
    irreps = o3.Irreps(backbone.out_spec.irreps)
    read = torch.cat([torch.arange(sl.start, sl.stop) for (_, ir), sl in zip(irreps, irreps.slices()) if str(ir) == "0e"])
    assert torch.allclose(pruned[:, read], full[:, read], rtol=0, atol=1e-6 * float(full[:, read].abs().max()))
    assert torch.isfinite(pruned).all() and not torch.allclose(pruned, full)  # the other channels were skipped
    # under autograd decode is the whole function, whatever the readout reads
    layers = [t.detach() for t in enc.features.layers]
    whole = backbone.decode(layers, graph.edge_index, vec.detach().requires_grad_(), len(pts))
    assert torch.allclose(whole.detach(), full, rtol=0, atol=1e-5 * float(full.abs().max()))


def test_the_kit_catches_a_readout_that_reads_more_than_it_says():
    from cdp.core.components import Spec
    from cdp.testing import assert_component

    spec = Spec(irreps="4x0e+2x0o+1x1o")
    assert_component(LinearReadout(spec).double())
    assert_component(LinearSpinCompatReadout(spec).double(), parity=False)

    class Understated(LinearSpinCompatReadout):
        def reads(self):
            return "0e"  # it also reads the 0o channel

    with pytest.raises(AssertionError, match=r"reads\(\) says it reads only 0e"):
        assert_component(Understated(spec).double(), parity=False)


def test_the_kernel_export_form_runs_the_restricted_last_layer():
    from cdp.plugins.backbones.chargee3net.kernel_capture import capture_with_kernel

    model = _model()
    if not model.backbone.probe_convs[-1].kernel_reads_tables(torch.empty(0)):
        pytest.skip("the fused kernel is not available here")
    form = capture_with_kernel(model.backbone)
    whole = model.backbone.probe_convs[-1].plan.paths.shape[0]
    assert 0 < form.probe_convs[-1].paths.shape[0] < whole
    assert form.probe_convs[0].paths.shape[0] == model.backbone.probe_convs[0].plan.paths.shape[0]


def test_the_dense_export_form_runs_the_restricted_last_layer():
    """The standard export form drops the same paths (and their radial-table columns); the export round-trip
    tests compare its densities with the model's."""
    from cdp.plugins.backbones.chargee3net.dense_conv import capture_backbone

    model = _model()
    pruned = capture_backbone(model.backbone)
    model.backbone.read_only(None)
    whole = capture_backbone(model.backbone)
    n_paths = lambda conv: sum(p for *_, p in conv.blocks)  # noqa: E731
    assert 0 < n_paths(pruned.probe_convs[-1]) < n_paths(whole.probe_convs[-1])
    assert n_paths(pruned.probe_convs[0]) == n_paths(whole.probe_convs[0])
    assert pruned.probe_radial.offsets[-1] < whole.probe_radial.offsets[-1] or not pruned.probe_radial.full


def test_a_readout_swapped_in_gets_every_channel_it_reads(tmp_path):
    """A linear model (it reads 0e) given the published spin head (0e+0o, with 0o channels in the output of a
    3-layer backbone): the densities are those of a model built with that head, in PyTorch and exported."""
    from cdp.export.examples import TINY_CONFIGS
    from cdp.export.exporter import export_model
    from cdp.export.runtime import load_exported

    cfg = copy.deepcopy(TINY_CONFIGS["chargee3net"])
    cfg["backbone"].update(lmax=2, num_interactions=3)
    cfg["readout"] = {"name": "linear-spin-compat"}
    torch.manual_seed(0)
    spin = DensityModel.from_config(cfg).eval()
    assert "0o" in str(spin.backbone.out_spec)
    with torch.no_grad():
        for p in spin.readout.parameters():
            p.mul_(10.0)
    if not spin.backbone.probe_convs[-1].kernel_reads_tables(torch.empty(0)):
        pytest.skip("the fused kernel is not available here")
    _, atoms, probes = cases()[0]
    want = Predictor(spin).predict(atoms, probes)
    cfg["readout"] = {"name": "linear"}
    model = DensityModel.from_config(cfg).eval()
    model.backbone.load_state_dict(spin.backbone.state_dict())  # the same backbone weights
    copied = copy.deepcopy(model)  # the backbone told "0e", as the model's
    model.readout = copy.deepcopy(spin.readout)
    got = Predictor(model).predict(atoms, probes)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    copied.readout = copy.deepcopy(spin.readout)  # not predicted with: the export declares it
    export_model(copied, tmp_path, "torchscript")
    exported = load_exported(tmp_path, expect_format="torchscript").predict(atoms, probes)
    assert np.abs(exported - want).max() <= 1e-5 * np.abs(want).max()
