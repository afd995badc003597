"""``cdp compare``: the headline command, a thin wrapper over :func:`cdp.evaluate.compare.compare`."""

from __future__ import annotations

import click
import torch

from cdp.evaluate.compare import DEFAULT_MODELS, DEFAULT_STEPS, DEFAULT_TIME_BUDGET, compare


@click.command("compare")
@click.option("--models", default=",".join(DEFAULT_MODELS), show_default=True,
              help="Comma-separated model names (presets) or name=PATH.ckpt to evaluate a given checkpoint.")
@click.option("--size", type=click.Choice(["cpu", "paper"]), default=None,
              help="Preset size: the -cpu variants or the published sizes (default: cpu, or paper on a GPU).")
@click.option("--data", default=None, help="Dataset directory or list file (default: the embedded dataset).")
@click.option("--steps", type=int, default=None,
              help="Training steps per model (default: each -cpu preset's calibrated count, "
                   + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()) + ").")
@click.option("--time-budget", type=float, default=None,
              help=f"Training seconds per model instead of steps (default {DEFAULT_TIME_BUDGET:.0f} for models "
                   "without calibrated steps).")
@click.option("--out", type=click.Path(), default=None, help="Report directory (default: a new cdp-compare-<timestamp>/).")
@click.option("--force", is_flag=True, help="Overwrite a report that already exists in --out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="CPU threads per model process (1 is robust when other work shares the cores).")
def command(models, size, data, steps, time_budget, out, force, seed, device, threads):
    """Train models on the same data, seed and budget; evaluate them on the same test grids, side by side."""
    if size is None:
        size = "paper" if torch.cuda.is_available() and device != "cpu" else "cpu"
    compare(models=models, size=size, data=data, steps=steps, time_budget=time_budget, out=out, force=force,
            seed=seed, device=device, threads=threads, echo=click.echo)
