"""``cdp train CONFIG.yaml [--run DIR] [--resume DIR] [--device cpu|cuda]``: a thin wrapper of :func:`cdp.train.train`.

Under ``torchrun`` (RANK / WORLD_SIZE set) the same command trains with DDP, one process per rank:
``torchrun --nproc_per_node=N -m cdp.cli.main train CONFIG.yaml --run-dir DIR`` (torchrun's own argument
parser would take ``--run`` for its ``--run-path``, so spell the option ``--run-dir`` there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ase.data import chemical_symbols
import click

from cdp.cli.signals import SIGINT_STATUS, SIGTERM_STATUS, Terminated


@click.command("train")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--run", "--run-dir", "run_dir", type=click.Path(file_okay=False),
              help="Run directory (default: cdp-train-<timestamp>); under torchrun spell it --run-dir.")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory exactly.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option("--steps", type=int, default=None, help="Override the config's number of steps.")
@click.option("--time-budget", type=float, default=None, help="Override the config's time budget (seconds).")
@click.option("--no-progress", is_flag=True, help="No progress bar (it is off anyway when not on a terminal).")
def command(config: Optional[str], run_dir: Optional[str], resume: Optional[str], device: Optional[str],
            steps: Optional[int], time_budget: Optional[float], no_progress: bool) -> None:
    """Train a model from CONFIG.yaml (or continue one with --resume DIR)."""
    from cdp.core.types import CdpError  # start-up: loaded when the command runs, not for --help
    from cdp.train.config import load_config_file  # start-up: loaded when the command runs, not for --help
    from cdp.train.trainer import CONFIG_FILE, train_run  # start-up: loaded when the command runs, not for --help

    if config is None and resume is None:
        raise CdpError("give a CONFIG.yaml to train, or --resume DIR to continue a run")
    if resume is not None and run_dir is not None:
        raise CdpError("--run and --resume exclude each other (a resumed run continues in its own directory)")
    cfg = load_config_file(config) if config is not None else None
    if steps is not None or time_budget is not None:
        if cfg is None:
            cfg = load_config_file(Path(resume) / CONFIG_FILE)
            cfg["split"] = None  # the run's split is kept on resume
        if steps is not None:
            cfg["steps"] = steps
        if time_budget is not None:
            cfg["time_budget"] = time_budget
    try:
        result = train_run(cfg, run_dir=run_dir, resume=resume, device=device, progress=False if no_progress else None)
    except KeyboardInterrupt as exc:  # the trainer has printed the one line saying how to resume
        raise SystemExit(SIGTERM_STATUS if isinstance(exc, Terminated) else SIGINT_STATUS) from None
    if int(os.environ.get("RANK", "0")) == 0 and resume is not None and result.steps_taken == 0:
        click.echo(f"{resume}: the run already holds step {result.steps} and stops there ({result.stopped_by}); "
                   f"nothing trained (raise --steps or --time-budget to train further)")
    elif int(os.environ.get("RANK", "0")) == 0:
        best = f", best {result.best_metric:.4g}% val NMAPE at step {result.best_step}" if result.best_metric is not None else ""
        if result.prior is not None:
            click.echo(prior_line(result.prior))
        load = f", load average {result.load_average[0]:.2f}" if result.load_average else ""
        click.echo(f"trained {result.steps} steps in {result.train_seconds:.1f} s "
                   f"({result.probes_per_second:.0f} probes/s{load}){best}; run: {result.run_dir}")


def prior_line(record: dict) -> str:
    """One line describing a fitted atomic prior (from its training-log record)."""
    counts = ", ".join(f"{_symbol(z)} {v:g}" for z, v in record["electrons"].items())
    val = record.get("val_nmape")
    return (f"prior: atomic reference densities, n_Z {counts} ({record['electrons_source']}), fit residual "
            f"{100 * record['relative_l2']:.2f} % (L2)" + (f", prior alone {val:.2f} % val NMAPE" if val is not None else ""))


def _symbol(z) -> str:
    return chemical_symbols[int(z)]
