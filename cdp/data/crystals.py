"""GPAW reference densities for crystals: plane-wave PAW PBE pseudo valence densities (like a VASP CHGCAR).

Recipe (``RECIPE``): PW cutoff 500 eV, PBE, Fermi-Dirac smearing 0.05 eV, Γ-centred k-points at a
density of ≈ 4 per Å⁻¹, spin-polarised only for magnetic elements (initial moments set); the density
is ``get_pseudo_density(gridrefinement=2)`` (smooth pseudo density including the PAW compensation
charges: it integrates to the valence electron count and may dip below zero near nuclei; kept as is).
GPAW is optional; without it the command explains how to install it.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Tuple

from ase.build import bulk
import numpy as np

from cdp.core.types import CdpError, DensityGrid
from cdp.data.files import write_chgcar
from cdp.data.generate import generate

RECIPE: Dict[str, object] = {
    "code": "gpaw",
    "mode": "pw",
    "cutoff_eV": 500.0,
    "xc": "PBE",
    "smearing_eV": 0.05,
    "kpt_density": 4.0,
    "gamma": True,
    "gridrefinement": 2,
}

GPAW_INSTALL = (
    "GPAW is not installed. On Debian/Ubuntu: `apt-get install -y libxc-dev libopenblas-dev` then "
    "`CC=g++ LDSHARED=\"g++ -shared\" pip install gpaw` (GPAW's sources are C++; the PAW setups come "
    "with the gpaw-data wheel)"
)

MAGNETIC = {"Fe": 2.5, "Co": 1.7, "Ni": 0.7, "Mn": 3.0, "Cr": 2.0}

# (name, ase.build.bulk arguments): simple crystals with experimental lattice constants (Å).
BUILTIN: List[Tuple[str, dict]] = [
    ("Si_diamond", dict(name="Si", crystalstructure="diamond", a=5.431)),
    ("C_diamond", dict(name="C", crystalstructure="diamond", a=3.567)),
    ("Ge_diamond", dict(name="Ge", crystalstructure="diamond", a=5.658)),
    ("Al_fcc", dict(name="Al", crystalstructure="fcc", a=4.05)),
    ("Cu_fcc", dict(name="Cu", crystalstructure="fcc", a=3.615)),
    ("Na_bcc", dict(name="Na", crystalstructure="bcc", a=4.23)),
    ("Fe_bcc", dict(name="Fe", crystalstructure="bcc", a=2.87)),
    ("MgO_rocksalt", dict(name="MgO", crystalstructure="rocksalt", a=4.212)),
    ("NaCl_rocksalt", dict(name="NaCl", crystalstructure="rocksalt", a=5.64)),
    ("LiF_rocksalt", dict(name="LiF", crystalstructure="rocksalt", a=4.03)),
    ("GaAs_zincblende", dict(name="GaAs", crystalstructure="zincblende", a=5.653)),
    ("CsCl_cesiumchloride", dict(name="CsCl", crystalstructure="cesiumchloride", a=4.12)),
]


def builtin_crystals() -> List[Tuple[str, object]]:
    """[(name, ase.Atoms)] of cdp's built-in simple crystals (primitive cells)."""
    return [(name, bulk(**kw)) for name, kw in BUILTIN]


def require_gpaw():
    """Import GPAW or raise CdpError with the install instructions."""
    try:
        import gpaw  # noqa: F401
    except ImportError as exc:
        raise CdpError(GPAW_INSTALL) from exc
    return gpaw


def compute_crystal(atoms, recipe: Optional[dict] = None, name: str = "crystal"):
    """(atoms, DensityGrid, electrons expected, seconds) for one periodic structure."""
    require_gpaw()
    from gpaw import GPAW, PW, FermiDirac  # optional dependency (GPAW, not on PyPI wheels)

    rc = dict(RECIPE if recipe is None else recipe)
    if not np.all(atoms.pbc) or atoms.cell.rank < 3:
        raise CdpError(f"{name}: crystals need a 3-D periodic cell")
    at = atoms.copy()
    symbols = set(at.get_chemical_symbols())
    spin = bool(symbols & set(MAGNETIC))
    if spin and not np.any(at.get_initial_magnetic_moments()):
        at.set_initial_magnetic_moments([MAGNETIC.get(s, 0.0) for s in at.get_chemical_symbols()])
    t0 = time.perf_counter()
    calc = GPAW(
        mode=PW(float(rc["cutoff_eV"])),
        xc=str(rc["xc"]),
        kpts={"density": float(rc["kpt_density"]), "gamma": bool(rc["gamma"])},
        occupations=FermiDirac(float(rc["smearing_eV"])),
        spinpol=spin,
        txt=None,
    )
    at.calc = calc
    try:
        at.get_potential_energy()
    except Exception as exc:  # KohnShamConvergenceError and friends
        raise CdpError(f"{name}: GPAW SCF failed: {type(exc).__name__}: {exc}") from exc
    refine = int(rc["gridrefinement"])
    values = np.asarray(calc.get_pseudo_density(gridrefinement=refine), dtype=np.float64)
    magnet = None
    if spin:
        up = np.asarray(calc.get_pseudo_density(spin=0, gridrefinement=refine), dtype=np.float64)
        down = np.asarray(calc.get_pseudo_density(spin=1, gridrefinement=refine), dtype=np.float64)
        magnet = up - down
    grid = DensityGrid(cell=np.array(at.cell.array), values=values, spin=magnet, pbc=np.ones(3, dtype=bool))
    expected = float(calc.get_number_of_electrons())
    at.calc = None
    return at, grid, expected, time.perf_counter() - t0


def crystal_job(name: str, atoms, options: dict) -> dict:
    """Generation job: compute one crystal, write ``<name>.CHGCAR[.suffix]`` atomically, return its manifest entry."""
    at, grid, expected, seconds = compute_crystal(atoms, options.get("recipe"), name=name)
    found = grid.electrons
    if abs(found - expected) > 1e-3 * max(expected, 1.0):
        raise CdpError(f"{name}: grid integral {found:.4f} differs from the {expected:g} valence electrons")
    fname = name + ".CHGCAR" + (("." + options["compress"]) if options.get("compress") else "")
    write_chgcar(os.path.join(options["out_dir"], fname), at, grid)
    return {
        "file": fname,
        "pbc": [True, True, True],
        "formula": at.get_chemical_formula(),
        "shape": list(grid.shape),
        "electrons_expected": expected,
        "electrons_grid": round(found, 8),
        "spin": grid.spin is not None,
        "seconds": round(seconds, 3),
    }


def make_crystals(
    structures,
    out_dir: str,
    cutoff: float = 500.0,
    kpt_density: float = 4.0,
    compress: Optional[str] = "gz",
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
    report=None,
):
    """Make GPAW reference densities for ``[(name, ase.Atoms), ...]`` into ``out_dir`` (resumable)."""
    require_gpaw()
    if cutoff <= 0 or kpt_density <= 0:
        raise CdpError("--cutoff and --kpt-density must be positive")
    recipe = dict(RECIPE, cutoff_eV=float(cutoff), kpt_density=float(kpt_density))
    try:
        import gpaw  # optional dependency (GPAW, not on PyPI wheels)

        versions = {"gpaw": gpaw.__version__}
    except Exception:  # pragma: no cover
        versions = {}
    options = dict(recipe=recipe, compress=compress, out_dir=out_dir)
    header = {"generator": {"kind": "crystals", "recipe": recipe, "versions": versions}}
    return generate(structures, out_dir, crystal_job, options, recipe, workers=workers, threads=threads,
                    progress=progress, report=report, header=header)
