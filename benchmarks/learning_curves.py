"""``python -m benchmarks learning_curves``: held-out error against steps and seconds, with and without the prior.

Trains each ``-cpu`` preset (chargee3net, equideepdft, invdeepdft) twice on the same data, seed and step
budget — once with its atomic prior (the preset's default) and once with ``prior: null`` — each in a
fresh process at one thread, validating every ``--every`` steps on the validation split (the error of
the total density, prior included).  Prints JSON and a table of the final validation ε (NMAPE %) and
writes ``learning_curves.png`` (validation error against steps and against training seconds) and
``learning_curves.json`` to ``--out``.

    python -m benchmarks learning_curves [--steps 600] [--every 100] [--data DIR --split SPLIT] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

PRESETS = ("chargee3net-cpu", "equideepdft-cpu", "invdeepdft-cpu")


def run_one(preset: str, prior: bool, args, work: Path) -> dict:
    name = f"{preset}{'' if prior else '-noprior'}"
    model = preset if prior else {"preset": preset, "prior": None}
    cfg = {"model": model, "dataset": args.data, "steps": args.steps, "validate_every": args.every,
           "val_probes": args.val_probes, "seed": 0, "progress": False}
    if args.split:
        cfg["split"] = args.split
    if args.data:
        cfg["pbc"] = False
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    run = work / name
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "cdp.cli.main", "train", str(work / f"{name}.yaml"), "--run", str(run)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: training failed: {proc.stderr.strip()[-1500:]}")
    points = [r for r in map(json.loads, open(run / "log.jsonl")) if "val_nmape" in r and "elapsed" in r]
    return {"name": name, "preset": preset, "prior": prior,
            "curve": [{"step": p["step"], "seconds": p["elapsed"], "val_nmape": p["val_nmape"]} for p in points]}


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        style = "-" if r["prior"] else "--"
        steps = [p["step"] for p in r["curve"]]
        secs = [p["seconds"] for p in r["curve"]]
        err = [p["val_nmape"] for p in r["curve"]]
        axes[0].plot(steps, err, style, marker="o", ms=3, label=r["name"])
        axes[1].plot(secs, err, style, marker="o", ms=3, label=r["name"])
    for ax, xl in zip(axes, ("training steps", "training seconds (1 thread)")):
        ax.set_xlabel(xl)
        ax.set_ylabel("validation ε (NMAPE %, total density)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks learning_curves", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--val-probes", type=int, default=2000)
    ap.add_argument("--data", default=None, help="dataset (default: the embedded one)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--out", default="learning_curves")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            for prior in (True, False):
                results.append(run_one(preset, prior, args, Path(tmp)))
                r = results[-1]
                print(f"{r['name']:28s} final val ε {r['curve'][-1]['val_nmape']:7.3f} %  "
                      f"({r['curve'][-1]['step']} steps, {r['curve'][-1]['seconds']:.0f} s)", file=sys.stderr)
    (out / "learning_curves.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "learning_curves.png")
    print(json.dumps([{"name": r["name"], "final_val_nmape": r["curve"][-1]["val_nmape"],
                       "steps": r["curve"][-1]["step"], "seconds": r["curve"][-1]["seconds"]} for r in results], indent=1))


if __name__ == "__main__":
    main()
