"""The same SCF (the data recipe) from several initial guesses: iterations, times and final energies.

``compare_guesses(atoms, predictor, guesses)`` gives the report written by ``cdp scf --json``::

    {"structure", "model", "recipe", "inference_seconds", "setup_seconds", "density",
     "runs": [{"guess", "iterations", "converged", "energy_hartree", "scf_seconds", "guess_seconds",
               "scf_cpu_seconds", "guess_cpu_seconds"}],
     "energies_agree", "energy_spread_hartree"}

``iterations`` is PySCF's ``mf.cycles`` of the SCF started from the guess; building the guess is not
counted in it, its time is ``guess_seconds`` (for ``cdp``: model inference at the grid points, the
Hartree fit, V_xc and one diagonalisation). The density-fitting tensor and the grid are built once
(``setup_seconds``) and shared by all runs; since the grid exists before the first SCF cycle, PySCF's
pruning of small-ρ points (which depends on the guess) is not applied, so every guess sees the same grid.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from cdp.core.types import CdpError
from cdp.data.molecules import RECIPE, recipe_mf, recipe_mol
from cdp.dft.guess import density_guess

ENERGY_TOLERANCE = 1e-6  # Ha: runs from different guesses must end within this of each other

# PySCF guesses that work with GTH pseudopotentials (tested with PySCF 2.14 on the recipe).
PYSCF_GUESSES = ("minao", "atom", "huckel", "mod_huckel", "1e", "sap")
REFUSED_GUESSES = {
    "vsap": "PySCF's vsap guess does not support GTH pseudopotentials",
    "chk": "a checkpoint guess needs a PySCF checkpoint file, not a structure",
}
GUESSES = ("cdp",) + PYSCF_GUESSES


def check_guesses(guesses: Sequence[str]) -> List[str]:
    """The guess names, checked before any work: unknown or GTH-incompatible ones raise CdpError."""
    out: List[str] = []
    for g in guesses:
        g = str(g).strip().lower()
        if not g:
            continue
        if g in REFUSED_GUESSES:
            raise CdpError(f"guess '{g}' is refused: {REFUSED_GUESSES[g]}")
        if g not in GUESSES:
            raise CdpError(f"unknown guess '{g}' (choose from {', '.join(GUESSES)})")
        if g not in out:
            out.append(g)
    if not out:
        raise CdpError("no guess given")
    return out


def check_molecule(atoms, charge: int = 0, name: str = "structure"):
    """The recipe's PySCF Mole for a closed-shell molecule; periodic or open-shell inputs raise CdpError."""
    if np.any(atoms.pbc):
        raise CdpError(f"{name}: periodic structure; `cdp scf` runs molecular PySCF "
                       f"(crystals: see the README, GPAW and VASP ICHARG=1)")
    if len(atoms) == 0:
        raise CdpError(f"{name}: the structure has no atoms")
    try:
        mol = recipe_mol(atoms, charge=int(charge))
    except CdpError:
        raise
    except Exception as exc:  # PySCF raises RuntimeError/KeyError for impossible charges, missing basis sets
        raise CdpError(f"{name}: PySCF cannot build the molecule ({' '.join(str(exc).split())[:160]})") from None
    if mol.nelectron <= 0:
        raise CdpError(f"{name}: charge {charge} leaves {mol.nelectron} valence electrons")
    if mol.spin != 0:
        raise CdpError(f"{name}: {mol.nelectron} valence electrons at charge {charge} is an open shell; the recipe is "
                       f"restricted Kohn-Sham (give --charge for a closed-shell ion)")
    return mol


@dataclass
class Comparison:
    """A guess comparison: the JSON report plus the converged density matrix of the first converged run."""

    report: dict
    mol: object = field(repr=False)
    mf: object = field(repr=False)  # the shared, set-up RKS object (grid built, DF tensor built)
    dm: Optional[np.ndarray] = field(default=None, repr=False)


