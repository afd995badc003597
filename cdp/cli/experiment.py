"""``cdp experiment``: the paper's experiments as commands (L-sweep, runtime scaling)."""

from __future__ import annotations

from pathlib import Path

import time
import click

from cdp.evaluate.experiments import DEFAULT_PRESET, DEFAULT_TIME_BUDGET, lsweep, parse_lmax
from cdp.evaluate.scaling import DEFAULT_MAX_ATOMS, DEFAULT_MODEL, DEFAULT_PROBE_BATCH, DEFAULT_PROBES_PER_ATOM
from cdp.evaluate.scaling import scaling_study


@click.group("experiment")
def command() -> None:
    """Run the paper's experiments: the L-sweep (Fig. 3) and the runtime-scaling study (Fig. 6)."""


@command.command("lsweep")
@click.option("--lmax", default="0-4", show_default=True, help="L values: a list (0,1,2) and/or ranges (0-4).")
@click.option("--preset", default=DEFAULT_PRESET, show_default=True, help="ChargE3Net preset trained at every L.")
@click.option("--mul", type=int, default=None, help="Channel budget kept equal across L (default: the preset's).")
@click.option("--data", default=None, help="Dataset directory or list file (default: the embedded dataset).")
@click.option("--steps", type=int, default=None, help="Training steps per L.")
@click.option("--time-budget", type=float, default=None,
              help=f"Training seconds per L (default {DEFAULT_TIME_BUDGET:.0f} when --steps is not given).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Output directory (default: a new cdp-lsweep-<timestamp>/).")
@click.option("--force", is_flag=True, help="Overwrite results that already exist in --out.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="Torch threads per training process (1 is robust when other work shares the cores).")
def lsweep_cmd(lmax, preset, mul, data, steps, time_budget, seed, out, force, device, threads):
    """Train and evaluate ChargE3Net at each L with the same channel budget, data, seed and budget."""
    lsweep(lmax=parse_lmax(lmax), preset=preset, mul=mul, data=data, steps=steps, time_budget=time_budget, seed=seed,
           out=out, force=force, device=device, threads=threads, echo=click.echo)


@command.command("scaling")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Preset (seeded random weights) or checkpoint file.")
@click.option("--structure", type=click.Path(), default=None,
              help="Periodic structure file whose supercells are timed (default: Si diamond, 8-atom cell).")
@click.option("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS, show_default=True, help="Largest supercell.")
@click.option("--probes-per-atom", type=int, default=DEFAULT_PROBES_PER_ATOM, show_default=True)
@click.option("--probe-batch", type=int, default=DEFAULT_PROBE_BATCH, show_default=True, help="Probes per decode call.")
@click.option("--threads", type=int, default=1, show_default=True, help="Torch threads in each timing process.")
@click.option("--backend", type=click.Choice(["fast", "e3nn"]), default=None,
              help="ChargE3Net convolution backend (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Output directory (default: a new cdp-scaling-<timestamp>/).")
@click.option("--force", is_flag=True, help="Overwrite results that already exist in --out.")
def scaling_cmd(model, structure, max_atoms, probes_per_atom, probe_batch, threads, backend, seed, out, force):
    """Time graph construction, encoder and decoder on n×n×n supercells; fit time ∝ N^α."""
    out = Path(out) if out is not None else Path(time.strftime("cdp-scaling-%Y%m%d-%H%M%S"))
    scaling_study(model=model, structure=structure, max_atoms=max_atoms, probes_per_atom=probes_per_atom,
                  threads=threads, backend=backend, out=out, probe_batch=probe_batch, seed=seed, force=force,
                  echo=click.echo)
