"""ε_mae and ζ on hand-made grids whose answers are known in closed form."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from ase import Atoms

from cdp.core.types import DensityGrid
from cdp.evaluate.metrics import EpsMae, eps_mae, grid_gradient, summarize, zeta


def _grid(values, cell, pbc=True, origin=None):
    return DensityGrid(cell=np.asarray(cell, float), values=np.asarray(values, float),
                       origin=np.zeros(3) if origin is None else np.asarray(origin, float),
                       pbc=np.broadcast_to(np.asarray(pbc, bool), (3,)).copy())


def _frac_mesh(shape):
    return np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), axis=-1)


# -- ε_mae -----------------------------------------------------------------------------------------


def test_eps_mae_closed_form():
    ref = np.array([1.0, -2.0, 3.0, 0.0])
    pred = np.array([1.5, -2.0, 2.0, 0.5])
    # Σ|ρ−ρ̂| = 0.5 + 0 + 1 + 0.5 = 2; Σ|ρ| = 6
    assert eps_mae(ref, pred) == pytest.approx(100 * 2 / 6)
    assert eps_mae(ref, ref) == 0.0


def test_eps_mae_streaming_equals_one_shot():
    rng = np.random.default_rng(0)
    ref, pred = rng.normal(size=1000), rng.normal(size=1000)
    acc = EpsMae()
    for s in range(0, 1000, 37):
        acc.update(ref[s : s + 37], pred[s : s + 37])
    assert acc.value == pytest.approx(eps_mae(ref, pred), rel=1e-13)
    assert acc.count == 1000


def test_eps_mae_zero_reference_is_defined():
    z = np.zeros(5)
    assert eps_mae(z, z) == 0.0
    assert eps_mae(z, z + 1) == math.inf


def test_summary_stderr_and_single():
    vals = [1.0, 2.0, 4.0, 9.0]
    s = summarize(vals)
    assert s["mean"] == pytest.approx(4.0)
    assert s["median"] == pytest.approx(3.0)
    assert s["max"] == 9.0
    assert s["stderr"] == pytest.approx(np.std(vals, ddof=1) / 2.0)
    one = summarize([3.5])
    assert one == {"mean": 3.5, "stderr": None, "median": 3.5, "max": 3.5}
    assert summarize([])["mean"] is None


# -- gradients ---------------------------------------------------------------------------------------


def test_gradient_of_linear_field_triclinic_nonperiodic():
    cell = np.array([[4.0, 0.0, 0.0], [1.3, 3.5, 0.0], [0.7, -0.4, 5.0]])
    shape = (7, 8, 9)
    a = np.array([0.3, -1.2, 0.8])
    pts = _frac_mesh(shape) @ cell
    g = grid_gradient(pts @ a, cell, [False] * 3)
    np.testing.assert_allclose(g, np.broadcast_to(a, g.shape), atol=1e-10)


def test_gradient_of_plane_wave_triclinic_periodic():
    cell = np.array([[4.0, 0.0, 0.0], [1.3, 3.5, 0.0], [0.7, -0.4, 5.0]])
    shape = (48, 48, 48)
    k = 2 * np.pi * np.linalg.inv(cell) @ np.array([1, -1, 1])  # a reciprocal vector: periodic
    pts = _frac_mesh(shape) @ cell
    g = grid_gradient(np.sin(pts @ k), cell, [True] * 3)
    exact = np.cos(pts @ k)[..., None] * k
    assert np.abs(g - exact).max() < 0.01 * np.linalg.norm(k)


# -- ζ -----------------------------------------------------------------------------------------------


def test_zeta_radial_gaussian_is_zero():
    L, n = 8.0, 48
    cell = np.eye(3) * L
    centre = np.array([4.1, 3.9, 4.0])
    pts = _frac_mesh((n,) * 3) @ cell
    rho = np.exp(-np.sum((pts - centre) ** 2, axis=-1) / (2 * 0.8**2))
    atoms = Atoms("O", positions=[centre], cell=cell, pbc=True)
    assert abs(zeta(_grid(rho, cell), atoms)) < 5e-3


def test_zeta_radial_gaussian_across_periodic_boundary():
    """Centred on a corner atom, half the Gaussian sits across the boundary: only the minimum image sees it radial."""
    L, n = 8.0, 40
    cell = np.eye(3) * L
    pts = _frac_mesh((n,) * 3) @ cell
    d = pts - np.round(pts / L) * L  # minimum-image vector to the corner atom at the origin
    rho = np.exp(-np.sum(d**2, axis=-1) / (2 * 0.8**2))
    atoms = Atoms("O", positions=[[0.0, 0.0, 0.0]], cell=cell, pbc=True)
    assert abs(zeta(_grid(rho, cell), atoms)) < 5e-3
    # treated as a molecule (no wrap), the same grid is far from radial
    assert zeta(_grid(rho, cell, pbc=False), atoms) > 0.05


def test_zeta_plane_wave_along_r_hat_is_zero():
    """ρ = cos(2πx/L) sampled on the line through the atom parallel to x: ∇ρ ∥ r̂ at every point."""
    L = 6.0
    cell = np.diag([L, 2.0, 2.0])
    shape = (30, 1, 1)
    x = np.arange(30) / 30 * L
    atoms = Atoms("C", positions=[[0.1, 0.0, 0.0]], cell=cell, pbc=True)
    assert zeta(_grid(np.cos(2 * np.pi * x / L).reshape(shape), cell), atoms) == pytest.approx(0.0, abs=1e-12)


def test_zeta_plane_wave_perpendicular_to_r_hat_is_one():
    """ρ = cos(2πx/L); each grid plane x = L/4, 3L/4 holds its own atom, nearer than the other plane: r̂ ⟂ ∇ρ."""
    L = 20.0
    cell = np.diag([L, 4.0, 4.0])
    shape = (4, 6, 6)
    pts = _frac_mesh(shape) @ cell
    rho = np.cos(2 * np.pi * pts[..., 0] / L)
    atoms = Atoms("HH", positions=[[L / 4, 1.1, 2.3], [3 * L / 4, 0.4, 3.1]], cell=cell, pbc=True)
    assert zeta(_grid(rho, cell), atoms) == pytest.approx(1.0, abs=1e-12)


def test_zeta_matches_brute_force_minimum_image_triclinic():
    cell = np.array([[5.0, 0.0, 0.0], [2.6, 4.2, 0.0], [1.1, 0.9, 4.6]])
    shape = (12, 11, 10)
    rng = np.random.default_rng(3)
    atoms = Atoms("SiOO", scaled_positions=rng.uniform(size=(3, 3)), cell=cell, pbc=True)
    k = 2 * np.pi * np.linalg.inv(cell) @ np.array([1, 0, 0])
    pts = _frac_mesh(shape) @ cell
    rho = np.cos(pts @ k) + 2.0
    grad = grid_gradient(rho, cell, [True] * 3).reshape(-1, 3)
    # brute force: every image within ±3 cells
    shifts = np.array(list(itertools.product(range(-3, 4), repeat=3))) @ cell
    images = (atoms.positions[None] + shifts[:, None]).reshape(-1, 3)
    p = pts.reshape(-1, 3)
    vec = images[None] - p[:, None]
    best = vec[np.arange(len(p)), np.argmin(np.linalg.norm(vec, axis=-1), axis=1)]
    rhat = best / np.linalg.norm(best, axis=1, keepdims=True)
    expected = 1 - np.abs((grad * rhat).sum(1)).sum() / np.linalg.norm(grad, axis=1).sum()
    assert zeta(_grid(rho, cell), atoms, block=97) == pytest.approx(expected, rel=1e-12)


def test_zeta_of_constant_density_is_zero():
    cell = np.eye(3) * 3.0
    atoms = Atoms("H", positions=[[1.0, 1.0, 1.0]], cell=cell, pbc=True)
    assert zeta(_grid(np.full((5, 5, 5), 0.7), cell), atoms) == 0.0
    assert zeta(_grid(np.full((5, 5, 5), 0.7), cell, pbc=False), atoms) == 0.0