def prepare(mol, recipe: Optional[dict] = None):
    """(RKS object with its grid and DF tensor built, seconds): the setup every run shares."""
    t0 = time.perf_counter()
    base = recipe_mf(mol, recipe)
    base.grids.build(with_non0tab=True)
    return base, time.perf_counter() - t0


def run_guess(base, guess: str, predictor=None, gradient: str = "auto", rescale: bool = True):
    """One SCF from ``guess`` on a copy of the prepared ``base``: (run record, Guess or None, the run's mf)."""
    mf = copy.copy(base)  # shares the built grid and DF tensor; kernel() state lands on the copy
    made = None
    c1, t1 = time.process_time(), time.perf_counter()
    if guess == "cdp":
        if predictor is None:
            raise CdpError("guess 'cdp' needs a model (--model)")
        made = density_guess(mf, predictor, rescale=rescale, gradient=gradient)
        dm0 = made.dm0
    else:
        try:
            dm0 = mf.get_init_guess(mf.mol, key=guess)
        except Exception as exc:  # a PySCF limitation surfacing at run time
            raise CdpError(f"guess '{guess}': PySCF cannot build it ({' '.join(str(exc).split())[:160]})") from None
    c2, t2 = time.process_time(), time.perf_counter()
    mf.kernel(dm0=dm0)
    c3, t3 = time.process_time(), time.perf_counter()
    record = {
        "guess": guess,
        "iterations": int(mf.cycles),
        "converged": bool(mf.converged),
        "energy_hartree": float(mf.e_tot),
        "scf_seconds": t3 - t2,
        "guess_seconds": t2 - t1,
        "scf_cpu_seconds": c3 - c2,  # this process's CPU time: comparable on a loaded machine
        "guess_cpu_seconds": c2 - c1,
    }
    return record, made, mf


def density_record(made) -> dict:
    """The report's ``density`` block: the predicted density's electron count on PySCF's grid and its use."""
    info = made.info
    return {
        "electrons": info.electrons_target,
        "electrons_predicted": info.electrons_predicted,
        "rescaled": info.rescaled,
        "scale": info.scale,
        "gradient": info.gradient_method,
        "grid_points": info.grid_points,
        "negative_fraction": info.negative_fraction,
        "electrons_dm0": info.electrons_dm,
    }


def agreement(runs: Sequence[dict]) -> tuple:
    """(all converged within ENERGY_TOLERANCE of each other, energy spread in Ha)."""
    energies = [r["energy_hartree"] for r in runs]
    spread = float(max(energies) - min(energies)) if energies else 0.0
    return bool(runs and all(r["converged"] for r in runs) and spread <= ENERGY_TOLERANCE), spread


def compare_guesses(
    atoms,
    predictor=None,
    guesses: Sequence[str] = ("cdp", "minao"),
    charge: int = 0,
    recipe: Optional[dict] = None,
    gradient: str = "auto",
    rescale: bool = True,
    name: str = "structure",
    model_name: Optional[str] = None,
) -> Comparison:
    """Run the recipe's SCF from each guess in ``guesses`` (``cdp`` needs ``predictor``); see the module doc."""
    guesses = check_guesses(guesses)
    if "cdp" in guesses and predictor is None:
        raise CdpError("guess 'cdp' needs a model (--model)")
    mol = check_molecule(atoms, charge, name)
    rc = dict(RECIPE if recipe is None else recipe)
    base, setup = prepare(mol, rc)
    runs, density, inference, dm_ref = [], None, None, None
    for g in guesses:
        record, made, mf = run_guess(base, g, predictor, gradient, rescale)
        runs.append(record)
        if made is not None:
            density, inference = density_record(made), made.info.inference_seconds
        if mf.converged and dm_ref is None:
            dm_ref = mf.make_rdm1()
    agree, spread = agreement(runs)
    report = {
        "structure": name,
        "model": model_name,
        "recipe": rc,
        "charge": int(charge),
        "inference_seconds": inference,
        "setup_seconds": setup,
        "density": density,
        "runs": runs,
        "energies_agree": agree,
        "energy_spread_hartree": spread,
    }
    return Comparison(report=report, mol=mol, mf=base, dm=dm_ref)
