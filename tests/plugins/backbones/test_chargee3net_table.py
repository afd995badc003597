"""Tabulated radial networks (the default for ChargE3Net CPU inference) against the radial MLPs.

The table path must give the MLP path's densities within 1e-6 of max |ρ|: exactly so in float64 (where
only the interpolation differs), and in float32 adding at most that to float32's own rounding (the float32
MLP itself is ~1e-6 of max |ρ| away from float64 on the paper model).  Tables never run under autograd,
in training mode or after training until ``tabulate()``, and are rebuilt when parameters change.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from cdp.core.model import DensityModel
from cdp.core.registry import get_registry
from cdp.core.types import CdpError
from cdp.importers.charge3net import import_charge3net_components
from cdp.plugins.backbones.chargee3net import ChargE3NetBackbone
from cdp.plugins.backbones.chargee3net import backbone as backbone_mod
from cdp.plugins.backbones.chargee3net.fast_conv import FastE3Convolution
from tests.helpers.chargee3net import _pair, _run, _structure
from tests.helpers.deepdft import graphs, predict
from tests.helpers.paths import FIXTURES as REF

TOL = 1e-6  # of max |ρ|


def _densities(backbone, run):
    """{(dtype, radial): output} for float64/float32 through tables and MLPs (backbone in eval mode)."""
    out = {}
    for dtype in (torch.float64, torch.float32):
        backbone.to(dtype)
        for radial in ("table", "mlp"):
            backbone.radial = radial
            with torch.no_grad():
                out[(dtype, radial)] = run(dtype).double()
    backbone.radial = "table"
    return out


def _check(out):
    truth = out[(torch.float64, "mlp")]
    scale = float(truth.abs().max())
    assert float((out[(torch.float64, "table")] - truth).abs().max()) <= TOL * scale
    rounding = float((out[(torch.float32, "mlp")] - truth).abs().max())
    assert float((out[(torch.float32, "table")] - truth).abs().max()) <= rounding + TOL * scale
    assert not torch.equal(out[(torch.float64, "table")], truth)  # the table path did run


@functools.lru_cache(maxsize=None)
def _imported(stem: str):
    _, _, modules = import_charge3net_components(REF / f"{stem}.pt", REF / f"{stem}.json")
    return tuple(m.eval() for m in modules)


@pytest.mark.parametrize("stem", ["charge3net_small", pytest.param("charge3net_paper", marks=pytest.mark.slow)])
def test_reference_fixtures_through_tables(fixtures_dir, stem, monkeypatch):
    monkeypatch.setattr(backbone_mod, "TORCH_TABLE_MAX_BYTES", None)
    monkeypatch.setattr(backbone_mod, "AUTO_TABLE_DTYPES", (torch.float32, torch.float64))  # every convolution tabulated
    featurizer, backbone, readout = _imported(stem)
    data = np.load(REF / f"{stem}_cases.npz")
    structure = "licoo2_triclinic"
    c = {k: data[f"{structure}/{k}"] for k in ("numbers", "positions", "cell", "pbc", "probes")}
    try:
        out = _densities(backbone, lambda dtype: predict(featurizer.to(dtype), backbone, readout.to(dtype), c["numbers"],
                                                         c["positions"], c["cell"], c["pbc"], c["probes"], dtype=dtype))
    finally:
        for m in (featurizer, backbone, readout):
            m.to(torch.float32)
    _check(out)
    assert all("radial=table" in conv.extra_repr() for conv in backbone.probe_convs)


@pytest.mark.parametrize("preset", ["chargee3net-cpu", pytest.param("chargee3net", marks=pytest.mark.slow)])
def test_presets_through_tables_near_zero_and_at_the_cutoff(preset, monkeypatch):
    """Every preset (seeded weights) at probe edges of length 0, 1e-7, random, cutoff − 1e-6 and the cutoff."""
    monkeypatch.setattr(backbone_mod, "TORCH_TABLE_MAX_BYTES", None)
    monkeypatch.setattr(backbone_mod, "AUTO_TABLE_DTYPES", (torch.float32, torch.float64))
    torch.manual_seed(0)
    model = DensityModel.from_config(get_registry().preset(preset)).eval()
    backbone = model.backbone
    backbone.read_only(None)  # every output channel is compared, not only those the readout reads
    numbers, pos, cell, pbc, _ = _structure(seed=2, n_atoms=3)
    cutoff = backbone.cutoff
    rng = np.random.default_rng(3)
    lengths = np.concatenate([[0.0, 1e-7, cutoff - 1e-6, cutoff], rng.uniform(0, cutoff, 40)])
    directions = rng.standard_normal((len(lengths), 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    vec64 = torch.tensor(directions * lengths[:, None])
    senders = torch.as_tensor(rng.integers(0, len(numbers), len(lengths)))
    receivers = torch.as_tensor(rng.integers(0, 12, len(lengths)))
    edge_index = torch.stack([senders, receivers])

    def run(dtype):
        x = model.featurizer(torch.as_tensor(numbers)).to(dtype)
        aei, aoff, _, _ = graphs(pos, cell, pbc, pos[:1], cutoff)
        p, c = torch.tensor(pos, dtype=dtype), torch.tensor(cell, dtype=dtype)
        aei = torch.as_tensor(aei)
        avec = p[aei[1]] - (p[aei[0]] + torch.as_tensor(aoff, dtype=dtype) @ c)
        layers = backbone.encode(x, aei, avec)
        probes = backbone.decode(layers, edge_index, vec64.to(dtype), 12)
        return torch.cat([probes.reshape(-1), torch.cat(layers, dim=1).reshape(-1)])

    _check(_densities(backbone, run))


def test_never_under_autograd_training_mode_or_after_training(monkeypatch):
    _, fast = _pair(2, seed=7)
    fast.eval()
    s = _structure(seed=7)
    calls = []
    original = FastE3Convolution.radial_table
    monkeypatch.setattr(backbone_mod, "TORCH_TABLE_MAX_BYTES", None)
    monkeypatch.setattr(backbone_mod, "AUTO_TABLE_DTYPES", (torch.float32, torch.float64))
    monkeypatch.setattr(FastE3Convolution, "radial_table", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    _, grad_out, _ = _run(fast, *s, torch.float64, requires_grad=True)  # autograd: MLPs
    assert calls == []
    with torch.no_grad():
        _, table_out, _ = _run(fast, *s, torch.float64)
    assert len(calls) == len(fast.atom_convs) + len(fast.probe_convs)
    assert (table_out - grad_out.detach()).abs().max() <= 1e-6 * grad_out.abs().max()
    fast.train()  # training drops the tables and keeps them off, in eval mode too, until tabulate()
    assert all(not conv.__dict__.get("_radial_tables") for conv in fast.probe_convs)
    fast.eval()
    calls.clear()
    with torch.no_grad():
        _, mlp_out, _ = _run(fast, *s, torch.float64)
    assert calls == [] and (mlp_out - grad_out.detach()).abs().max() <= 1e-12 * grad_out.abs().max()
    assert not torch.equal(mlp_out, table_out)
    fast.tabulate()
    assert len(calls) == len(fast.atom_convs) + len(fast.probe_convs)
    with torch.no_grad():
        _, again, _ = _run(fast, *s, torch.float64)
    assert torch.equal(again, table_out)


def test_training_gradients_unchanged_by_tables():
    """An optimiser's gradients with radial="table" equal those with radial="mlp" exactly (tables unused)."""
    grads = []
    for radial in ("table", "mlp"):
        _, fast = _pair(2, seed=8)
        fast.radial = radial
        fast.eval()
        with torch.no_grad():  # a table built before training must not leak into it
            _run(fast, *_structure(seed=8), torch.float64)
        fast.train()
        _, out, pos = _run(fast, *_structure(seed=8), torch.float64, requires_grad=True)
        out.square().sum().backward()
        grads.append([p.grad.clone() for p in fast.parameters()] + [pos.grad.clone()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_tables_follow_parameter_changes_and_leave_the_state_dict_alone(monkeypatch):
    monkeypatch.setattr(backbone_mod, "TORCH_TABLE_MAX_BYTES", None)
    monkeypatch.setattr(backbone_mod, "AUTO_TABLE_DTYPES", (torch.float32, torch.float64))
    ref, fast = _pair(1, seed=9)
    fast.eval()
    keys = list(fast.state_dict())
    s = _structure(seed=9)
    with torch.no_grad():
        _run(fast, *s, torch.float64)
        assert list(fast.state_dict()) == keys
        state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in ref.state_dict().items()}
        fast.load_state_dict(state)  # new radial weights: the tables are stale
        _, out, _ = _run(fast, *s, torch.float64)
        fast.radial = "mlp"
        _, want, _ = _run(fast, *s, torch.float64)
    assert (out - want).abs().max() <= TOL * want.abs().max()
    assert not torch.equal(out, want)


def test_float64_reads_tables_only_once_asked_for():
    """A table is exact to float32 rounding: float64 inference keeps the MLPs (bit for bit the autograd
    path's function) until ``tabulate(torch.float64)``."""
    _, fast = _pair(1, seed=12)
    fast.eval()
    s = _structure(seed=12)
    with torch.no_grad():
        _, mlp, _ = _run(fast, *s, torch.float64)
        fast.radial = "mlp"
        _, want, _ = _run(fast, *s, torch.float64)
        assert torch.equal(mlp, want)
        fast.radial = "table"
        fast.tabulate(torch.float64)
        _, table, _ = _run(fast, *s, torch.float64)
    assert not torch.equal(table, want) and (table - want).abs().max() <= TOL * want.abs().max()
    assert {torch.float32, torch.float64} <= set(backbone_mod.AUTO_TABLE_DTYPES) | fast._table_dtypes


def test_radial_options_refused_with_one_line():
    with pytest.raises(CdpError, match="unknown radial 'spline'"):
        ChargE3NetBackbone(mul=8, lmax=1, radial="spline")
    with pytest.raises(CdpError, match="radial_rtol"):
        ChargE3NetBackbone(mul=8, lmax=1, radial_rtol=0.5)


def test_a_basis_that_cannot_be_tabulated_keeps_the_mlp():
    """The Bessel basis is 0/0 at r = 0: no table, the MLP runs, and extra_repr says why."""
    torch.manual_seed(0)
    backbone = ChargE3NetBackbone(num_interactions=1, mul=8, lmax=1, num_basis=4, basis="bessel").eval()
    backbone.tabulate()
    assert all("radial=mlp (not tabulated: the radial network is not finite" in conv.extra_repr()
               for conv in backbone.probe_convs)
    assert all(f.func is backbone_mod._mlp_weights
               for f in backbone._radials(backbone.probe_convs, backbone.probe_basis, torch.zeros(1)))


def test_tables_too_large_for_cache_keep_the_mlp(monkeypatch):
    """Evaluated in PyTorch, a table above TORCH_TABLE_MAX_BYTES is slower than the MLP: that convolution
    keeps its MLP (and says so), the others use their tables."""
    _, fast = _pair(2, seed=11)
    fast.eval()
    fast.radial_rtol = 1e-4  # 64 intervals are enough for the narrowest
    for conv in list(fast.atom_convs) + list(fast.probe_convs):
        conv.use_native = False  # the PyTorch seam: tables are evaluated in PyTorch
    widths = [conv.radial_width() for conv in fast.probe_convs]
    assert max(widths) > min(widths)
    limit = 64 * 4 * 8 * max(widths) - 1  # 64 float64 intervals of the narrowest fit, of the widest not
    monkeypatch.setattr(backbone_mod, "TORCH_TABLE_MAX_BYTES", limit)
    monkeypatch.setattr(backbone_mod, "AUTO_TABLE_DTYPES", (torch.float32, torch.float64))
    fast.tabulate()
    reports = [conv.extra_repr() for conv in fast.probe_convs]
    narrow, wide = widths.index(min(widths)), widths.index(max(widths))
    assert reports[narrow].startswith("radial=table(")
    assert reports[wide] == f"radial=mlp (not tabulated: 64 intervals would exceed {limit >> 10} KiB)"
    s = _structure(seed=11)
    with torch.no_grad():
        _, got, _ = _run(fast, *s, torch.float64)
        fast.radial = "mlp"
        _, want, _ = _run(fast, *s, torch.float64)
    assert (got - want).abs().max() <= 1e-3 * want.abs().max() and not torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_reads_tables_of_any_size(monkeypatch, dtype):
    """Where the fused kernel runs, it evaluates each edge's weights from the table itself (no [E, W] array,
    no size limit): every convolution is tabulated, and the densities equal the MLP path's."""
    from cdp.plugins.backbones.chargee3net import fast_conv

    _, fast = _pair(3, seed=5, dtype=dtype)
    fast.eval()
    monkeypatch.setattr(backbone_mod, "TORCH_TABLE_MAX_BYTES", 1)  # nothing fits PyTorch's limit
    fast.tabulate(dtype)
    like = torch.empty(0, dtype=dtype)
    radials = fast._radials(fast.probe_convs, fast.probe_basis, like)
    assert all(isinstance(r, fast_conv.KernelTable) for r in radials)
    s = _structure(seed=5)
    with torch.no_grad():
        _, got, _ = _run(fast, *s, dtype)
        fast.radial = "mlp"
        _, want, _ = _run(fast, *s, dtype)
    tol = 1e-6 if dtype == torch.float64 else 3e-6
    assert (got - want).abs().max() <= tol * want.abs().max() and not torch.equal(got, want)
