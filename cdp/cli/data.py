"""``cdp data``: make reference densities (PySCF molecules, GPAW crystals) and describe datasets."""

from __future__ import annotations

import json
import shlex

import click

from cdp.core.types import CdpError
from cdp.data.crystals import builtin_crystals, make_crystals
from cdp.data.info import dataset_info, format_info
from cdp.data.molecules import make_molecules
from cdp.data.structures import structures_from_files, structures_from_qm9
from cdp.data.verify import verify_regeneration


def _summary(rep) -> None:
    click.echo(
        f"{len(rep.made)} made, {len(rep.skipped)} already present, {len(rep.failed)} failed -> {rep.out_dir}"
    )
    for msg in rep.failed.values():
        click.echo(f"  failed: {msg}", err=True)


@click.group("data")
def command():
    """Reference densities and datasets."""


@command.group("make")
def make():
    """Generate reference densities with a DFT code."""


@make.command("molecules")
@click.option("--qm9", "qm9", default=None, help="QM9 indices, e.g. 1-500 or 1-10,42 (cdp uses 1-100000).")
@click.option("--from", "files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="ase-readable structure file (repeatable); frames of a multi-frame file become <stem>_<i>.")
@click.option("--spacing", default=0.12, show_default=True, type=float, help="Grid spacing bound in Å.")
@click.option("--vacuum", default=3.0, show_default=True, type=float, help="Vacuum on each side of the molecule in Å.")
@click.option("--compress", default="gz", show_default=True, type=click.Choice(["gz", "lz4", "zz", "none"]))
@click.option("--workers", default=1, show_default=True, type=int, help="Worker processes.")
@click.option("--threads", default=1, show_default=True, type=int, help="Threads per worker.")
@click.option("--allow-reserved-qm9", is_flag=True, help="Allow QM9 indices above 100000 (held out by cdp).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
def make_molecules_cmd(qm9, files, spacing, vacuum, compress, workers, threads, allow_reserved_qm9, progress, out_dir):
    """PySCF RKS-PBE / gth-dzvp / gth-pbe valence densities for molecules in a vacuum box."""
    if not qm9 and not files:
        raise CdpError("give --qm9 RANGE and/or --from FILE")
    structures, missing = [], []
    if qm9:
        found, missing = structures_from_qm9(qm9, allow_reserved=allow_reserved_qm9)
        structures += found
    structures += structures_from_files(files)
    for name in missing:
        click.echo(f"skipped: {name}: not in qm9pack (removed by the QM9 consistency check)", err=True)
    parts = ["cdp", "data", "make", "molecules"]
    parts += ["--qm9", qm9] if qm9 else []
    for f in files:
        parts += ["--from", f]
    parts += ["--spacing", repr(spacing), "--vacuum", repr(vacuum), "--compress", compress, "-o", out_dir]
    cmd = " ".join(shlex.quote(p) for p in parts)
    rep = make_molecules(
        structures, out_dir, spacing=spacing, vacuum=vacuum,
        compress=None if compress == "none" else compress, workers=workers, threads=threads,
        progress=progress, report=lambda m: click.echo(m, err=True), command=cmd,
    )
    _summary(rep)


@make.command("crystals")
@click.option("--from", "files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="ase-readable periodic structure file (repeatable).")
@click.option("--builtin", is_flag=True, help="Use cdp's built-in list of simple crystals.")
@click.option("--cutoff", default=500.0, show_default=True, type=float, help="Plane-wave cutoff in eV.")
@click.option("--kpt-density", default=4.0, show_default=True, type=float, help="k-points per Å⁻¹.")
@click.option("--compress", default="gz", show_default=True, type=click.Choice(["gz", "lz4", "zz", "none"]))
@click.option("--workers", default=1, show_default=True, type=int)
@click.option("--threads", default=1, show_default=True, type=int)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False))
def make_crystals_cmd(files, builtin, cutoff, kpt_density, compress, workers, threads, progress, out_dir):
    """GPAW plane-wave PAW PBE pseudo valence densities for crystals."""
    if not files and not builtin:
        raise CdpError("give --from FILE and/or --builtin")
    structures = (builtin_crystals() if builtin else []) + structures_from_files(files, periodic=True)
    rep = make_crystals(
        structures, out_dir, cutoff=cutoff, kpt_density=kpt_density,
        compress=None if compress == "none" else compress, workers=workers, threads=threads,
        progress=progress, report=lambda m: click.echo(m, err=True),
    )
    _summary(rep)


@command.command("info")
@click.argument("dataset", required=False)
@click.option("--split", "split", default=None, type=click.Path(exists=True, dir_okay=False), help="Split JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info_cmd(dataset, split, as_json):
    """Describe a dataset (default: the embedded one)."""
    info = dataset_info(dataset, split=split)
    click.echo(json.dumps(info, indent=1) if as_json else format_info(info))


@command.command("verify")
@click.argument("new", type=click.Path(exists=True))
@click.option("--reference", required=True, type=click.Path(exists=True),
              help="The earlier dataset directory (grids compared too) or its manifest.json (energies, electrons).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def verify_cmd(new, reference, as_json):
    """Check a regenerated dataset against an earlier one: SCF energy, electrons and ε_mae per structure."""
    res = verify_regeneration(new, reference)
    if as_json:
        click.echo(json.dumps(res, indent=1))
    else:
        for r in res["structures"]:
            eps = "-" if r["eps_mae_percent"] is None else f"{r['eps_mae_percent']:.2e} %"
            click.echo(f"{r['name']:20s} dE {r['energy_diff_hartree']:.1e} Ha  dN/N {r['electrons_rel_diff']:.1e}  "
                       f"eps_mae {eps}  {'ok' if r['ok'] else 'DIFFERS'}")
        click.echo(f"{len(res['structures'])} compared, {sum(not r['ok'] for r in res['structures'])} differ, "
                   f"{len(res['missing'])} not regenerated")
    if not res["ok"]:
        raise CdpError("the regenerated dataset differs from the reference beyond the tolerances")
