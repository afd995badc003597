"""The default ``cdp compare`` as a benchmark: wall time, peak memory, and each model's accuracy at that budget.

    python -m benchmarks compare [--out DIR] [-- extra cdp compare options]

Runs ``cdp compare`` in a child process exactly as a user would (no options = the default models, -cpu
presets, embedded dataset and time budget), then prints JSON and a table: total wall time against the
10-minute goal, the largest per-model peak RSS, and ε_mae per model. Whether the higher-order model is
ahead at this budget is reported as measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 600.0


def run(out: Path, extra) -> dict:
    cmd = [sys.executable, "-m", "cdp", "compare", "--out", str(out), "--force", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"cdp compare failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    models = [
        {
            "name": m["name"],
            "preset": m["preset"],
            "parameters": m["parameters"],
            "steps": m["steps"],
            "train_seconds": m["train_seconds"],
            "evaluation_seconds": m["evaluation_seconds"],
            "eps_mae_mean": m["evaluate"]["eps_mae"]["mean"],
            "eps_mae_stderr": m["evaluate"]["eps_mae"]["stderr"],
            "inference_probes_per_s": m["inference_probes_per_s"],
            "peak_rss_mb": m["peak_rss_mb"],
        }
        for m in report["models"]
    ]
    by_name = {m["name"]: m for m in models}
    ranking = sorted(models, key=lambda m: m["eps_mae_mean"])
    return {
        "benchmark": "compare_default",
        "command": " ".join(cmd[1:]),
        "wall_seconds": wall,
        "goal_seconds": GOAL_SECONDS,
        "within_goal": wall <= GOAL_SECONDS,
        "max_child_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "models": models,
        "best_model": ranking[0]["name"],
        "chargee3net_vs_equideepdft": (
            by_name["chargee3net"]["eps_mae_mean"] / by_name["equideepdft"]["eps_mae_mean"]
            if {"chargee3net", "equideepdft"} <= set(by_name) else None
        ),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="report directory (default: a temporary one)")
    ap.add_argument("extra", nargs="*", help="further cdp compare options (after --)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cdp-compare-bench-"))
    res = run(out, args.extra)
    print(json.dumps(res, indent=2))
    print(f"\ncdp compare (defaults): {res['wall_seconds']:.0f} s wall (goal ≤ {GOAL_SECONDS:.0f} s), "
          f"largest child peak RSS {res['max_child_peak_rss_mb']:.0f} MB, report in {out}")
    print(f"{'model':<14} {'params':>9} {'steps':>6} {'train s':>8} {'eval s':>7} {'eps_mae %':>10} {'probes/s':>9}")
    for m in res["models"]:
        print(f"{m['name']:<14} {m['parameters']:>9,} {m['steps']:>6} {m['train_seconds']:>8.0f} "
              f"{m['evaluation_seconds']:>7.0f} {m['eps_mae_mean']:>10.3f} {m['inference_probes_per_s']:>9.0f}")
    if res["chargee3net_vs_equideepdft"] is not None:
        print(f"ChargE3Net / equiDeepDFT eps_mae ratio at this budget: {res['chargee3net_vs_equideepdft']:.3f}")


if __name__ == "__main__":
    main()
