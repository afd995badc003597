"""PySCF reference densities for molecules: cdp's fixed molecular recipe (smooth GTH valence densities).

Recipe (see ``RECIPE``): restricted Kohn-Sham PBE, basis ``gth-dzvp`` with ``gth-pbe``
pseudopotentials (valence-only, cusp-free, integrates to the valence electron count), density
fitting, SCF tolerance 1e-9.  The molecule is centred in an orthorhombic box of its axis-aligned
extent plus ``vacuum`` on each side; the grid has n_i = ceil(L_i / spacing) points per axis at
fractional coordinates i/n_i from the cell corner (the VASP CHGCAR convention).  The box is not
periodic: the density is that of an isolated molecule.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Dict, Optional

from ase import Atoms
import numpy as np

from cdp.core.types import CdpError, DensityGrid
from cdp.data.files import write_chgcar
from cdp.data.generate import generate
from cdp.predict import grid_shape_for, molecule_box

BOHR = 0.52917721092  # Å per Bohr (CODATA 2010, the value PySCF uses)

RECIPE: Dict[str, object] = {
    "code": "pyscf",
    "method": "RKS",
    "xc": "pbe",
    "basis": "gth-dzvp",
    "pseudo": "gth-pbe",
    "density_fit": True,
    "conv_tol": 1e-9,
    "grids_level": 1,
    "max_cycle": 100,
}

# Relative tolerance of the grid integral against the valence electron count.  At <= 0.15 Å: 0.5 %
# (measured <= 4e-5 relative at 0.15 Å, <= 1e-6 at 0.12 Å).  Coarser grids resolve the sharp O/N valence
# peaks less well: measured <= 0.03 % at 0.2 Å and up to 0.8 % at 0.3 Å (water; median ~0.1 % over the
# embedded set's QM9 molecules).  Above 0.15 Å the bound is 2 %: loose enough for 0.3 Å grids, tight
# enough to catch densities cut by the box walls or a broken run.
FINE_SPACING = 0.15
FINE_TOLERANCE = 0.005
COARSE_TOLERANCE = 0.02

# Grid points above which a structure is refused before any work (≈ 1.6 GB as float64 + workspace).
MAX_GRID_POINTS = 200_000_000


def electron_tolerance(spacing: float) -> float:
    """Allowed relative deviation of the grid integral from the electron count at this spacing."""
    return FINE_TOLERANCE if spacing <= FINE_SPACING + 1e-12 else COARSE_TOLERANCE


def make_box(atoms, vacuum: float, spacing: float):
    """Centre a copy of ``atoms`` in a box of extent + ``vacuum`` per side; returns (atoms, grid shape)."""
    if vacuum < 0 or not math.isfinite(vacuum):
        raise CdpError(f"vacuum must be a non-negative number of Å, got {vacuum}")
    if spacing <= 0 or not math.isfinite(spacing):
        raise CdpError(f"spacing must be a positive number of Å, got {spacing}")

    pos = np.asarray(atoms.positions, dtype=np.float64)
    if np.any(pos.max(axis=0) - pos.min(axis=0) + 2.0 * vacuum <= 0):
        raise CdpError("the box has zero length along an axis: use a positive vacuum")
    boxed = molecule_box(atoms, vacuum)
    shape = grid_shape_for(boxed.cell.array, spacing)
    return boxed, shape


@dataclass
class MoleculeResult:
    """One computed reference density with its bookkeeping."""

    atoms: object
    grid: DensityGrid
    electrons_expected: float
    electrons_grid: float
    energy: float
    scf_seconds: float
    grid_seconds: float


def recipe_mol(atoms, recipe: Optional[dict] = None, charge: int = 0, spin: Optional[int] = None):
    """PySCF ``Mole`` of ase ``atoms`` (Å) under the recipe's basis and pseudopotentials.

    ``spin`` is 2S (None: 0 or 1 from the electron count's parity); ``charge`` in e.
    """
    try:
        from pyscf import gto  # optional dependency (cdp[data])
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CdpError("PySCF is not installed: pip install 'cdp[data]' (pyscf==2.14.*)") from exc
    rc = dict(RECIPE if recipe is None else recipe)
    return gto.M(
        atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        unit="Angstrom",
        basis=rc["basis"],
        pseudo=rc["pseudo"],
        charge=charge,
        spin=spin,
        verbose=0,
    )


def recipe_mf(mol, recipe: Optional[dict] = None):
    """The recipe's RKS object for ``mol`` (density-fitting tensor built), not yet run."""
    from pyscf import dft  # optional dependency (cdp[data])

    rc = dict(RECIPE if recipe is None else recipe)
    mf = dft.RKS(mol, xc=rc["xc"])
    if rc.get("density_fit", True):
        mf = mf.density_fit()
        # The 3-index DF tensor in memory (same auxiliary basis, same J to ~1e-13 Ha): without it PySCF
        # recomputes the 3-centre integrals every SCF cycle.  QM9 #86204: 30.7 -> 15.7 CPU-s.
        mf.with_df.build()
    mf.conv_tol = float(rc["conv_tol"])
    mf.max_cycle = int(rc.get("max_cycle", 100))
    mf.grids.level = int(rc.get("grids_level", 1))
    mf.verbose = 0
    return mf


def run_scf(atoms, recipe: Optional[dict] = None, name: Optional[str] = None):
    """Converged PySCF RKS object for ``atoms`` under the recipe (raises CdpError if not converged)."""
    name = name or atoms.get_chemical_formula()
    mol = recipe_mol(atoms, recipe)
    if mol.spin != 0:
        raise CdpError(f"{name}: odd electron count, the RKS recipe needs a closed shell")
    mf = recipe_mf(mol, recipe)
    mf.kernel()
    if not mf.converged:
        raise CdpError(f"{name}: SCF did not converge in {mf.max_cycle} cycles")
    return mol, mf


def density_on_points(mol, dm: np.ndarray, points_ang: np.ndarray, block: int = 20000) -> np.ndarray:
    """Electron density (e/Å³) of density matrix ``dm`` at Cartesian points in Å, evaluated in blocks."""
    from pyscf.dft import numint  # optional dependency (cdp[data])

    out = np.empty(len(points_ang), dtype=np.float64)
    for start in range(0, len(points_ang), block):
        coords = points_ang[start:start + block] / BOHR
        ao = numint.eval_ao(mol, coords, deriv=0)
        out[start:start + block] = numint.eval_rho(mol, ao, dm, xctype="LDA")
    return out / BOHR**3


def compute_molecule(
    atoms,
    spacing: float = 0.12,
    vacuum: float = 3.0,
    recipe: Optional[dict] = None,
    max_grid_points: int = MAX_GRID_POINTS,
    name: str = "molecule",
) -> MoleculeResult:
    """Run the recipe on one molecule and put its density on the box grid; checks the electron count."""
    if len(atoms) == 0:
        raise CdpError(f"{name}: the structure has no atoms")
    boxed, shape = make_box(atoms, vacuum, spacing)
    npts = int(np.prod(shape))
    if npts > max_grid_points:
        raise CdpError(
            f"{name}: grid {shape[0]}x{shape[1]}x{shape[2]} has {npts} points, above the limit of "
            f"{max_grid_points} (use a coarser --spacing or a smaller --vacuum)"
        )
    t0 = time.perf_counter()
    mol, mf = run_scf(boxed, recipe, name=name)
    t1 = time.perf_counter()
    cell = np.asarray(boxed.cell.array, dtype=np.float64)
    grid = DensityGrid(cell=cell, values=np.zeros(shape), pbc=np.zeros(3, dtype=bool))
    values = density_on_points(mol, mf.make_rdm1(), grid.grid_points())
    grid.values = values.reshape(shape)
    t2 = time.perf_counter()
    expected = float(mol.nelectron)
    found = grid.electrons
    tol = electron_tolerance(spacing)
    if abs(found - expected) > tol * expected:
        raise CdpError(
            f"{name}: grid integral {found:.4f} differs from the {expected:g} valence electrons by more "
            f"than {100 * tol:g} % (box too small or grid too coarse)"
        )
    return MoleculeResult(
        atoms=boxed,
        grid=grid,
        electrons_expected=expected,
        electrons_grid=found,
        energy=float(mf.e_tot),
        scf_seconds=t1 - t0,
        grid_seconds=t2 - t1,
    )


def molecule_job(name: str, atoms, options: dict) -> dict:
    """Generation job: compute one molecule, write ``<name>.CHGCAR[.suffix]`` atomically, return its manifest entry."""
    t0 = time.perf_counter()
    res = compute_molecule(
        atoms,
        spacing=options["spacing"],
        vacuum=options["vacuum"],
        recipe=options.get("recipe"),
        max_grid_points=options.get("max_grid_points", MAX_GRID_POINTS),
        name=name,
    )
    fname = name + ".CHGCAR" + (("." + options["compress"]) if options.get("compress") else "")
    write_chgcar(os.path.join(options["out_dir"], fname), res.atoms, res.grid)
    return {
        "file": fname,
        "pbc": [False, False, False],
        "formula": res.atoms.get_chemical_formula(),
        "shape": list(res.grid.shape),
        "electrons_expected": res.electrons_expected,
        "electrons_grid": round(res.electrons_grid, 8),
        "energy_hartree": res.energy,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def make_molecules(
    structures,
    out_dir: str,
    spacing: float = 0.12,
    vacuum: float = 3.0,
    compress: Optional[str] = "gz",
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
    report=None,
    command: Optional[str] = None,
    max_grid_points: int = MAX_GRID_POINTS,
):
    """Make reference densities for ``[(name, ase.Atoms), ...]`` into ``out_dir`` (resumable); returns a GenerationReport."""
    if compress not in (None, "gz", "lz4", "zz"):
        raise CdpError(f"--compress must be gz, lz4, zz or none, got {compress!r}")
    make_box(structures[0][1] if structures else _dummy(), vacuum, spacing)  # validate numbers early
    recipe_key = dict(RECIPE, spacing=float(spacing), vacuum=float(vacuum))
    options = dict(
        spacing=float(spacing), vacuum=float(vacuum), compress=compress, out_dir=out_dir,
        recipe=dict(RECIPE), max_grid_points=max_grid_points,
    )
    header = {"generator": {"kind": "molecules", "recipe": recipe_key, "versions": _versions()}}
    if command:
        header["generator"]["command"] = command
    return generate(
        structures, out_dir, molecule_job, options, recipe_key,
        workers=workers, threads=threads, progress=progress, report=report, header=header,
    )


def _dummy():
    return Atoms("H", positions=[[0.0, 0.0, 0.0]])


def _versions() -> dict:
    out = {}
    for mod in ("pyscf", "numpy", "ase"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = None
    return out
