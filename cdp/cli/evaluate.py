"""``cdp evaluate``: ε_mae, ζ and electron counts of a model on full reference grids, as a table and JSON."""

from __future__ import annotations

from pathlib import Path
import sys
from typing import Optional

import click

from cdp.core.types import CdpError
from cdp.distributed import evaluate_sharded, session, torchrun_entry
from cdp.evaluate.evaluate import CheckedItems, as_predictor, evaluate, write_json
from cdp.predict import resolve_device


def _num(x, fmt: str) -> str:
    return "-" if x is None or x != x or x in (float("inf"), float("-inf")) else format(x, fmt)


def _row(r: dict) -> str:
    spin = f" {_num(r.get('eps_mae_spin'), '9.3f')}" if "eps_mae_spin" in r else ""
    return (f"{r['name'][:28]:<28} {_num(r['eps_mae'], '9.3f')} {_num(r['zeta'], '7.4f')} "
            f"{_num(r['electrons_ref'], '11.4f')} {_num(r['electrons_pred'], '11.4f')} {r['seconds']:8.2f}{spin}")


HEADER = f"{'structure':<28} {'eps_mae%':>9} {'zeta':>7} {'electrons':>11} {'predicted':>11} {'seconds':>8}"


@click.command("evaluate")
@click.option("--model", "model", required=True, help="Checkpoint file, shipped model name (demo) or preset.")
@click.option("--data", "data", default=None, help="Dataset (directory, .tar, .txt list, file); default: the embedded one.")
@click.option("--split", "split", default="test", show_default=True,
              help="Dataset split (train, validation, test, or all); a dataset without splits is used whole.")
@click.option("--no-pbc", "no_pbc", is_flag=True,
              help="Treat every structure as a molecule (no periodic images), whatever its file says.")
@click.option("--device", "device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--probe-batch", "probe_batch", type=click.IntRange(min=1), default=None,
              help="Grid points per decoder batch (memory vs speed).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON here.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@torchrun_entry
def command(model: str, data: Optional[str], split: str, no_pbc: bool, device: str, probe_batch: Optional[int],
            json_out: Optional[str], progress: Optional[bool]) -> None:
    """Evaluate MODEL on the full density grids of a dataset: ε_mae per structure and its summary."""
    if json_out and not Path(json_out).resolve().parent.is_dir():
        raise CdpError(f"{json_out}: the directory for the JSON output does not exist")

    show = sys.stderr.isatty() if progress is None else progress
    resolve_device(device)
    # structures first (atoms on top of each other are refused), then the model: a refusal is the only output
    items = CheckedItems(data, split, pbc=False if no_pbc else None)
    predictor = as_predictor(model, device=device, probe_batch=probe_batch)  # a bad model fails before any output
    predictor.name = model  # the report names the model as the user gave it

    if session().is_main:
        click.echo(HEADER)
    if session().enabled:  # under torchrun: structures sharded across ranks, metrics gathered on rank 0
        result = evaluate_sharded(predictor, data=data, split=split, pbc=False if no_pbc else None,
                                  probe_batch=probe_batch, on_structure=lambda r: click.echo(_row(r)))
        if result is None:
            return
    else:
        result = evaluate(predictor, data=items, device=device, probe_batch=probe_batch, progress=show,
                          on_structure=lambda r: click.echo(_row(r)))
    s = result["eps_mae"]
    n = len(result["structures"])
    stderr = f" ± {_num(s['stderr'], '.3f')}" if s["stderr"] is not None else ""
    click.echo(f"eps_mae over {n} structure{'s' if n != 1 else ''} ({result['data']}, split {result['split']}): "
               f"mean {_num(s['mean'], '.3f')}{stderr} %, median {_num(s['median'], '.3f')} %, max {_num(s['max'], '.3f')} %")
    if json_out:
        write_json(json_out, result)
        click.echo(f"wrote {json_out}")
