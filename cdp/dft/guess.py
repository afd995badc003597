"""A PySCF initial density matrix from a predicted density: one Kohn-Sham diagonalisation in its potential.

The model is evaluated at PySCF's own integration-grid points (no interpolation), rescaled to integrate
to N there, and turned into a Kohn-Sham Fock matrix

    F = h_core + V_J[ρ] + V_xc[ρ, ∇ρ]

* ``h_core``: ``mf.get_hcore()`` (kinetic energy + GTH pseudopotential).
* ``V_J``: Coulomb-metric density fit of ρ onto the auxiliary basis {χ_P}: ``c = J⁻¹ b`` with
  ``J_PQ = (P|Q)`` and ``b_P = (P|ρ) = Σ_g w_g ρ(r_g) v_P(r_g)``, where ``v_P(r) = ∫ χ_P(r')/|r - r'|`` is
  evaluated at the grid points as 2-centre integrals against unit point charges; then
  ``V_J[μν] = Σ_P (μν|P) c_P`` with the 3-index tensor (the same fit density-fitted SCF makes of a
  density matrix).
* ``V_xc``: PySCF's ``numint`` on the same grid (ρ and, for GGAs, ∇ρ from the model: autograd through the
  decoder for cdp models, central differences with h = 1e-3 Å otherwise).

``F C = S C ε`` is solved once and the lowest N/2 orbitals are occupied, so ``tr(D0 S) = N`` to rounding.
Units: the model works in Å and e/Å³; PySCF in Bohr and e/Bohr³ (``BOHR`` Å per Bohr).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ase import Atoms
import numpy as np
import scipy.linalg
import torch

from cdp.core.types import CdpError
from cdp.data.molecules import BOHR, recipe_mf
from cdp.predict import check_elements, load_model

FD_STEP = 1e-3  # Å, central-difference step for ∇ρ when the predictor has no autograd path
AO_BLOCK = 4000  # grid points per AO evaluation block (4 × block × nao float64 in memory)


@dataclass
class GuessInfo:
    """Bookkeeping of one predicted-density guess (electrons in e, times in s)."""

    electrons_target: float  # N of the molecule
    electrons_predicted: float  # ∫ρ_model on PySCF's grid, before rescaling
    rescaled: bool  # whether ρ (and ∇ρ) were scaled by N / electrons_predicted
    scale: float
    gradient_method: str  # "autograd", "finite-difference (h=1e-3 Å, 7 evaluations)", "given" or "none"
    grid_points: int
    negative_fraction: float  # share of grid points where the model's ρ < 0 (set to 0 for V_xc)
    inference_seconds: float  # model evaluations (ρ and ∇ρ) at the grid points
    seconds: float  # whole guess: grid, inference, V_J, V_xc, diagonalisation
    electrons_dm: float  # tr(D0 S)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Guess:
    """``dm0`` [nao, nao] (PySCF's AO basis, closed shell) and its :class:`GuessInfo`."""

    dm0: np.ndarray
    info: GuessInfo
    mo_energy: Optional[np.ndarray] = field(default=None, repr=False)
    rho_grid: Optional[np.ndarray] = field(default=None, repr=False)  # [G] model ρ at the grid, e/Bohr³, unscaled


# -- the molecule ---------------------------------------------------------------------------------------


def atoms_from_mol(mol):
    """ase Atoms (Å, no periodicity) of a PySCF Mole."""
    symbols = [mol.atom_pure_symbol(i) for i in range(mol.natm)]
    return Atoms(symbols=symbols, positions=mol.atom_coords(unit="Angstrom"), pbc=False)


def _as_mf(mol_or_mf):
    """(mol, mf): a Mole gets the data recipe's RKS object."""
    if hasattr(mol_or_mf, "get_hcore") and hasattr(mol_or_mf, "mol"):
        return mol_or_mf.mol, mol_or_mf
    if hasattr(mol_or_mf, "atom_coords") and hasattr(mol_or_mf, "nelectron"):
        return mol_or_mf, recipe_mf(mol_or_mf)
    raise CdpError(f"initial_guess needs a PySCF Mole or SCF object, got {type(mol_or_mf).__name__}")


# -- model evaluation -----------------------------------------------------------------------------------


def _total(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[:, 0] if v.ndim == 2 else v  # spin models: (total, magnetisation)


def _autograd(predictor, atoms, points: np.ndarray, step: int) -> Tuple[np.ndarray, np.ndarray]:
    """ρ [M] (e/Å³) and ∇ρ [M, 3] (e/Å⁴) by autograd through the decoder, in probe batches."""
    enc = predictor.encode(atoms)  # atoms moved into the predictor's local frame (a shift: same gradients)
    batch, feats, points = enc.batch, enc.features, enc.frame.points(points)
    model = predictor.model
    rho = np.empty(len(points))
    grad = np.empty((len(points), 3))
    for start in range(0, len(points), step):
        with torch.enable_grad():
            x = torch.from_numpy(points[start:start + step]).to(predictor.device, model.dtype).requires_grad_(True)
            y = model.decode(batch, feats, x)
            y = y[:, 0] if y.ndim == 2 else y
            # each probe's output depends on its own position only, so d(Σy)/dx_i = ∂y_i/∂x_i
            (g,) = torch.autograd.grad(y.sum(), x)
        rho[start:start + step] = y.detach().cpu().double().numpy()
        grad[start:start + step] = g.detach().cpu().double().numpy()
    return rho, grad


def _finite_difference(predictor, atoms, points: np.ndarray, h: float) -> Tuple[np.ndarray, np.ndarray]:
    """ρ [M] and central-difference ∇ρ [M, 3] (7 model evaluations of M points)."""
    rho = _total(predictor.predict(atoms, points))
    grad = np.empty((len(points), 3))
    for k in range(3):
        dx = np.zeros(3)
        dx[k] = h
        grad[:, k] = (_total(predictor.predict(atoms, points + dx)) - _total(predictor.predict(atoms, points - dx))) / (2 * h)
    return rho, grad


def predict_density(predictor, atoms, points_ang: np.ndarray, gradient: str = "auto") -> Tuple[np.ndarray, Optional[np.ndarray], str]:
    """(ρ [M] e/Å³, ∇ρ [M, 3] e/Å⁴ or None, method) of ``predictor`` at ``points_ang`` [M, 3] Å.

    ``gradient``: "auto" (a predictor's own ``predict_with_gradient`` if it has one, else autograd for cdp
    models with a PyTorch decoder, else finite differences), "autograd", "fd" or "none".
    """
    if gradient not in ("auto", "autograd", "fd", "none"):
        raise CdpError(f"unknown gradient method '{gradient}' (auto, autograd, fd or none)")
    if gradient == "none":
        return _total(predictor.predict(atoms, points_ang)), None, "none"
    if gradient == "auto" and callable(getattr(predictor, "predict_with_gradient", None)):
        rho, grad = predictor.predict_with_gradient(atoms, points_ang)
        return _total(rho), np.asarray(grad, dtype=np.float64).reshape(-1, 3), "given"
    torch_model = hasattr(predictor, "model") and hasattr(predictor, "encode") and hasattr(predictor.model, "decode")
    if gradient == "autograd" or (gradient == "auto" and torch_model):
        if not torch_model:
            raise CdpError("autograd needs a cdp PyTorch predictor (use gradient='fd')")
        step = int(getattr(predictor, "probe_batch", 2500))
        rho, grad = _autograd(predictor, atoms, points_ang, step)
        return rho, grad, "autograd"
    rho, grad = _finite_difference(predictor, atoms, points_ang, FD_STEP)
    return rho, grad, f"finite-difference (h={FD_STEP:g} Å, 7 evaluations)"


# -- potentials -----------------------------------------------------------------------------------------


def _auxmol(mf):
    """The auxiliary basis of a density-fitted ``mf`` (built), or PySCF's default one for its basis."""
    from pyscf.df import addons  # optional dependency (cdp[data])

    with_df = getattr(mf, "with_df", None)
    if with_df is not None:
        if getattr(with_df, "auxmol", None) is None:
            with_df.build()
        return with_df.auxmol
    return addons.make_auxmol(mf.mol, addons.make_auxbasis(mf.mol))


def coulomb_fit(mol, auxmol, coords: np.ndarray, weights: np.ndarray, rho: np.ndarray, block: int = 2000) -> np.ndarray:
    """Coulomb-metric fit coefficients c [naux] of a grid density ρ (e/Bohr³ at ``coords`` Bohr).

    c = J⁻¹ b, J_PQ = (P|Q), b_P = Σ_g w_g ρ_g ∫ χ_P(r)/|r - r_g| dr.
    """
    from pyscf import gto  # optional dependency (cdp[data])

    b = np.zeros(auxmol.nao)
    wr = weights * rho
    for start in range(0, len(coords), block):
        fake = gto.fakemol_for_charges(coords[start:start + block])  # unit point charges at the grid points
        v = gto.intor_cross("int2c2e", auxmol, fake)  # [naux, block]: potential of χ_P at r_g
        b += v @ wr[start:start + block]
    j2c = auxmol.intor("int2c2e", hermi=1)
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(j2c), b)
    except np.linalg.LinAlgError:
        return scipy.linalg.lstsq(j2c, b)[0]


def hartree_matrix(mol, auxmol, coeff: np.ndarray) -> np.ndarray:
    """V_J[μν] = Σ_P (μν|P) c_P, [nao, nao] in Hartree."""
    from pyscf import lib  # optional dependency (cdp[data])
    from pyscf.df import incore  # optional dependency (cdp[data])

    j3c = incore.aux_e2(mol, auxmol, intor="int3c2e", aosym="s2ij")  # [nao_pair, naux]
    return lib.unpack_tril(j3c @ coeff)


def xc_matrix(mf, coords: np.ndarray, weights: np.ndarray, rho: np.ndarray, grad: Optional[np.ndarray]) -> np.ndarray:
    """V_xc[μν] [nao, nao] of ρ (e/Bohr³) and ∇ρ (e/Bohr⁴, GGAs) on the grid, with PySCF's numint."""
    from pyscf.dft import numint  # optional dependency (cdp[data])

    mol, ni, xc = mf.mol, mf._numint, mf.xc
    xctype = ni._xc_type(xc)
    if ni.hybrid_coeff(xc) != 0 or ni.rsh_coeff(xc)[0] != 0:
        raise CdpError(f"functional '{xc}' has exact exchange, which needs orbitals, not a density")
    if xctype not in ("LDA", "GGA"):
        raise CdpError(f"functional '{xc}' is {xctype}; a predicted density gives LDA and GGA potentials only")
    keep = rho > 0
    if xctype == "LDA":
        rho_in = np.where(keep, rho, 0.0)
    else:
        if grad is None:
            raise CdpError(f"functional '{xc}' needs ∇ρ")
        rho_in = np.zeros((4, len(rho)))
        rho_in[0] = np.where(keep, rho, 0.0)
        rho_in[1:] = np.where(keep, grad.T, 0.0)
    vxc = ni.eval_xc_eff(xc, rho_in, deriv=1, xctype=xctype)[1]
    vxc = np.asarray(vxc).reshape(-1, len(rho))
    nao = mol.nao
    vmat = np.zeros((nao, nao))
    for start in range(0, len(coords), AO_BLOCK):
        sl = slice(start, start + AO_BLOCK)
        if xctype == "LDA":
            ao = numint.eval_ao(mol, coords[sl], deriv=0)
            vmat += ao.T @ (ao * (weights[sl] * vxc[0, sl])[:, None])
        else:
            ao = numint.eval_ao(mol, coords[sl], deriv=1)  # [4, block, nao]
            wv = vxc[:4, sl] * weights[sl]
            wv[0] *= 0.5  # the ρ term is symmetrised below together with the ∇ρ term
            aow = np.einsum("xg,xgi->gi", wv, ao)
            half = ao[0].T @ aow
            vmat += half + half.T
    return vmat


# -- the guess ------------------------------------------------------------------------------------------


def density_guess(mol_or_mf, predictor, rescale: bool = True, gradient: str = "auto") -> Guess:
    """A closed-shell ``dm0`` from ``predictor``'s density and the bookkeeping of how it was made.

    ``mol_or_mf``: a PySCF Mole (the data recipe's RKS object is built for it) or an RKS object, whose grid,
    functional, h_core and auxiliary basis are used. ``predictor``: anything with
    ``predict(atoms, points_Å [M, 3]) -> ρ [M] e/Å³`` (e.g. ``cdp.load_model(...)``, or a name/path given to
    it); an optional
    ``predict_with_gradient(atoms, points) -> (ρ [M], ∇ρ [M, 3] e/Å⁴)`` is used when present.
    ``rescale``: scale ρ (and ∇ρ) so that ∫ρ = N on PySCF's grid before building the potential.
    Raises CdpError for open shells, hybrid/meta-GGA functionals or a non-positive predicted charge.
    """
    t0 = time.perf_counter()
    if isinstance(predictor, (str, os.PathLike)):
        predictor = load_model(predictor)
    mol, mf = _as_mf(mol_or_mf)
    if mol.spin != 0:
        raise CdpError(f"the guess is closed-shell (restricted Kohn-Sham); this molecule has 2S = {mol.spin}")
    if getattr(mf, "grids", None) is None:
        raise CdpError("the SCF object has no integration grid (a Kohn-Sham object is needed)")
    if mf.grids.coords is None:
        mf.grids.build(with_non0tab=True)
    coords, weights = np.asarray(mf.grids.coords), np.asarray(mf.grids.weights)
    atoms = atoms_from_mol(mol)
    if hasattr(predictor, "model"):
        check_elements(predictor, atoms, "molecule")

    t1 = time.perf_counter()
    rho_a, grad_a, method = predict_density(predictor, atoms, coords * BOHR, gradient)
    inference = time.perf_counter() - t1
    rho = rho_a * BOHR**3  # e/Å³ -> e/Bohr³
    rho_model = rho
    grad = None if grad_a is None else grad_a * BOHR**4  # e/Å⁴ -> e/Bohr⁴
    if not (np.all(np.isfinite(rho)) and (grad is None or np.all(np.isfinite(grad)))):
        raise CdpError("the model predicted non-finite densities on PySCF's grid")
    n = float(mol.nelectron)
    predicted = float(weights @ rho)
    if not predicted > 0:
        raise CdpError(f"the predicted density integrates to {predicted:.4g} electrons on PySCF's grid")
    scale = n / predicted if rescale else 1.0
    rho = rho * scale
    grad = None if grad is None else grad * scale

    auxmol = _auxmol(mf)
    coeff = coulomb_fit(mol, auxmol, coords, weights, rho)
    fock = mf.get_hcore() + hartree_matrix(mol, auxmol, coeff) + xc_matrix(mf, coords, weights, rho, grad)
    s = mf.get_ovlp()
    mo_energy, mo_coeff = mf.eig(fock, s)
    mo_occ = mf.get_occ(mo_energy, mo_coeff)
    dm0 = mf.make_rdm1(mo_coeff, mo_occ)
    info = GuessInfo(
        electrons_target=n,
        electrons_predicted=predicted,
        rescaled=bool(rescale and scale != 1.0),
        scale=float(scale),
        gradient_method=method,
        grid_points=int(len(coords)),
        negative_fraction=float(np.mean(rho_a < 0)),
        inference_seconds=inference,
        seconds=time.perf_counter() - t0,
        electrons_dm=float(np.einsum("ij,ji->", dm0, s)),
    )
    return Guess(dm0=dm0, info=info, mo_energy=mo_energy, rho_grid=rho_model)


def initial_guess(mol_or_mf, predictor, rescale: bool = True, gradient: str = "auto") -> np.ndarray:
    """``dm0`` [nao, nao] for ``mf.kernel(dm0=...)`` from a predicted density; see :func:`density_guess`."""
    return density_guess(mol_or_mf, predictor, rescale=rescale, gradient=gradient).dm0
