"""ChargE3Net training throughput: the fused-kernel training path ("new") against the PyTorch autograd path ("old").

    python -m benchmarks train_throughput [--threads 1 2] [--steps 22] [--paper-steps 3] [--skip-paper] [--json out.json]

Every case is a fresh Python process (``--case``) that builds the training loop of ``cdp train`` (seed 0,
embedded dataset, the preset's own batch) and runs its steps; a step is batch assembly + graphs + forward +
loss + backward + Adam, exactly ``Trainer._train_step``.  Paths:

* ``new``: the ``fast`` backend as shipped: forward and backward of the convolution in the fused C kernels;
* ``old``: the ``fast`` backend with its kernels switched off (``use_native = False``): the blocked PyTorch
  tensor product under autograd, which is what training ran before the backward kernel existed;
* ``e3nn``: the ``e3nn`` backend (losses only, 1 thread), the reference for the loss comparison.

Throughput is probes per step / median step wall time after ``--warmup`` steps.  For ``chargee3net-cpu``
the losses of the first 20 steps of ``old`` and ``e3nn`` are compared with ``new`` (max relative
difference).  The paper-size ``chargee3net`` runs a few steps at a reduced batch (``--paper-batch``
structures x ``--paper-probes``), the same batch for both paths.  Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LOSS_STEPS = 20


# -- child process ------------------------------------------------------------------------------------
def _run_case(case: dict) -> dict:
    import torch

    from cdp.core.malloc import keep_freed_memory
    from cdp.plugins.backbones.chargee3net.fast_conv import FastE3Convolution
    from cdp.train import ddp
    from cdp.train.config import resolve_config
    from cdp.train.trainer import Trainer

    keep_freed_memory()  # as the CLI does
    torch.set_num_threads(int(case["threads"]))
    model = {"preset": case["model"], "backbone": {"backend": "e3nn" if case["path"] == "e3nn" else "fast"}}
    cfg = {"model": model, "seed": 0, "steps": int(case["steps"]), "progress": False}
    for key in ("batch_size", "probes"):
        if case.get(key):
            cfg[key] = int(case[key])
    with tempfile.TemporaryDirectory(prefix="cdp-train-bench-") as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(resolve_config(cfg), Path(tmp) / "run", torch.device("cpu"), ddp.env_info())
        build_s = time.perf_counter() - t0
        for m in trainer.model.modules():
            if isinstance(m, FastE3Convolution):
                m.use_native = case["path"] == "new"
        trainer.model.train()
        walls, cpus, losses = [], [], []
        for _ in range(int(case["steps"])):
            c0, t0 = time.process_time(), time.perf_counter()
            losses.append(trainer._train_step())
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            trainer.step += 1
    probes_per_step = trainer.global_batch * trainer.cfg["probes"]
    timed = slice(int(case["warmup"]), None)
    step_s = float(np.median(walls[timed]))
    return dict(case, build_s=build_s, probes_per_step=probes_per_step, step_s=step_s,
                step_cpu_s=float(np.median(cpus[timed])), probes_per_s=probes_per_step / step_s,
                step_times=walls, losses=losses, parameters=trainer.model.num_parameters())


# -- parent: spawn cases ------------------------------------------------------------------------------
def _spawn(case: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]), MKL_NUM_THREADS=str(case["threads"]))
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--case", json.dumps(case)]
    res = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    if res.returncode != 0:
        return dict(case, error=res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _max_rel(a, b) -> float:
    a, b = np.asarray(a[:LOSS_STEPS], float), np.asarray(b[:LOSS_STEPS], float)
    return float(np.max(np.abs(a - b) / np.abs(a)))


def run(threads=(1, 2), steps: int = LOSS_STEPS + 2, warmup: int = 2, paper: bool = True, paper_steps: int = 3,
        paper_batch: int = 2, paper_probes: int = 200) -> dict:
    results: dict = {"runs": [], "speedups": [], "losses": [], "load_average_start": os.getloadavg(),
                     "cpu_count": os.cpu_count()}
    models = [("chargee3net-cpu", {"steps": steps, "warmup": warmup})]
    if paper:
        models.append(("chargee3net", {"steps": paper_steps, "warmup": 1, "batch_size": paper_batch,
                                       "probes": paper_probes}))
    for name, extra in models:
        for t in threads:
            pair = {}
            for path in ("old", "new"):
                pair[path] = _spawn({"model": name, "path": path, "threads": t, **extra})
                results["runs"].append(pair[path])
            if all("error" not in r for r in pair.values()):
                results["speedups"].append({"model": name, "threads": t,
                                            "speedup": pair["new"]["probes_per_s"] / pair["old"]["probes_per_s"],
                                            "cpu_ratio": pair["old"]["step_cpu_s"] / pair["new"]["step_cpu_s"]})
                if name == "chargee3net-cpu" and len(pair["new"]["losses"]) >= LOSS_STEPS:
                    results["losses"].append({"model": name, "threads": t, "against": "old",
                                              "max_rel_diff": _max_rel(pair["old"]["losses"], pair["new"]["losses"])})
        if name == "chargee3net-cpu" and steps >= LOSS_STEPS:
            ref = _spawn({"model": name, "path": "e3nn", "threads": 1, "steps": LOSS_STEPS, "warmup": 0})
            results["runs"].append(ref)
            new = next((r for r in results["runs"] if r["model"] == name and r["path"] == "new" and "error" not in r), None)
            if "error" not in ref and new is not None:
                results["losses"].append({"model": name, "threads": new["threads"], "against": "e3nn",
                                          "max_rel_diff": _max_rel(ref["losses"], new["losses"])})
    results["load_average_end"] = os.getloadavg()
    return results


def _table(results: dict) -> str:
    lines = [f"load average at start {', '.join(f'{x:.2f}' for x in results['load_average_start'])}, at end "
             f"{', '.join(f'{x:.2f}' for x in results['load_average_end'])} ({results['cpu_count']} CPUs)", "",
             f"{'model':<16} {'path':<5} {'thr':>3} {'probes/step':>11} {'steps':>5} {'step s':>8} {'CPU-s/step':>10} "
             f"{'probes/s':>9}"]
    for r in results["runs"]:
        if "error" in r:
            lines.append(f"{r['model']:<16} {r['path']:<5} {r['threads']:>3} error: {r['error']}")
            continue
        lines.append(f"{r['model']:<16} {r['path']:<5} {r['threads']:>3} {r['probes_per_step']:>11} {r['steps']:>5} "
                     f"{r['step_s']:>8.3f} {r['step_cpu_s']:>10.3f} {r['probes_per_s']:>9.0f}")
    lines.append("")
    for s in results["speedups"]:
        lines.append(f"{s['model']}, {s['threads']} thr: new {s['speedup']:.2f}x old (probes/s), "
                     f"{s['cpu_ratio']:.2f}x less CPU time per step")
    for c in results["losses"]:
        lines.append(f"{c['model']}: first {LOSS_STEPS} losses, new vs {c['against']} ({c['threads']} thr): "
                     f"max relative difference {c['max_rel_diff']:.1e}")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=LOSS_STEPS + 2, help="training steps per chargee3net-cpu run")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    ap.add_argument("--skip-paper", action="store_true", help="only chargee3net-cpu")
    ap.add_argument("--paper-steps", type=int, default=3, help="steps of each paper-size run (the first untimed)")
    ap.add_argument("--paper-batch", type=int, default=2, help="structures per paper-size step")
    ap.add_argument("--paper-probes", type=int, default=200, help="probes per structure in paper-size steps")
    ap.add_argument("--json", dest="json_path", help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(_run_case(json.loads(args.case))))
        return
    results = run(args.threads, args.steps, args.warmup, not args.skip_paper, args.paper_steps, args.paper_batch,
                  args.paper_probes)
    text = json.dumps(results, indent=2)
    if args.json_path:
        Path(args.json_path).write_text(text)
    print(text)
    print(_table(results))


if __name__ == "__main__":
    main()
