"""``cdp compare``: train several models on the same data, seed and budget, evaluate them on the same grids.

Each model trains and evaluates in its own process (so its peak memory is its own); the parent gathers
the results into ``report.json``, ``report.md`` and figures.  A worker that dies without a result (a
crash in native code, the OOM killer) is detected and its model reported as failed; any failure makes
the comparison end with an error after the report of the other models is written.
"""

from __future__ import annotations

import multiprocessing as mp
import math
import os
import queue as queue_module
import resource
import shutil
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from cdp.core.malloc import keep_freed_memory
from cdp.core.registry import get_registry
from cdp.core.types import CdpError
from cdp.data import load_dataset
from cdp.evaluate.evaluate import evaluate, evaluate_prior
from cdp.evaluate.report import write_report
from cdp.predict import load_model
from cdp.train import train_run

DEFAULT_MODELS = ("chargee3net", "equideepdft", "invdeepdft")
# Training steps per -cpu preset when neither --steps nor --time-budget is given: about 150 s of training
# each on one idle core (CPU time per step measured with OMP_NUM_THREADS=1 on the embedded data: chargee3net-cpu
# 133 ms, invdeepdft-cpu 57 ms, equideepdft-cpu 41 ms), so the three models, their evaluation and process
# start-up stay within 10 minutes on an idle 2-core machine.  Steps, unlike seconds, give the same models on
# a busy machine as on an idle one.
DEFAULT_STEPS = {"chargee3net-cpu": 1100, "invdeepdft-cpu": 2500, "equideepdft-cpu": 3500}
DEFAULT_TIME_BUDGET = 110.0  # seconds of training for a model without calibrated steps (paper sizes, plugins)
REPORT_FILES = ("report.md", "report.json")


@dataclass
class ModelSpec:
    """One entry of ``--models``: a preset trained here, or ``name=PATH.ckpt`` evaluated as given."""

    name: str
    preset: Optional[str]
    checkpoint: Optional[str]


def parse_models(text: str, size: str = "cpu") -> List[ModelSpec]:
    """``"a,b=path.ckpt"`` → specs; a bare name picks the ``-cpu`` preset unless ``size == "paper"``."""
    if size not in ("cpu", "paper"):
        raise CdpError(f"--size must be cpu or paper, got '{size}'")
    reg = get_registry()
    specs, seen = [], set()
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        if "=" in item:
            name, path = (s.strip() for s in item.split("=", 1))
            if not Path(path).is_file():
                raise CdpError(f"--models: {name}={path}: no such checkpoint file")
            spec = ModelSpec(name, None, path)
        else:
            name = item
            preset = name if (size == "paper" or name.endswith("-cpu")) else f"{name}-cpu"
            if preset not in reg.presets:
                preset = name if name in reg.presets else preset
            if preset not in reg.presets:  # name what was typed, not the -cpu variant it was looked up as
                raise CdpError(f"--models: unknown model '{name}' (presets: {', '.join(sorted(reg.presets))})")
            spec = ModelSpec(name, preset, None)
        if spec.name in seen:
            raise CdpError(f"--models: '{spec.name}' is named twice")
        seen.add(spec.name)
        specs.append(spec)
    if not specs:
        raise CdpError("--models: no model named")
    return specs


def model_budget(spec: ModelSpec, steps: Optional[int], time_budget: Optional[float]) -> Tuple[Optional[int], Optional[float]]:
    """(steps, time budget in s) for one model: ``--steps`` or ``--time-budget`` when given, else the
    preset's calibrated step count (:data:`DEFAULT_STEPS`), else :data:`DEFAULT_TIME_BUDGET` seconds."""
    if steps is not None or time_budget is not None:
        return steps, time_budget
    if spec.preset in DEFAULT_STEPS:
        return DEFAULT_STEPS[spec.preset], None
    return None, DEFAULT_TIME_BUDGET


def _load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def default_out_dir() -> Path:
    return Path(time.strftime("cdp-compare-%Y%m%d-%H%M%S"))


