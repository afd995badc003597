"""ChargE3Net symmetry and robustness: invariance of the density under the Euclidean group, atom
relabelling and the choice of periodic cell; finite values and gradients for degenerate geometry.

Small random models (the function class is the same as the paper's); random structures keep every
atom–atom and probe–atom distance away from the cutoff sphere, where the published model (no envelope)
is discontinuous.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cdp.plugins.backbones.chargee3net import ChargE3NetBackbone, get_irreps
from cdp.plugins.featurizers.onehot import OneHot
from cdp.plugins.readouts.e3nn_linear import LinearReadout, LinearSpinCompatReadout, LinearSpinReadout

from tests.helpers.deepdft import predict

CUTOFF = 3.0
HEADS = {"linear": LinearReadout, "linear-spin": LinearSpinReadout, "linear-spin-compat": LinearSpinCompatReadout}
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}  # measured 5.5e-15 and 1.6e-6


@functools.lru_cache(maxsize=None)
def _model(head: str = "linear", lmax: int = 2, dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    backbone = ChargE3NetBackbone(num_interactions=2, num_neighbors=8, mul=24, lmax=lmax, cutoff=CUTOFF, num_basis=8)
    readout = HEADS[head](in_spec=backbone.out_spec)
    with torch.no_grad():  # every readout channel sees non-zero weights
        for p in readout.parameters():
            p.normal_()
    return [m.to(dtype).eval() for m in (OneHot(), backbone, readout)]


def _images(cell, pbc, reach):
    ranges = [range(-reach, reach + 1) if p else range(1) for p in pbc]
    return np.array(list(itertools.product(*ranges)), float) @ np.asarray(cell, float)


def _clear_of_cutoff(pos, probes, cell, pbc, margin=1e-3) -> bool:
    shifts = _images(cell, pbc, 3)
    for targets in (pos, probes):
        d = np.linalg.norm(targets[:, None, None, :] - (pos[None, :, None, :] + shifts[None, None]), axis=-1)
        if np.any(np.abs(d - CUTOFF) < margin):
            return False
    return True


def _structure(seed: int, periodic: bool = True, n_atoms: int = 4, n_probes: int = 10):
    rng = np.random.default_rng(seed)
    while True:
        if periodic:
            cell = np.diag(rng.uniform(3.2, 4.2, 3)) + rng.uniform(-0.6, 0.6, (3, 3)) * (1 - np.eye(3))
            pos = rng.uniform(0, 1, (n_atoms, 3)) @ cell
            probes = rng.uniform(0, 1, (n_probes, 3)) @ cell
            pbc = np.array([True, True, True])
        else:
            cell = np.zeros((3, 3))
            pos = rng.uniform(0, 3.0, (n_atoms, 3))
            probes = rng.uniform(-0.5, 3.5, (n_probes, 3))
            pbc = np.array([False, False, False])
        numbers = rng.integers(1, 30, n_atoms)
        if _clear_of_cutoff(pos, probes, cell, pbc):
            return numbers, pos, cell, pbc, probes


def _rho(mods, numbers, pos, cell, pbc, probes, dtype):
    with torch.no_grad():
        return predict(*mods, numbers, pos, cell, pbc, probes, dtype=dtype).double().numpy()


def _assert_same(a, b, dtype, what):
    err = np.abs(a - b).max() / np.abs(a).max()
    assert err <= TOL[dtype], f"{what}: relative change {err:.3e} > {TOL[dtype]}"


DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("periodic", [True, False])
def test_rotation(dtype, head, periodic):
    mods = _model(head, dtype=dtype)
    numbers, pos, cell, pbc, probes = _structure(1 if periodic else 2, periodic)
    ref = _rho(mods, numbers, pos, cell, pbc, probes, dtype)
    rot = Rotation.random(random_state=3).as_matrix()
    mats = [rot] if head == "linear-spin-compat" else [rot, -rot]  # the compat head's 0o channel is not O(3)-invariant
    for r in mats:
        out = _rho(mods, numbers, pos @ r.T, cell @ r.T, pbc, probes @ r.T, dtype)
        _assert_same(ref, out, dtype, f"{head} det={np.linalg.det(r):+.0f}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_translation_and_permutation(dtype):
    mods = _model(dtype=dtype)
    for periodic in (True, False):
        numbers, pos, cell, pbc, probes = _structure(4, periodic)
        ref = _rho(mods, numbers, pos, cell, pbc, probes, dtype)
        t = np.array([0.37, -1.21, 2.05])
        _assert_same(ref, _rho(mods, numbers, pos + t, cell, pbc, probes + t, dtype), dtype, "translation")
        perm = np.random.default_rng(5).permutation(len(numbers))
        _assert_same(ref, _rho(mods, numbers[perm], pos[perm], cell, pbc, probes, dtype), dtype, "permutation")


@pytest.mark.parametrize("dtype", DTYPES)
def test_equivalent_cells_and_images(dtype):
    mods = _model(dtype=dtype)
    numbers, pos, cell, pbc, probes = _structure(6, True)
    ref = _rho(mods, numbers, pos, cell, pbc, probes, dtype)
    u = np.array([[1, 1, 0], [0, 1, 0], [-1, 0, 1]])  # unimodular: the same lattice
    assert round(abs(np.linalg.det(u))) == 1
    _assert_same(ref, _rho(mods, numbers, pos, u @ cell, pbc, probes, dtype), dtype, "equivalent cell vectors")
    moved = pos.copy()
    moved[0] += np.array([1, -2, 1]) @ cell
    moved[2] -= cell[1]
    _assert_same(ref, _rho(mods, numbers, moved, cell, pbc, probes, dtype), dtype, "atom moved to a periodic image")
    shifted = probes + np.array([0, 1, -1]) @ cell
    _assert_same(ref, _rho(mods, numbers, pos, cell, pbc, shifted, dtype), dtype, "probe moved to a periodic image")


@pytest.mark.parametrize("lmax", [0, 1, 3])
def test_any_lmax_is_invariant(lmax):
    mods = _model(lmax=lmax)
    numbers, pos, cell, pbc, probes = _structure(7, True, n_probes=6)
    ref = _rho(mods, numbers, pos, cell, pbc, probes, torch.float64)
    assert np.all(np.isfinite(ref)) and np.abs(ref).max() > 0
    r = -Rotation.random(random_state=8).as_matrix()
    _assert_same(ref, _rho(mods, numbers, pos @ r.T, cell @ r.T, pbc, probes @ r.T, torch.float64), torch.float64, f"lmax={lmax}")


def test_channel_budget_rule():
    assert str(get_irreps(500, 4)) == "100x0o+100x0e+33x1o+33x1e+20x2o+20x2e+14x3o+14x3e+11x4o+11x4e"
    assert get_irreps(500, 4).dim == 992


def test_zero_length_edges_finite_with_finite_gradients():
    mods = _model()
    numbers, pos, cell, pbc, probes = _structure(9, True, n_probes=4)
    probes = np.concatenate([pos[:2], probes])  # two probes exactly on atoms
    pos = np.concatenate([pos, pos[:1]])  # and two atoms on the same site
    numbers = np.concatenate([numbers, [8]])
    p = torch.tensor(pos, requires_grad=True)
    q = torch.tensor(probes, requires_grad=True)
    rho = predict(*mods, numbers, p, cell, pbc, q, dtype=torch.float64)
    assert torch.isfinite(rho).all()
    rho.sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


def test_probe_without_neighbours_and_graph_without_edges():
    mods = _model()
    numbers = np.array([6])
    pos = np.zeros((1, 3))
    probes = np.array([[50.0, 0.0, 0.0], [0.3, 0.2, 0.1]])  # first probe has no atom within the cutoff
    out = _rho(mods, numbers, pos, np.zeros((3, 3)), np.zeros(3, bool), probes, torch.float64)
    assert out.shape == (2,) and np.all(np.isfinite(out))
    # an isolated probe sees nothing of the structure: same value for another structure
    other = _rho(mods, np.array([8, 1]), np.array([[0, 0, 0], [0.9, 0, 0]]), np.zeros((3, 3)), np.zeros(3, bool),
                 probes[:1], torch.float64)
    assert other.shape == (1,) and abs(other[0] - out[0]) <= 1e-12 * max(1.0, abs(out[0]))


def test_spin_heads_shape_and_single_probe():
    for head in ("linear-spin", "linear-spin-compat"):
        mods = _model(head)
        numbers, pos, cell, pbc, probes = _structure(10, True, n_probes=1)
        out = _rho(mods, numbers, pos, cell, pbc, probes, torch.float64)
        assert out.shape == (1, 2) and np.all(np.isfinite(out))
    out = _rho(_model("linear"), numbers, pos, cell, pbc, probes, torch.float64)
    assert out.shape == (1,)


def test_compat_head_is_up_plus_down_and_up_minus_down():
    torch.manual_seed(1)
    head = LinearSpinCompatReadout(in_spec="4x0e+3x0o+2x1o")
    with torch.no_grad():
        head.linear.weight.normal_()
    x = torch.randn(5, head.linear.irreps_in.dim)
    raw = head.linear(x)
    out = head(x)
    assert torch.allclose(out[:, 0], raw[:, 0] + raw[:, 1]) and torch.allclose(out[:, 1], raw[:, 0] - raw[:, 1])
