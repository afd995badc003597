"""The paper's L-sweep (ChargE3Net Fig. 3): ε_mae against the maximum rotation order L at equal channel budget.

Every L trains the same preset with ``lmax = L`` and the same ``mul`` (the channel budget split evenly over
the (l, parity) blocks, so the representation size stays about equal), on the same data, seed and budget,
each in its own spawned process; all are evaluated on the same test grids.  Writes ``lsweep.json``,
``lsweep.md`` and ``lsweep.png``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from cdp.core.checkpoint import load_checkpoint
from cdp.core.registry import get_registry
from cdp.core.types import CdpError
from cdp.evaluate.evaluate import evaluate
from cdp.predict import Predictor
from cdp.train import train_run

DEFAULT_LMAX = (0, 1, 2, 3, 4)
DEFAULT_PRESET = "chargee3net-cpu"
DEFAULT_TIME_BUDGET = 60.0  # training seconds per L when neither steps nor a time budget is given
LSWEEP_FILES = ("lsweep.json", "lsweep.md", "lsweep.png")


# -- shared file helpers (also used by cdp.evaluate.scaling) -------------------------------------------
def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_figure(fig, path: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG through a temporary file in the same directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_default(obj):
    """JSON for numpy scalars and arrays."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def prepare_out(out: Optional[os.PathLike], files: Sequence[str], force: bool, prefix: str) -> Path:
    """Create the output directory; refuse one that already holds these results unless ``force``."""
    out = Path(out) if out is not None else Path(time.strftime(f"{prefix}-%Y%m%d-%H%M%S"))
    if out.exists() and not out.is_dir():
        raise CdpError(f"{out}: exists and is not a directory")
    if any((out / f).exists() for f in files) and not force:
        raise CdpError(f"{out}: already holds {files[0]} (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_lmax(text: str) -> List[int]:
    """``"0,1,2"`` or ``"0-4"`` (or a mix) → sorted distinct L values."""
    values: set = set()
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        try:
            if "-" in part:
                lo, hi = (int(s) for s in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                values.update(range(lo, hi + 1))
            else:
                values.add(int(part))
        except ValueError:
            raise CdpError(f"--lmax: cannot read '{part}' (give integers like 0,1,2 or a range 0-4)") from None
    if not values:
        raise CdpError("--lmax: no value given")
    if min(values) < 0:
        raise CdpError(f"--lmax: L must be ≥ 0, got {min(values)}")
    return sorted(values)


# -- one L, in its own process -------------------------------------------------------------------------
def model_config(preset: str, lmax: int, mul: Optional[int]) -> dict:
    """The training config's ``model`` entry: the preset with ``lmax`` (and ``mul`` when given) overridden."""
    backbone = {"lmax": int(lmax)}
    if mul is not None:
        backbone["mul"] = int(mul)
    return {"preset": preset, "backbone": backbone}


def run_lmax(lmax: int, out: Path, preset: str, mul: Optional[int], data: Optional[str], steps: Optional[int],
             time_budget: Optional[float], seed: int, device: Optional[str]) -> dict:
    """Train and evaluate the model at one L in this process; returns its row of the sweep."""
    name = f"L{lmax}"
    config = {"model": model_config(preset, lmax, mul), "seed": int(seed), "dataset": data, "progress": False}
    if steps is not None:
        config["steps"] = int(steps)
        config["log_every"] = max(1, min(10, int(steps) // 10))
    else:
        config["time_budget"] = float(time_budget)
    run_dir = out / "work" / f"run-{name}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    result = train_run(config, run_dir=run_dir, device=device, progress=False)
    ckpt = out / "models" / f"{name}.ckpt"
    shutil.copyfile(result.best_checkpoint or result.last_checkpoint, ckpt)
    shutil.copyfile(run_dir / "log.jsonl", out / "logs" / f"{name}.jsonl")
    model, _ = load_checkpoint(ckpt)
    backbone = model.backbone
    ev = evaluate(Predictor(model, device=device or "cpu"), data=data, split="test", progress=False)
    points = sum(int(np.prod(s["grid_shape"])) for s in ev["structures"])
    seconds = sum(float(s["seconds"]) for s in ev["structures"])
    return {
        "lmax": int(lmax),
        "mul": int(backbone.mul),
        "hidden_irreps": str(backbone.irreps_hidden),
        "hidden_dim": int(backbone.irreps_hidden.dim),
        "parameters": int(model.num_parameters()),
        "steps": int(result.steps),
        "train_seconds": float(result.train_seconds),
        "train_probes_per_s": float(result.probes_per_second),
        "inference_probes_per_s": points / seconds if seconds > 0 else None,
        "evaluation_seconds": seconds,
        "eps_mae": ev["eps_mae"],
        "structures": [{"name": s["name"], "eps_mae": s["eps_mae"]} for s in ev["structures"]],
    }


def _worker(lmax: int, out: str, preset: str, mul: Optional[int], data: Optional[str], steps: Optional[int],
            time_budget: Optional[float], seed: int, device: Optional[str], threads: int, queue) -> None:
    """Child process: one L; the result (or a one-line error) goes back through ``queue``."""
    try:
        torch.set_num_threads(max(1, int(threads)))
        row = run_lmax(lmax, Path(out), preset, mul, data, steps, time_budget, seed, device)
        row["peak_rss_mb"] = peak_rss_mb()
        queue.put(("ok", row))
    except CdpError as exc:
        queue.put(("error", str(exc)))
    except BaseException as exc:  # report, never hang the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


class _ListQueue(list):
    """A stand-in for a process queue when a worker runs in this process."""

    def put(self, item) -> None:
        self.append(item)


def run_in_process(target: Callable, args: tuple, isolate: bool = True):
    """Run ``target(*args, queue)`` in a spawned process (or here, when not ``isolate``); returns what it
    put on the queue."""
    if not isolate:
        threads = torch.get_num_threads()
        queue = _ListQueue()
        try:
            target(*args, queue)
        finally:
            torch.set_num_threads(threads)
        return queue[0] if queue else ("error", "worker returned nothing")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        while True:
            try:
                return queue.get(timeout=1.0)
            except Exception:  # queue.Empty: is the child still alive?
                if not proc.is_alive():
                    try:
                        return queue.get(timeout=1.0)
                    except Exception:
                        return ("error", f"worker process died (exit code {proc.exitcode})")
    finally:
        proc.join()


# -- the sweep ------------------------------------------------------------------------------------------
def lsweep(
    lmax: Sequence[int] = DEFAULT_LMAX,
    preset: str = DEFAULT_PRESET,
    mul: Optional[int] = None,
    data: Optional[str] = None,
    steps: Optional[int] = None,
    time_budget: Optional[float] = None,
    seed: int = 0,
    out: Optional[os.PathLike] = None,
    force: bool = False,
    device: Optional[str] = None,
    threads: Optional[int] = None,
    echo: Callable = print,
    isolate: bool = True,
) -> dict:
    """Train and evaluate ``preset`` at every L in ``lmax`` with equal ``mul``, data, seed and budget each.

    ``mul`` defaults to the preset's own; the budget is ``steps`` or ``time_budget`` seconds per L
    (default 60 s).  ``isolate=False`` runs every L in this process (quicker to start; peak RSS is then this
    process's).  Returns the sweep (also written to ``out/lsweep.json``).
    """
    if steps is not None and time_budget is not None:
        raise CdpError("give either --steps or --time-budget, not both")
    if steps is not None and int(steps) < 1:
        raise CdpError("--steps must be at least 1")
    if time_budget is not None and time_budget <= 0:
        raise CdpError("--time-budget must be positive")
    lvals = sorted({int(v) for v in lmax})
    if not lvals or min(lvals) < 0:
        raise CdpError("lmax: give one or more L values ≥ 0")
    if mul is not None and int(mul) < 1:
        raise CdpError(f"--mul must be a positive integer, got {mul}")
    cfg = get_registry().preset(preset)
    if cfg.get("backbone", {}).get("name") != "chargee3net":
        raise CdpError(f"preset '{preset}' is not a ChargE3Net model (the L-sweep varies ChargE3Net's lmax)")
    mul = int(mul) if mul is not None else int(cfg["backbone"].get("mul", 500))
    if steps is None and time_budget is None:
        time_budget = DEFAULT_TIME_BUDGET
    outdir = prepare_out(out, LSWEEP_FILES, force, "cdp-lsweep")
    for sub in ("models", "logs", "work"):
        (outdir / sub).mkdir(exist_ok=True)
    threads = int(threads or 1)  # one thread per process: robust when other work shares the cores
    rows, errors = [], {}
    for lv in lvals:
        echo(f"[L={lv}] training {preset} with lmax={lv}, mul={mul} ...")
        status, payload = run_in_process(
            _worker, (lv, str(outdir), preset, mul, data, steps, time_budget, seed, device, threads), isolate)
        if status == "ok":
            rows.append(payload)
            e = payload["eps_mae"]
            echo(f"[L={lv}] eps_mae {e['mean']:.3f} % after {payload['steps']} steps ({payload['parameters']:,} parameters)")
        else:
            errors[f"L{lv}"] = payload
            echo(f"[L={lv}] failed: {payload.splitlines()[0]}")
    if not rows:
        raise CdpError("every L failed: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in errors.items()))
    result = {
        "experiment": "lsweep",
        "preset": preset,
        "mul": mul,
        "data": data or "embedded",
        "seed": int(seed),
        "budget": {"steps": int(steps)} if steps is not None else {"time_budget_s": float(time_budget)},
        "threads": threads,
        "isolated": bool(isolate),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "rows": rows,
        "errors": errors,
    }
    text = write_lsweep(outdir, result)
    echo(text)
    echo(f"results: {outdir}")
    result["out"] = str(outdir)
    return result


def _pm(e: dict) -> str:
    mean, err = e.get("mean"), e.get("stderr")
    return f"{mean:.3f}" + (f" ± {err:.3f}" if err is not None else "")


def lsweep_table(result: dict) -> str:
    """The sweep as a markdown table (also printed on the terminal)."""
    head = "| L | hidden irreps | hidden dim | parameters | steps | train s | ε_mae % (mean ± stderr) | inference probes/s | peak RSS MB |"
    rows = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in result["rows"]:
        ips = r.get("inference_probes_per_s")
        rows.append(
            f"| {r['lmax']} | {r['hidden_irreps']} | {r['hidden_dim']} | {r['parameters']:,} | {r['steps']} | {r['train_seconds']:.1f} | "
            f"{_pm(r['eps_mae'])} | {'-' if ips is None else format(ips, '.0f')} | {r.get('peak_rss_mb', 0):.0f} |"
        )
    return "\n".join(rows)


def write_lsweep(outdir: Path, result: dict) -> str:
    """Write lsweep.png, lsweep.json and lsweep.md; returns the table."""
    outdir = Path(outdir)
    plot_lsweep(result, outdir / "lsweep.png")
    text = lsweep_table(result)
    atomic_text(outdir / "lsweep.json", json.dumps(result, indent=2, default=json_default))
    budget = ", ".join(f"{k} = {v}" for k, v in result["budget"].items())
    md = [
        "# L-sweep (ChargE3Net, paper Fig. 3)",
        "",
        f"Preset {result['preset']} with lmax = L and mul = {result['mul']} for every L · data: {result['data']} "
        f"(test split) · seed {result['seed']} · budget {budget} per L · {result['threads']} threads",
        "",
        text,
        "",
        "ε_mae = 100·Σ|ρ−ρ̂|/Σ|ρ| over each full test grid (paper Eq. 5); mean ± standard error over structures.",
        "Channels per (l, parity) = round(mul / (L+1) / (2l+1)), so the hidden representation stays about the",
        "same size across L. Each L trained and evaluated in its own process (peak RSS is that process's).",
        "",
    ]
    if result.get("errors"):
        md += ["## Failed", ""] + [f"- {k}: {v.splitlines()[0]}" for k, v in result["errors"].items()] + [""]
    md += ["![lsweep](lsweep.png)", ""]
    atomic_text(outdir / "lsweep.md", "\n".join(md))
    return text


def plot_lsweep(result: dict, path: Path) -> None:
    """ε_mae against L with standard-error bars; parameters on a twin axis."""
    import matplotlib  # start-up: matplotlib loads only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: matplotlib loads only when a figure is drawn

    rows = result["rows"]
    L = [r["lmax"] for r in rows]
    mean = [r["eps_mae"]["mean"] for r in rows]
    err = [r["eps_mae"].get("stderr") or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.errorbar(L, mean, yerr=err, marker="o", capsize=4, color="C0", label="ε_mae (test)")
    ax.set_xlabel("L (maximum rotation order)")
    ax.set_ylabel("ε_mae (%)", color="C0")
    ax.set_xticks(L)
    twin = ax.twinx()
    twin.plot(L, [r["parameters"] for r in rows], marker="s", ls="--", color="C1", label="parameters")
    twin.set_ylabel("parameters", color="C1")
    budget = ", ".join(f"{k} {v}" for k, v in result["budget"].items())
    ax.set_title(f"{result['preset']}, mul {result['mul']}, {budget}", fontsize=9)
    fig.tight_layout()
    try:
        atomic_figure(fig, path)
    finally:
        plt.close(fig)
