"""``python -m benchmarks model_card NAME``: measure a shipped model and (re)write its model card.

Evaluates ``cdp/assets/NAME.ckpt`` on full grids of each ``--eval DATA[:SPLIT]`` (molecules: no periodic
images), reads the training run's resolved ``config.yaml`` and ``summary.json`` when ``--run`` is given,
and writes ``cdp/assets/NAME.json`` (the card ``cdp models`` shows) with the checkpoint's SHA-256.  Prints
the evaluation as JSON and a table.  Example (the shipped qm9 model):

    python -m benchmarks model_card qm9 --run runs/qm9 --eval embedded:test --eval /data/qm9_reserved:all \
        --description "..." --data "..." --training-command "cdp train ..."
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import yaml


def _eval(name: str, spec: str) -> dict:
    from cdp.evaluate.evaluate import evaluate

    data, _, split = spec.partition(":")
    t0 = time.perf_counter()
    res = evaluate(name, data=None if data == "embedded" else data, split=split or "test", pbc=False, progress=False)
    where = "" if data == "embedded" else f"--data {data} "
    label = "embedded QM9 test split" if data == "embedded" else f"{os.path.basename(data.rstrip('/'))} ({split or 'test'})"
    return {
        "data": label,
        "structures": len(res["structures"]),
        "eps_mae_mean": round(res["eps_mae"]["mean"], 4),
        "eps_mae_se": round(res["eps_mae"]["stderr"], 4),
        "eps_mae_max": round(res["eps_mae"]["max"], 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "command": f"cdp evaluate --model {name} {where}--split {split or 'test'} --no-pbc --json OUT",
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks model_card", description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--eval", action="append", default=[], help="DATA[:SPLIT]; DATA 'embedded' = the shipped set")
    ap.add_argument("--run", help="training run directory (config.yaml, summary.json)")
    ap.add_argument("--description", default=None)
    ap.add_argument("--data", default=None, help="what the model was trained on (recipe, molecules)")
    ap.add_argument("--split", default=None, help="the split, in words or as a path")
    ap.add_argument("--training-command", default=None)
    args = ap.parse_args(argv)

    from cdp.core.checkpoint import load_checkpoint
    from cdp.shipped import _sha256, assets_dir

    ckpt = assets_dir() / f"{args.name}.ckpt"
    card_path = ckpt.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    model, info = load_checkpoint(ckpt)
    card["name"] = args.name
    for key in ("description", "data", "split"):
        if getattr(args, key):
            card[key] = getattr(args, key)
    if args.training_command:
        card["training_command"] = args.training_command
    card["architecture"] = {k: model.config.get(k) for k in ("featurizer", "graph", "backbone", "readout")}
    card["architecture"]["prior"] = model.config.get("prior")
    card["parameters"] = sum(p.numel() for p in model.parameters())
    if args.run:
        cfg = yaml.safe_load(open(os.path.join(args.run, "config.yaml")))
        summ = json.load(open(os.path.join(args.run, "summary.json")))
        card["training"] = {k: cfg.get(k) for k in ("loss", "lr", "beta", "batch_size", "probes", "seed", "dtype")}
        card["training"].update({k: summ.get(k) for k in ("steps", "elapsed_seconds", "train_seconds", "probes_per_second", "best_step", "best_metric") if k in summ})
    card["evaluation"] = [_eval(args.name, spec) for spec in args.eval] or card.get("evaluation", [])
    card["sha256"] = _sha256(ckpt)
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, card_path)
    print(json.dumps(card["evaluation"], indent=1))
    print(f"{'data':40s} {'n':>3s} {'eps_mae %':>10s} {'se':>7s} {'max':>7s}", file=sys.stderr)
    for ev in card["evaluation"]:
        print(f"{ev['data']:40s} {ev['structures']:3d} {ev['eps_mae_mean']:10.3f} {ev['eps_mae_se']:7.3f} {ev['eps_mae_max']:7.3f}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
