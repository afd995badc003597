"""cdp.dft: PySCF initial guesses from a predicted density (units, electron count, Hartree fit, convergence)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

pytest.importorskip("pyscf")

from cdp.core.types import CdpError  # noqa: E402
from cdp.data.molecules import BOHR  # noqa: E402
from cdp.dft import atoms_from_mol, density_guess, initial_guess, recipe_mf, recipe_mol  # noqa: E402
from cdp.dft.guess import _auxmol, coulomb_fit, predict_density  # noqa: E402


class Oracle:
    """PySCF's converged density matrix evaluated at the points: ρ (e/Å³) and ∇ρ (e/Å⁴), as a model would give."""

    def __init__(self, mol, dm):
        self.mol, self.dm = mol, dm

    def predict_with_gradient(self, atoms, points):
        from pyscf.dft import numint

        ao = numint.eval_ao(self.mol, np.asarray(points) / BOHR, deriv=1)
        r = numint.eval_rho(self.mol, ao, self.dm, xctype="GGA")
        return r[0] / BOHR**3, r[1:].T / BOHR**4

    def predict(self, atoms, points):
        return self.predict_with_gradient(atoms, points)[0]


class OracleNoGradient:
    """The same density through ``predict`` only, so that ∇ρ comes from central differences."""

    def __init__(self, mol, dm):
        self.oracle = Oracle(mol, dm)

    def predict(self, atoms, points):
        return self.oracle.predict(atoms, points)


@pytest.fixture(scope="module")
def water():
    mol = recipe_mol(molecule("H2O"))
    mf = recipe_mf(mol)
    mf.kernel()
    assert mf.converged
    return mol, mf


def test_oracle_guess_converges_at_once(water):
    mol, ref = water
    mf = recipe_mf(mol)
    guess = density_guess(mf, Oracle(mol, ref.make_rdm1()))
    info = guess.info
    assert info.gradient_method == "given"
    assert abs(info.electrons_predicted - 8.0) < 1e-3  # units right: e/Å³ -> e/Bohr³ at Bohr -> Å points
    assert info.rescaled and abs(info.scale * info.electrons_predicted - 8.0) < 1e-12
    s = mf.get_ovlp()
    assert abs(np.trace(guess.dm0 @ s) - mol.nelectron) < 1e-8
    assert abs(info.electrons_dm - 8.0) < 1e-8
    assert np.abs(guess.dm0 - ref.make_rdm1()).max() < 1e-3
    mf.kernel(dm0=guess.dm0)
    assert mf.converged and mf.cycles <= 3
    assert abs(mf.e_tot - ref.e_tot) < 1e-7


def test_finite_difference_gradient_from_predict_only(water):
    mol, ref = water
    mf = recipe_mf(mol)
    guess = density_guess(mf, OracleNoGradient(mol, ref.make_rdm1()))
    assert guess.info.gradient_method.startswith("finite-difference")
    mf.kernel(dm0=guess.dm0)
    assert mf.converged and mf.cycles <= 3


def test_coulomb_fit_of_grid_density_matches_analytic_projection(water):
    from pyscf.df import incore
    from pyscf.dft import numint

    mol, mf = water
    aux = _auxmol(mf)
    dm = mf.make_rdm1()
    b_exact = np.einsum("ijP,ij->P", incore.aux_e2(mol, aux, intor="int3c2e"), dm)  # (P|ρ) analytically
    coords, weights = mf.grids.coords, mf.grids.weights
    rho = numint.eval_rho(mol, numint.eval_ao(mol, coords), dm)
    c = coulomb_fit(mol, aux, coords, weights, rho)
    b = aux.intor("int2c2e") @ c
    assert np.abs(b - b_exact).max() < 1e-4 * np.abs(b_exact).max()


def test_no_rescale_is_recorded(water):
    mol, ref = water
    scaled = Oracle(mol, 0.9 * ref.make_rdm1())  # 7.2 electrons
    g = density_guess(recipe_mf(mol), scaled, rescale=False)
    assert not g.info.rescaled and g.info.scale == 1.0
    assert abs(g.info.electrons_predicted - 7.2) < 1e-3
    assert abs(g.info.electrons_dm - 8.0) < 1e-8  # the orbitals still hold N electrons
    g2 = density_guess(recipe_mf(mol), scaled)
    assert g2.info.rescaled and abs(g2.info.scale - 8.0 / g2.info.electrons_predicted) < 1e-12


def test_poor_model_still_converges_to_the_same_energy(water):
    mol, ref = water
    mf = recipe_mf(mol)
    dm0 = initial_guess(mf, "demo")  # the shipped demo model (ε_mae ≈ 8 %), by name
    assert abs(np.trace(dm0 @ mf.get_ovlp()) - 8.0) < 1e-8
    mf.kernel(dm0=dm0)
    assert mf.converged and abs(mf.e_tot - ref.e_tot) < 1e-6


def test_autograd_gradient_equals_finite_differences_of_the_model():
    import cdp

    predictor = cdp.load_model("demo", dtype="float64")
    atoms = molecule("H2O")
    pts = np.random.default_rng(0).normal(size=(64, 3)) * 1.5
    rho, grad, method = predict_density(predictor, atoms, pts, "autograd")
    assert method == "autograd"
    np.testing.assert_allclose(rho, predictor.predict(atoms, pts), rtol=1e-10, atol=1e-12)
    h = 1e-5
    fd = np.stack([(predictor.predict(atoms, pts + h * e) - predictor.predict(atoms, pts - h * e)) / (2 * h)
                   for e in np.eye(3)], axis=1)
    np.testing.assert_allclose(grad, fd, atol=1e-5 * max(1.0, np.abs(fd).max()))


def test_mol_round_trip_and_refusals(water):
    mol, _ = water
    atoms = atoms_from_mol(mol)
    assert atoms.get_chemical_symbols() == ["O", "H", "H"]
    np.testing.assert_allclose(atoms.positions, molecule("H2O").positions, atol=1e-10)
    oh = recipe_mol(molecule("OH"))
    with pytest.raises(CdpError, match="closed-shell"):
        density_guess(oh, Oracle(oh, None))
    mf = recipe_mf(mol)
    mf.xc = "b3lyp"
    with pytest.raises(CdpError, match="exact exchange"):
        density_guess(mf, Oracle(mol, water[1].make_rdm1()))
    with pytest.raises(CdpError, match="Mole or SCF"):
        initial_guess("H2O", None)


def test_non_positive_predicted_charge_is_refused(water):
    mol, ref = water
    with pytest.raises(CdpError, match="integrates to"):
        density_guess(recipe_mf(mol), Oracle(mol, -ref.make_rdm1()))
