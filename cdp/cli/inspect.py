"""``cdp inspect FILE``: summarise a CHGCAR or cube density file."""

from __future__ import annotations

import json
import sys

import click

from cdp.core.types import CdpError
from cdp.io import describe


def _fail(message: str) -> None:
    """Print one ``error:`` line to stderr and exit with status 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _text(info: dict) -> str:
    lines = [
        f"file:       {info['file']} ({info['format']})",
        f"structure:  {info['formula']}, {info['natoms']} atoms, pbc {info['pbc']}",
        "cell (Å):   " + "\n            ".join(" ".join(f"{x:12.6f}" for x in row) for row in info["cell"]),
        f"volume:     {info['volume']:.6f} Å³",
        f"grid:       {' x '.join(str(n) for n in info['grid_shape'])} ({info['grid_points']} points)",
        "spacing:    " + ", ".join(f"{s:.5f}" for s in info["spacing"]) + " Å",
        f"electrons:  {info['electrons']:.6f}",
        f"density:    min {info['density_min']:.6g}, max {info['density_max']:.6g} e/Å³",
    ]
    lines.append(f"frames:     {info['frames']}" + (f" (showing step {info['frame']})" if info["frames"] > 1 else ""))
    if info.get("noncollinear"):
        mx, my, mz = info["magnetisation_vector"]
        lines.append(f"spin:       non-collinear (magnetisation vector {mx:.6f} {my:.6f} {mz:.6f} μB)")
    elif info["spin"]:
        lines.append(
            f"spin:       yes (magnetisation {info['magnetisation']:.6f} μB; "
            f"min {info['spin_min']:.6g}, max {info['spin_max']:.6g} e/Å³)"
        )
    else:
        lines.append("spin:       no")
    pair = info.get("closest_pair")
    if pair is not None:
        warn = "  (closer than 0.5 Å: wrong cell or pbc? see --no-pbc)" if pair["distance"] < 0.5 else ""
        lines.append(f"closest:    {pair['text']}{warn}")
    if info["format"] == "chgcar":
        lines.append(f"augmentation occupancies: {'yes' if info['augmentation'] else 'no'}")
    return "\n".join(lines)


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
@click.option("--format", "fmt", type=click.Choice(["chgcar", "cube"]), default=None, help="Override the format.")
@click.option(
    "--units",
    type=click.Choice(["bohr", "angstrom"]),
    default="bohr",
    help="Cube value units: e/Bohr³ (standard) or e/Å³ (DeepDFT predictions).",
)
@click.option("--frame", "frame", type=int, default=-1, show_default=True,
              help="Ionic step of a multi-step CHG/CHGCAR (Python indexing: 0 first, -1 last).")
@click.option("--no-pbc", "no_pbc", is_flag=True,
              help="Read the structure as a molecule (no periodic images), whatever its sidecar says.")
def command(file: str, as_json: bool, fmt, units: str, frame: int, no_pbc: bool) -> None:
    """Print the structure, grid shape, spacing, electron count, density range, closest atoms, spin and step
    count of FILE."""
    try:
        info = describe(file, format=fmt, units=units, frame=frame, pbc=False if no_pbc else None)
    except CdpError as exc:
        _fail(str(exc))
    click.echo(json.dumps(info, indent=1) if as_json else _text(info))
