"""The dense capture form of ChargE3Net (dense_conv) computes the backbone's function from its weights.

Compared with the e3nn backend in float64 (tight: only the radial table's error separates them), piece by
piece (linear maps, gates, the radial table) and on the published reference weights in float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3

from cdp.plugins.backbones.chargee3net.backbone import _make_gate
from cdp.plugins.backbones.chargee3net.dense_conv import (CaptureBackbone, DenseGate, TabulatedRadial,
                                                          capture_backbone, linear_matrix)
from tests.helpers.chargee3net import _pair, _run, _structure
from tests.helpers.paths import FIXTURES as REF


@pytest.mark.parametrize("lmax,full", [(1, True), (3, False)])
def test_capture_form_equals_e3nn_backbone_float64(lmax, full, monkeypatch):
    import cdp.plugins.backbones.chargee3net.dense_conv as dense

    monkeypatch.setattr(dense, "FULL_TABLE_BYTES", 1 << 40 if full else 0)  # composed table, or h(r) and a GEMM
    ref, _ = _pair(lmax, mul=24)
    form = capture_backbone(ref)
    assert isinstance(form, CaptureBackbone) and not list(form.parameters())  # constants only
    data = _structure(n_atoms=5, n_probes=40)  # probe 0 sits on an atom: a zero-length edge
    with torch.no_grad():
        layers, rho, _ = _run(ref, *data, torch.float64)
        got_layers, got, _ = _run(form, *data, torch.float64)
    for a, b in zip(layers, got_layers):
        assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-6 * float(a.abs().max())
    assert got.shape == rho.shape and float((got - rho).abs().max()) <= 1e-6 * float(rho.abs().max())


def test_capture_form_of_fast_backend_is_the_same():
    ref, fast = _pair(2, mul=16, dtype=torch.float32)
    data = _structure(seed=4)
    with torch.no_grad():
        _, rho, _ = _run(ref, *data, torch.float32)
        _, got, _ = _run(fast.capture_form(), *data, torch.float32)
    assert float((got - rho).abs().max()) <= 1e-5 * float(rho.abs().max())


def test_linear_matrix_reproduces_linear_with_biases():
    torch.manual_seed(0)
    lin = o3.Linear("3x0e + 2x1o + 1x2e", "2x0e + 3x1o + 2x2e", biases=True)
    with torch.no_grad():
        lin.bias.normal_()
    x = torch.randn(7, lin.irreps_in.dim)
    m, b = linear_matrix(lin, lin.irreps_in.dim)
    assert m.shape == (lin.irreps_in.dim, lin.irreps_out.dim) and b.abs().max() > 0.1
    assert torch.allclose((x.double() @ m + b).float(), lin(x), atol=1e-6)


def test_dense_gate_equals_gate():
    torch.manual_seed(1)
    irreps_in = o3.Irreps("4x0e + 2x0o + 3x1o + 2x1e + 2x2e")
    gate = _make_gate(irreps_in, o3.Irreps.spherical_harmonics(2), o3.Irreps("6x0e + 6x0o + 3x1o + 3x1e + 2x2e + 2x2o"))
    x = torch.randn(11, gate.irreps_in.dim)
    assert torch.allclose(DenseGate(gate)(x), gate(x), atol=1e-6)


@pytest.mark.parametrize("full", [True, False])
def test_tabulated_radial_weights_equal_the_radial_network(full, monkeypatch):
    """The stage table (composed with the last layer, or h(r) then the last layer as a GEMM) gives every
    convolution's fc(basis(r)) in its dense column order, within the measured error it reports."""
    import cdp.plugins.backbones.chargee3net.dense_conv as dense

    monkeypatch.setattr(dense, "FULL_TABLE_BYTES", 1 << 40 if full else 0)
    ref, _ = _pair(2, mul=16)
    table = TabulatedRadial(ref.probe_convs, ref.probe_basis, ref.cutoff, dtype=torch.float64)
    assert table.full is full and 0 < table.error <= 1e-6 * table.scale
    r = torch.cat([torch.rand(300, dtype=torch.float64) * ref.cutoff, torch.tensor([0.0, ref.cutoff], dtype=torch.float64)])
    rows = table(r)
    with torch.no_grad():
        for k, conv in enumerate(ref.probe_convs):
            want = conv.fc(ref.probe_basis(r)).index_select(1, dense._weight_order(conv))
            got = table.weights(rows, k)
            assert got.shape == want.shape and float((got - want).abs().max()) <= 2 * table.error + 1e-12


def test_capture_form_reproduces_published_reference(fixtures_dir):
    """charge3net_small (published code's weights): the dense form in float32 gives the published densities,
    and the backbone's own, to 1e-5 of max |ρ| (zero-length probe edges included)."""
    from cdp.importers.charge3net import import_charge3net_components
    from tests.helpers.deepdft import predict

    _, _, (feat, backbone, readout) = import_charge3net_components(REF / "charge3net_small.pt", REF / "charge3net_small.json")
    feat, backbone, readout = (m.to(torch.float32).eval() for m in (feat, backbone, readout))
    form = backbone.capture_form()
    data = np.load(REF / "charge3net_small_cases.npz")
    structure = sorted({k.split("/")[0] for k in data.files})[0]
    c = {k: data[f"{structure}/{k}"] for k in ("numbers", "positions", "cell", "pbc", "probes", "density_f32")}
    with torch.no_grad():
        rho = predict(feat, backbone, readout, c["numbers"], c["positions"], c["cell"], c["pbc"], c["probes"], dtype=torch.float32)
        got = predict(feat, form, readout, c["numbers"], c["positions"], c["cell"], c["pbc"], c["probes"], dtype=torch.float32)
    scale = float(np.abs(c["density_f32"]).max())
    assert float((got - rho).abs().max()) <= 1e-5 * scale
    assert np.abs(got.double().numpy() - c["density_f32"]).max() <= 1e-4 * scale