def prepare_out_dir(out: Optional[os.PathLike], force: bool) -> Path:
    """Create the report directory; refuse one that already holds a report unless ``force``."""
    out = Path(out) if out is not None else default_out_dir()
    if any((out / f).exists() for f in REPORT_FILES) and not force:
        raise CdpError(f"{out}: already holds a report (use --force to overwrite)")
    for sub in ("models", "logs", "work"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker(spec: ModelSpec, out: str, data: Optional[str], steps: Optional[int], time_budget: Optional[float],
            seed: int, device: Optional[str], threads: int, queue) -> None:
    """Train (unless a checkpoint is given), evaluate on the test split, save a density slice; report via queue."""
    try:
        keep_freed_memory()  # per-batch temporaries reused, as in the CLI

        torch.set_num_threads(max(1, threads))
        result = run_one(spec, Path(out), data, steps, time_budget, seed, device)
        result["peak_rss_mb"] = _peak_rss_mb()
        queue.put(("ok", spec.name, result))
    except CdpError as exc:
        queue.put(("error", spec.name, str(exc)))
    except BaseException as exc:  # report, never hang the parent
        queue.put(("error", spec.name, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def wait_result(proc, results, name: str, poll: float = 0.5) -> tuple:
    """``(status, name, payload)`` from worker ``proc``: its message, or an error once it died without one."""
    while True:
        try:
            return results.get(timeout=poll)
        except queue_module.Empty:
            if proc.is_alive():
                continue
        try:  # a message sent just before the process ended
            return results.get(timeout=1.0)
        except queue_module.Empty:
            pass
        code = proc.exitcode
        if code is not None and code < 0:
            try:
                why = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                why = f"killed by signal {-code}"
        else:
            why = f"exited with status {code}"
        return ("error", name, f"worker process died ({why}) without a result")


def run_one(spec: ModelSpec, out: Path, data: Optional[str], steps: Optional[int], time_budget: Optional[float],
            seed: int, device: Optional[str]) -> dict:
    """Train and evaluate one model in this process; returns its report entry."""
    ckpt_path = out / "models" / f"{spec.name}.ckpt"
    log_path = out / "logs" / f"{spec.name}.jsonl"
    entry = {"name": spec.name, "preset": spec.preset, "checkpoint_given": spec.checkpoint}
    if spec.checkpoint is None:
        config = {"model": spec.preset, "seed": seed, "dataset": data}
        if steps is not None:
            config["steps"] = int(steps)
            config["log_every"] = max(1, min(10, int(steps) // 10))
        else:
            config["time_budget"] = float(time_budget if time_budget is not None else DEFAULT_TIME_BUDGET)
        run_dir = out / "work" / f"run-{spec.name}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        result = train_run(config, run_dir=run_dir, device=device, progress=False)
        shutil.copyfile(result.best_checkpoint or result.last_checkpoint, ckpt_path)
        shutil.copyfile(run_dir / "log.jsonl", log_path)
        entry.update(
            steps=int(result.steps),
            train_seconds=float(result.train_seconds),
            train_probes_per_s=float(result.probes_per_second),
            best_validation_nmape=result.best_metric,
            train_defaults=get_registry().preset(spec.preset).get("train", {}),
            load_average=result.load_average,
            prior_fit=result.prior,
        )
    else:
        shutil.copyfile(spec.checkpoint, ckpt_path)
        entry.update(steps=0, train_seconds=0.0, train_probes_per_s=0.0)
    predictor = load_model(ckpt_path, device=device or "cpu")  # with the checkpoint's metadata (elements)
    entry["parameters"] = predictor.model.num_parameters()
    t0 = time.perf_counter()
    ev = evaluate(predictor, data=data, split="test", progress=False)
    seconds = time.perf_counter() - t0
    dataset = _test_items(data)
    probes = sum(int(np.prod(grid.values.shape)) for _, _, grid in dataset)
    entry["evaluation_seconds"] = seconds
    entry["inference_probes_per_s"] = probes / seconds if seconds > 0 else None
    entry["evaluate"] = ev
    prior = evaluate_prior(predictor.model, data=data, split="test")
    entry["prior"] = None if prior is None else {"eps_mae": prior["eps_mae"], "structures": prior["structures"]}
    if dataset:
        name, atoms, grid = dataset[0]
        np.savez(out / "work" / f"slice-{spec.name}.npz", name=name, **density_slice(predictor, atoms, grid))
    return entry


def _test_items(data: Optional[str]) -> list:
    """(name, atoms, grid) of the dataset's test split (all items when it has no split)."""
    ds = load_dataset(data)
    part = ds.split("test") if ds.splits is not None else ds
    return [tuple(sample) for sample in part]


def density_slice(predictor, atoms, grid) -> dict:
    """Reference and predicted density on the middle z-plane of ``grid`` (for the report figure)."""
    nx, ny, nz = grid.values.shape
    k = nz // 2
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    frac = np.stack([ii.ravel() / nx, jj.ravel() / ny, np.full(ii.size, k / nz)], axis=1)
    pts = np.asarray(grid.origin) + frac @ np.asarray(grid.cell)
    pred = predictor.predict(atoms, pts)
    pred = pred[:, 0] if pred.ndim == 2 else pred
    return {"reference": grid.values[:, :, k], "prediction": pred.reshape(nx, ny)}


def compare(
    models: str = ",".join(DEFAULT_MODELS),
    size: str = "cpu",
    data: Optional[str] = None,
    steps: Optional[int] = None,
    time_budget: Optional[float] = None,
    out: Optional[os.PathLike] = None,
    force: bool = False,
    seed: int = 0,
    device: Optional[str] = None,
    threads: int = 1,
    echo=print,
) -> Path:
    """Run the comparison and write the report directory; returns its path.

    Raises CdpError when every model failed, or, after writing the report of the others, when any did
    (naming each failed model and why: its error, or how its worker process died).
    """
    if steps is not None and time_budget is not None:
        raise CdpError("give either --steps or --time-budget, not both")
    if steps is not None and steps < 1:
        raise CdpError("--steps must be at least 1")
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise CdpError(f"--time-budget must be a positive number of seconds, got {time_budget}")
    if threads < 1:
        raise CdpError("--threads must be at least 1")
    specs = parse_models(models, size)
    if data is not None:  # refuse a bad dataset here, once, not in every worker after start-up
        from cdp.data import load_dataset

        load_dataset(data)
    outdir = prepare_out_dir(out, force)
    ctx = mp.get_context("spawn")
    results, errors = [], {}
    budget: dict = {}
    for spec in specs:
        spec_steps, spec_time = model_budget(spec, steps, time_budget)
        if spec.checkpoint is None:
            budget[spec.name] = {"steps": spec_steps} if spec_steps is not None else {"time_budget_s": spec_time}
        what = f"training {spec.preset}" if spec.checkpoint is None else f"evaluating {spec.checkpoint}"
        if spec.checkpoint is None:
            what += f" for {spec_steps} steps" if spec_steps is not None else f" for {spec_time:g} s"
        echo(f"[{spec.name}] {what} ...")
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(spec, str(outdir), data, spec_steps, spec_time, seed, device, threads, queue))
        proc.start()
        status, name, payload = wait_result(proc, queue, spec.name)
        proc.join(timeout=30)
        if proc.is_alive():  # sent its result but does not exit: do not hang on it
            proc.kill()
            proc.join()
        if status == "ok":
            results.append(payload)
            ev = payload["evaluate"]["eps_mae"]
            prior = payload.get("prior")
            extra = f" (atomic prior alone: {prior['eps_mae']['mean']:.3f} %)" if prior else " (no atomic prior)"
            rate = f", {payload['train_probes_per_s']:.0f} probes/s" if payload.get("steps") else ""
            load = payload.get("load_average")
            load = f", load average {load[0]:.2f}" if load else ""
            echo(f"[{spec.name}] eps_mae {ev['mean']:.3f} % after {payload['steps']} steps{rate}{load}{extra}")
        else:
            errors[name] = payload
            echo(f"[{spec.name}] failed: {payload.splitlines()[0]}")
    if not results:
        raise CdpError("every model failed: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in errors.items()))
    report = {
        "models": results,
        "errors": errors,
        "data": data or "embedded",
        "seed": seed,
        "size": size,
        "budget": budget,
        "load_average": _load_average(),
    }
    table = write_report(outdir, report)
    echo(table)
    echo(f"report: {outdir}")
    if errors:
        failed = "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in errors.items())
        raise CdpError(f"{len(errors)} of {len(specs)} models failed ({failed}); the others are in {outdir}")
    return outdir
