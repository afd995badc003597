"""invdeepdft / equideepdft predict an invariant density: rotations (proper and improper), translations,
atom permutations, equivalent periodic cells, thin cells vs their supercells; zero-length and missing
edges stay finite with finite gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdp.importers.deepdft import build_components, model_config

from tests.helpers.deepdft import predict
from tests.helpers.geometry import _random_rotation

CUTOFF = 4.0


def _model(painn: bool, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = model_config({"num_interactions": 2, "node_size": 8, "cutoff": CUTOFF, "use_painn_model": painn})
    mods = build_components(cfg)
    with torch.no_grad():  # perturb every parameter so that all paths (incl. zero-initialised ones) contribute
        for m in mods:
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return tuple(m.to(dtype) for m in mods)


def _crystal(rng):
    cell = np.array([[4.1, 0.0, 0.0], [0.9, 3.8, 0.0], [0.6, -0.7, 4.4]])
    frac = rng.uniform(size=(4, 3))
    numbers = np.array([3, 8, 27, 8])
    probes = rng.uniform(size=(12, 3)) @ cell
    probes[0] = frac[1] @ cell  # a probe exactly on an atom
    return numbers, frac @ cell, cell, np.array([True, True, True]), probes


def _molecule(rng):
    pos = rng.normal(scale=1.2, size=(5, 3))
    probes = rng.normal(scale=1.5, size=(10, 3))
    probes[0] = pos[2]
    return np.array([6, 1, 1, 8, 1]), pos, np.zeros((3, 3)), np.array([False, False, False]), probes


def _rel(a, b):
    a, b = a.detach().numpy(), b.detach().numpy()
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.fixture(params=[False, True], ids=["invdeepdft", "equideepdft"])
def model(request):
    return _model(request.param)


@pytest.mark.parametrize("make", [_crystal, _molecule], ids=["crystal", "molecule"])
@pytest.mark.parametrize("improper", [False, True], ids=["proper", "improper"])
def test_rotation_translation_permutation(model, make, improper):
    rng = np.random.default_rng(1)
    numbers, pos, cell, pbc, probes = make(rng)
    with torch.no_grad():
        ref = predict(*model, numbers, pos, cell, pbc, probes)
        q = _random_rotation(rng, improper)
        t = rng.normal(size=3)
        perm = rng.permutation(len(numbers))
        out = predict(*model, numbers[perm], pos[perm] @ q.T + t, cell @ q.T, pbc, probes @ q.T + t)
    assert torch.isfinite(ref).all()
    assert _rel(out, ref) <= 1e-9


def test_equivalent_cell_choice(model):
    rng = np.random.default_rng(2)
    numbers, pos, cell, pbc, probes = _crystal(rng)
    m = np.array([[1, 1, 0], [0, 1, 0], [-1, 0, 1]])  # unimodular: same lattice, other basis
    assert round(abs(np.linalg.det(m))) == 1
    new_cell = m @ cell
    shifted = pos + rng.integers(-2, 3, size=pos.shape) @ cell  # atoms moved by lattice vectors
    probes2 = probes + rng.integers(-1, 2, size=probes.shape) @ cell
    with torch.no_grad():
        ref = predict(*model, numbers, pos, cell, pbc, probes)
        out = predict(*model, numbers, shifted, new_cell, pbc, probes2)
    assert _rel(out, ref) <= 1e-9


@pytest.mark.parametrize("pbc", [[True, True, True], [True, False, True]], ids=["3d", "slab"])
def test_thin_cell_matches_supercell(model, pbc):
    """A cell 1.3 Å high along c (< cutoff) describes the same crystal as its ×1×1×4 supercell."""
    rng = np.random.default_rng(3)
    cell = np.array([[3.2, 0.0, 0.0], [0.4, 2.9, 0.0], [0.3, 0.2, 1.3]])
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.45, 0.5]])
    numbers = np.array([14, 6])
    pos = frac @ cell
    probes = rng.uniform(size=(10, 3)) @ cell
    probes[0] = pos[1]
    pbc = np.array(pbc)
    reps = 4
    sc_cell = cell * np.array([[1], [1], [reps]])
    sc_pos = np.concatenate([pos + k * cell[2] for k in range(reps)])
    sc_numbers = np.tile(numbers, reps)
    with torch.no_grad():
        thin = predict(*model, numbers, pos, cell, pbc, probes)
        sup = predict(*model, sc_numbers, sc_pos, sc_cell, pbc, probes)
    assert _rel(thin, sup) <= 1e-9


def test_float32_invariance(model):
    rng = np.random.default_rng(4)
    numbers, pos, cell, pbc, probes = _crystal(rng)
    m32 = tuple(m.to(torch.float32) for m in model)
    q = _random_rotation(rng, improper=True)
    with torch.no_grad():
        ref = predict(*m32, numbers, pos, cell, pbc, probes, dtype=torch.float32)
        out = predict(*m32, numbers, pos @ q.T, cell @ q.T, pbc, probes @ q.T, dtype=torch.float32)
    assert out.dtype == torch.float32
    assert _rel(out, ref) <= 1e-5


def test_zero_length_and_missing_edges_are_finite(model):
    """A probe on an atom (zero-length edge), a probe with no atom in range, and an isolated atom."""
    numbers = np.array([6, 8, 1])
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [30.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    probes = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [0.5, 0.3, -0.2], [-15.0, 0.0, 0.0]],
                          dtype=torch.float64, requires_grad=True)
    rho = predict(*model, numbers, pos, np.zeros((3, 3)), [False] * 3, probes)
    assert torch.isfinite(rho).all()
    rho.sum().backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(probes.grad).all()
    for m in model:
        for name, p in m.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_no_probe_edges_at_all(model):
    """Every probe out of range: empty probe-edge set, finite output and gradients."""
    numbers = np.array([6, 8])
    pos = np.array([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]])
    probes = torch.tensor([[20.0, 0.0, 0.0], [0.0, -20.0, 0.0]], dtype=torch.float64, requires_grad=True)
    rho = predict(*model, numbers, pos, np.zeros((3, 3)), [False] * 3, probes)
    assert rho.shape == (2,) and torch.isfinite(rho).all()
    rho.sum().backward()
    assert torch.isfinite(probes.grad).all()
    empty = predict(*model, numbers, pos, np.zeros((3, 3)), [False] * 3, np.zeros((0, 3)))
    assert empty.shape == (0,)


def test_mlp_readout_refuses_irreps_and_unknown_activation():
    from cdp.core.components import Spec
    from cdp.core.types import CdpError
    from cdp.plugins.readouts.mlp import MLPReadout

    with pytest.raises(CdpError, match="plain"):
        MLPReadout(in_spec=Spec(irreps="8x0e+4x1o"), activation="silu")
    with pytest.raises(CdpError, match="activation"):
        MLPReadout(in_spec=Spec(size=8), activation="relu")
    head = MLPReadout(in_spec=Spec(size=8), activation="ssp", spin=True)
    assert head(torch.zeros(3, 8)).shape == (3, 2)
    assert MLPReadout(in_spec=Spec(size=8), activation="silu")(torch.zeros(0, 8)).shape == (0,)
