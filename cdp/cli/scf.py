"""``cdp scf``: the data recipe's PySCF SCF from a predicted density and from PySCF's own guesses, side by side.

Each guess starts the same SCF (GTH-PBE, gth-dzvp, PBE, density fitting, grids level 1, conv_tol 1e-9);
the table and ``--json`` give PySCF's iteration count (``mf.cycles``), SCF and guess-building seconds and
the final energy. Exit 0 only when every run converges to the same energy within 1e-6 Ha.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cdp.cli.predict import read_structure, structure_name
from cdp.core.atomic import atomic_write_bytes
from cdp.core.types import CdpError
from cdp.dft.runs import ENERGY_TOLERANCE, check_guesses, check_molecule, compare_guesses
from cdp.predict import check_elements, load_model


@click.command("scf")
@click.argument("structure")
@click.option("--model", "model", default=None,
              help="Checkpoint file, shipped model name (demo) or preset; needed by the 'cdp' guess.")
@click.option("--guess", "guess", default="cdp,minao", show_default=True,
              help="Comma-separated guesses: cdp, minao (PySCF's default), atom, huckel, mod_huckel, 1e, sap.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the report to OUT.")
@click.option("--charge", type=int, default=0, show_default=True, help="Molecular charge (e); open shells are refused.")
@click.option("--gradient", type=click.Choice(["auto", "autograd", "fd"]), default="auto", show_default=True,
              help="∇ρ of the model for PBE: autograd through the decoder, or central differences (h = 1e-3 Å).")
@click.option("--rescale/--no-rescale", default=True, show_default=True,
              help="Scale the predicted density to integrate to N on PySCF's grid.")
@click.option("--device", "device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
def command(structure, model, guess, json_out, charge, gradient, rescale, device) -> None:
    """Run the recipe's SCF for STRUCTURE (a molecule) from each guess and compare iterations and energies."""
    guesses = check_guesses(guess.split(","))
    if "cdp" in guesses and model is None:
        raise CdpError("guess 'cdp' needs --model")
    if json_out is not None and not Path(json_out).parent.is_dir():
        raise CdpError(f"{Path(json_out).parent}: output directory does not exist")
    path = Path(structure)
    atoms = read_structure(path)
    name = structure_name(path)
    check_molecule(atoms, charge, str(path))
    predictor = None
    if "cdp" in guesses:
        predictor = load_model(model, device=device)
        check_elements(predictor, atoms, str(path))
    res = compare_guesses(atoms, predictor, guesses, charge=charge, gradient=gradient, rescale=rescale,
                          name=name, model_name=None if model is None else str(model)).report
    d = res["density"]
    if d is not None:
        click.echo(f"{name}: predicted density integrates to {d['electrons_predicted']:.4f} of {d['electrons']:g} "
                   f"electrons on PySCF's grid ({d['grid_points']} points), "
                   f"{'rescaled to N' if d['rescaled'] else 'not rescaled'}; ∇ρ by {d['gradient']}; "
                   f"inference {res['inference_seconds']:.1f} s")
    click.echo(f"{'guess':<11} {'iterations':>10} {'converged':>9} {'energy (Ha)':>18} {'SCF s':>8} {'guess s':>8}")
    for r in res["runs"]:
        click.echo(f"{r['guess']:<11} {r['iterations']:>10} {str(r['converged']):>9} {r['energy_hartree']:>18.10f} "
                   f"{r['scf_seconds']:>8.2f} {r['guess_seconds']:>8.2f}")
    if json_out is not None:
        atomic_write_bytes(Path(json_out), (json.dumps(res, indent=1) + "\n").encode("utf-8"))
    if not res["energies_agree"]:
        bad = [r["guess"] for r in res["runs"] if not r["converged"]]
        if bad:
            raise CdpError(f"{name}: the SCF from {', '.join(bad)} did not converge in {res['recipe']['max_cycle']} cycles")
        raise CdpError(f"{name}: the runs end {res['energy_spread_hartree']:.2e} Ha apart "
                       f"(more than {ENERGY_TOLERANCE:g} Ha)")
