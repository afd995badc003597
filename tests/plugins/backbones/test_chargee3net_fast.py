"""The fast ChargE3Net backend computes the e3nn backend's function: values, gradients, edge cases, fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdp.plugins.backbones.chargee3net import ChargE3NetBackbone
from cdp.plugins.backbones.chargee3net.fast_conv import FastE3Convolution
from cdp.plugins.featurizers.onehot import OneHot

from tests.helpers.chargee3net import _pair, _run, _structure
from tests.helpers.deepdft import graphs

TOL = {torch.float64: 1e-9, torch.float32: 1e-5}


def test_state_dicts_interchange():
    ref, fast = _pair(2)
    a, b = ref.state_dict(), fast.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert any(isinstance(m, FastE3Convolution) for m in fast.modules())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lmax", [0, 1, 2, 4])
def test_fast_equals_e3nn(lmax, dtype):
    ref, fast = _pair(lmax, mul=30 if lmax == 4 else 24, seed=lmax, dtype=dtype)
    s = _structure(seed=lmax)
    with torch.no_grad():
        la, a, _ = _run(ref, *s, dtype)
        lb, b, _ = _run(fast, *s, dtype)
    for x, y in zip(la, lb):
        assert (x - y).abs().max() <= TOL[dtype] * x.abs().max()
    assert a.shape == b.shape and torch.isfinite(b).all()
    assert (a - b).abs().max() <= TOL[dtype] * a.abs().max()


def test_gradients_equal_e3nn():
    ref, fast = _pair(2, seed=3)
    s = _structure(seed=3)
    grads = []
    for model in (ref, fast):
        model.zero_grad()
        layers, out, pos = _run(model, *s, torch.float64, requires_grad=True)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * weight).sum().backward()
        g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        g["positions"] = pos.grad.clone()
        grads.append(g)
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        scale = grads[0][k].abs().max().clamp_min(1e-12)
        assert (grads[0][k] - grads[1][k]).abs().max() <= 1e-9 * scale, k


def test_zero_length_edges_finite_values_and_gradients():
    _, fast = _pair(2, seed=4)
    numbers, pos, cell, pbc, probes = _structure(seed=4)
    probes[:3] = pos[:3]  # probes exactly on atoms
    layers, out, p = _run(fast, numbers, pos, cell, pbc, probes, torch.float64, requires_grad=True)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(p.grad).all()
    assert all(torch.isfinite(q.grad).all() for q in fast.parameters() if q.grad is not None)


def test_zero_probe_edges():
    ref, fast = _pair(1, seed=5)
    numbers, pos, cell, pbc, probes = _structure(seed=5)
    x = OneHot()(torch.as_tensor(numbers)).double()
    aei, aoff, _, _ = graphs(pos, cell, pbc, probes, fast.cutoff)
    avec = torch.randn(aei.shape[1], 3, dtype=torch.float64)
    empty = torch.zeros((2, 0), dtype=torch.long)
    none = torch.zeros((0, 3), dtype=torch.float64)
    with torch.no_grad():
        outs = [m.decode(m.encode(x, torch.as_tensor(aei), avec), empty, none, 5) for m in (ref, fast)]
        assert outs[1].shape == outs[0].shape == (5, fast.out_spec.dim)
        assert torch.allclose(outs[0], outs[1], atol=1e-12)
        # no probes at all
        assert fast.decode(fast.encode(x, torch.as_tensor(aei), avec), empty, none, 0).shape == (0, fast.out_spec.dim)
        # no atom edges either
        assert torch.isfinite(fast.encode(x, empty, none)[-1]).all()


def test_edge_chunking_equals_unchunked():
    _, fast = _pair(2, seed=6)
    s = _structure(seed=6, n_atoms=6, n_probes=40)
    results = []
    for chunk in (1, 7, 10**9):
        for m in fast.modules():
            if isinstance(m, FastE3Convolution):
                m.edge_chunk = chunk
        with torch.no_grad():
            layers, out, _ = _run(fast, *s, torch.float64)
        results.append([*layers, out])
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert (x - y).abs().max() <= 1e-12 * x.abs().max()


def test_gating_in_row_blocks_equals_whole(monkeypatch):
    import cdp.plugins.backbones.chargee3net.backbone as backbone_mod

    ref, fast = _pair(2, seed=9)
    s = _structure(seed=9, n_atoms=7, n_probes=25)
    results = []
    for rows in (10**9, 3):
        monkeypatch.setattr(backbone_mod, "_GATE_ROWS", rows)
        for model in (ref, fast):
            with torch.no_grad():
                layers, out, _ = _run(model, *s, torch.float64)
            results.append([*layers, out])
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert x.shape == y.shape
            assert (x - y).abs().max() <= 1e-9 * x.abs().max()


def test_encoder_edge_features_in_windows(monkeypatch):
    """Inference computes atom-edge harmonics/embeddings a window at a time, with unchanged results."""
    import cdp.plugins.backbones.chargee3net.fast_conv as fast_mod

    ref, fast = _pair(2, seed=10)
    s = _structure(seed=10, n_atoms=7, n_probes=20)
    with torch.no_grad():
        want = _run(ref, *s, torch.float64)
    sizes = []
    original = fast._edge_features
    monkeypatch.setattr(fast, "_edge_features", lambda basis, vec, *rest: sizes.append(vec.shape[0]) or original(basis, vec, *rest))
    for m in fast.modules():
        if isinstance(m, FastE3Convolution):
            m.edge_chunk = 4
    with torch.no_grad():
        _run(fast, *s, torch.float64)
    assert len(sizes) == 2  # fewer edges than a window: atom-edge features computed once, then the probes'
    sizes.clear()
    monkeypatch.setattr(fast_mod, "FEATURE_WINDOW", 5)
    with torch.no_grad():
        got = _run(fast, *s, torch.float64)
    for x, y in zip([*want[0], want[1]], [*got[0], got[1]]):
        assert (x - y).abs().max() <= 1e-9 * x.abs().max()
    num_atom_edges = sum(sizes[:-1]) // len(fast.atom_convs)  # the last call is the probe edges' (decoder)
    assert len(sizes) > 2 * len(fast.atom_convs) and max(sizes[:-1]) < num_atom_edges


def test_sender_packing_in_row_blocks(monkeypatch):
    """lin1 + kernel layout in blocks of rows, also for a probe batch touching a subset of the atoms."""
    import cdp.plugins.backbones.chargee3net.fast_conv as fast_mod

    ref, fast = _pair(2, seed=11)
    rng = np.random.default_rng(11)
    cell = np.diag([12.0, 11.0, 13.0])
    pos = rng.uniform(0, 1, (20, 3)) @ cell
    probes = pos[:2] + 0.3  # two probes: fewer probe edges than atoms, so only the touched atoms are packed
    s = (rng.choice([1, 6, 8], 20), pos, cell, np.array([True, True, True]), probes)
    assert 0 < graphs(pos, cell, s[3], probes, fast.cutoff)[2].shape[1] < len(pos)
    monkeypatch.setattr(fast_mod, "LIN1_ROWS", 3)
    with torch.no_grad():
        want = _run(ref, *s, torch.float64)
        got = _run(fast, *s, torch.float64)
    for x, y in zip([*want[0], want[1]], [*got[0], got[1]]):
        assert (x - y).abs().max() <= 1e-9 * x.abs().max()


def test_unsorted_and_permuted_edges():
    _, fast = _pair(1, seed=7)
    numbers, pos, cell, pbc, probes = _structure(seed=7)
    x = OneHot()(torch.as_tensor(numbers)).double()
    aei, _, pei, _ = graphs(pos, cell, pbc, probes, fast.cutoff)
    avec = torch.randn(aei.shape[1], 3, dtype=torch.float64)
    pvec = torch.randn(pei.shape[1], 3, dtype=torch.float64)
    perm_a, perm_p = torch.randperm(aei.shape[1]), torch.randperm(pei.shape[1])
    with torch.no_grad():
        la = fast.encode(x, torch.as_tensor(aei), avec)
        a = fast.decode(la, torch.as_tensor(pei), pvec, len(probes))
        lb = fast.encode(x, torch.as_tensor(aei)[:, perm_a], avec[perm_a])
        b = fast.decode(lb, torch.as_tensor(pei)[:, perm_p], pvec[perm_p], len(probes))
    assert (a - b).abs().max() <= 1e-12 * a.abs().max()


def test_unknown_backend_refused():
    from cdp.core.types import CdpError

    with pytest.raises(CdpError, match="backend"):
        ChargE3NetBackbone(mul=8, lmax=1, num_interactions=1, backend="cuda-magic")


@pytest.mark.parametrize("stem", ["charge3net_small", pytest.param("charge3net_paper", marks=pytest.mark.slow)])
def test_reference_fixtures_through_fast_backend(fixtures_dir, stem):
    import json

    from cdp.importers.charge3net import build_components, import_charge3net

    from tests.helpers.deepdft import predict

    ref_dir = fixtures_dir
    config, sd = import_charge3net(ref_dir / f"{stem}.pt", ref_dir / f"{stem}.json")
    config = {k: dict(v) for k, v in config.items()}
    config["backbone"]["backend"] = "fast"
    mods = dict(zip(("featurizer", "backbone", "readout"), build_components(config)))
    assert any(isinstance(m, FastE3Convolution) for m in mods["backbone"].modules())
    for prefix, module in mods.items():
        n = len(prefix) + 1
        module.load_state_dict({k[n:]: v for k, v in sd.items() if k.startswith(prefix + ".")}, strict=True)
        module.to(torch.float32).eval()
    meta = json.loads((ref_dir / f"{stem}.json").read_text())
    data = np.load(ref_dir / f"{stem}_cases.npz")
    for s in meta["structures"]:
        c = {k: data[f"{s}/{k}"] for k in ("numbers", "positions", "cell", "pbc", "probes", "density_f32")}
        with torch.no_grad():
            rho = predict(mods["featurizer"], mods["backbone"], mods["readout"], c["numbers"], c["positions"],
                          c["cell"], c["pbc"], c["probes"], dtype=torch.float32)
        ref = c["density_f32"].astype(np.float64)
        err = np.abs(rho.double().numpy() - ref).max() / np.abs(ref).max()
        assert err <= 2e-6, f"{stem}/{s}: {err:.3e}"  # measured ≤ 7.1e-7


def test_memory_budget_sizes_probe_batches_without_changing_results():
    from ase.build import bulk

    from cdp.core.model import DensityModel
    from cdp.predict import Predictor

    config = {"featurizer": {"name": "onehot"}, "graph": {"name": "periodic"}, "readout": {"name": "linear"},
              "backbone": {"name": "chargee3net", "num_interactions": 2, "mul": 16, "lmax": 1, "num_basis": 6,
                           "radial_neurons": 8}}
    torch.manual_seed(0)
    model = DensityModel.from_config(config)
    atoms = bulk("Si", "diamond", a=5.43)
    probes = np.random.default_rng(0).uniform(0, 1, (50, 3)) @ atoms.cell.array
    big = Predictor(model, probe_batch=1000)
    fixed, per_probe = model.backbone.probe_memory(4, 10.0)
    assert fixed >= 0 and per_probe > 0
    small = Predictor(model, max_memory=fixed + 7 * per_probe)
    assert 1 <= small.batch_for_memory(atoms) < 50
    assert small.batch_for_memory(atoms, max_memory=fixed + 10**12) > 1000
    np.testing.assert_allclose(small.predict(atoms, probes), big.predict(atoms, probes), rtol=0, atol=1e-6)


def test_max_memory_option_parsing():
    from cdp.cli.predict import parse_bytes
    from cdp.core.types import CdpError

    assert parse_bytes("2G") == 2 * 2**30 and parse_bytes("500MiB") == 500 * 2**20 and parse_bytes("4096") == 4096
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(CdpError, match="max-memory"):
            parse_bytes(bad)


def test_device_state_follows_the_input_device():
    """What inference caches outside the module's buffers follows the input's device (a GPU's blocks are
    sized by memory, not by the CPU's ``edge_chunk``); ``test_cuda_inference.py`` runs the real thing."""
    from cdp.plugins.backbones.chargee3net import fast_conv
    from cdp.plugins.backbones.chargee3net.backbone import _GatePlan

    _, fast = _pair(2)
    conv, gate = fast.probe_convs[0], fast.probe_gates[0]
    meta = torch.empty(0, device="meta")
    assert conv.block_edges(torch.empty(0)) == conv.edge_chunk
    per_edge = conv.bytes_per_edge(4) + conv.bytes_per_receiver(4) // 8
    assert conv.block_edges(meta) == max(conv.edge_chunk, fast_conv.DEVICE_BLOCK_BYTES // per_edge) > conv.edge_chunk
    # receivers without edges (probes in vacuum) are bounded by bytes too on a GPU
    assert 1 <= conv.block_receivers(meta) * conv.bytes_per_receiver(4) <= max(fast_conv.DEVICE_BLOCK_BYTES, conv.bytes_per_receiver(4))
    assert conv.block_receivers(torch.empty(0)) == conv.edge_chunk
    plan = _GatePlan(gate)
    assert all(t.device.type == "meta" for t in plan._indices(meta.device))
    x = torch.randn(3, gate.irreps_in.dim, dtype=torch.float64)
    assert torch.allclose(plan(gate, x), gate(x))
