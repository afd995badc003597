"""Export time and exported-model speed: ``cdp export`` wall time, and the decoder in onnxruntime /
TorchScript / pt2 against PyTorch's fast backend on the same workload and thread count.

    python -m benchmarks export [--model demo] [--threads 1] [--probes 20000] [--formats onnx,torchscript-cdp]
                                [--export-time] [--full-grid] [--json out.json]
    python -m benchmarks export --export-time-only --export-runs 5 [--export-jobs 1] [--json out.json]

* ``runtime`` (always): one structure (``--structure water``: H₂O in a 6 Å box, or ``si64``: Si 2×2×2), the
  middle ``--probes`` points (flat C order: a slab through the structure) of its 0.08 Å grid in probe
  batches of ``--batch``, decoded by PyTorch's fast backend (the model's own decoder: fused native kernels
  when built) and by each exported decoder on the same probe edges, in one process: ``--threads`` threads
  for PyTorch, onnxruntime sessions with their one intra-op thread (cdp's setting).  Best of ``--repeat``
  interleaved rounds after a warm-up; the outputs are compared (max |Δρ| / max |ρ|).
* ``--full-grid``: the whole 0.08 Å grid of the structure through ``predict_grid`` (cdp Predictor vs the
  ONNX export's ExportedPredictor with ``--threads`` concurrent probe batches), as ``cdp predict --runtime
  onnx`` does it.
* ``--export-time``: ``python -m cdp.cli.main export MODEL --format onnx -o NEWDIR`` in a fresh process with
  OMP_NUM_THREADS=2 and empty caches (XDG_CACHE_HOME, TORCHINDUCTOR_CACHE_DIR, CDP_CACHE_DIR, MPLCONFIGDIR,
  TRITON_CACHE_DIR in a new directory), ``--export-runs`` times: wall time (interpreter start-up and
  imports included), CPU time, the load average before each run and the phases it logs.
  ``--export-time-only`` skips everything else.

Prints one JSON line and a table; CPU model, core count and versions are in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_model(text: str):
    import torch

    from cdp.cli.export import _load
    from cdp.core.model import DensityModel
    from cdp.export.examples import TINY_CONFIGS

    if text.startswith("tiny-"):
        torch.manual_seed(0)
        return DensityModel.from_config(TINY_CONFIGS[text[5:]]).eval()
    model, info, _ = _load(text)
    if info is None:  # a preset: seeded random weights (speed does not depend on training)
        torch.manual_seed(0)
        model = DensityModel.from_config(model.config).eval()
    return model.eval()


def structure(name: str):
    from ase.build import bulk, molecule

    if name == "water":
        atoms = molecule("H2O")
        atoms.cell = np.eye(3) * 6.0
        atoms.center()
        return atoms
    if name == "si64":
        atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
        atoms.numbers[::4] = 6
        return atoms
    raise SystemExit(f"unknown structure {name!r} (water, si64)")


def grid_shape(atoms, spacing: float):
    lengths = np.linalg.norm(np.asarray(atoms.cell.array), axis=1)
    return tuple(max(1, int(np.ceil(L / spacing))) for L in lengths)


EMPTY_CACHE_VARS = ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "CDP_CACHE_DIR", "MPLCONFIGDIR", "TRITON_CACHE_DIR")


def _load() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _phases(log: str) -> dict:
    """Seconds the command logs: "LABEL: NAME 1.2 s, NAME 3.4 s, ..." → {"LABEL NAME": 1.2, ...}."""
    phases = {}
    for line in log.splitlines():
        label, sep, rest = line.strip().partition(": ")
        if not sep:
            continue
        for piece in rest.split(", "):
            m = re.fullmatch(r"(.*?)\s*([0-9]+(?:\.[0-9]+)?) s", piece.strip())
            if m:
                phases[f"{label} {m.group(1)}".strip()] = float(m.group(2))
    return phases


def export_time(model_text: str, runs: int = 1, jobs=None) -> dict:
    """Wall time of ``cdp export MODEL --format onnx -o NEWDIR`` in a fresh process (OMP_NUM_THREADS=2),
    ``runs`` times, each with empty caches: XDG_CACHE_HOME (~/.cache: torch, onnx), TORCHINDUCTOR_CACHE_DIR,
    CDP_CACHE_DIR (compiled kernels), MPLCONFIGDIR and TRITON_CACHE_DIR point into a new empty directory.
    Records per run the wall and CPU seconds (the process and its children), the 1/5/15-minute load
    average before it and the phases the command logs."""
    cmd_text = " ".join(["cdp export", model_text, "--format onnx -o NEWDIR"] + ([f"--jobs {jobs}"] if jobs else []))
    out = {"command": cmd_text, "omp_num_threads": 2, "empty_caches": list(EMPTY_CACHE_VARS), "runs": []}
    for _ in range(max(1, runs)):
        root = Path(tempfile.mkdtemp(prefix="cdp-export-time-"))
        env = dict(os.environ, OMP_NUM_THREADS="2", **{var: str(root / "cache" / var.lower()) for var in EMPTY_CACHE_VARS})
        cmd = [sys.executable, "-m", "cdp.cli.main", "export", model_text, "--format", "onnx", "-o", str(root / "out")]
        if jobs:
            cmd += ["--jobs", str(jobs)]
        load = _load()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"export failed: {proc.stderr.strip().splitlines()[-1:]}")
        phases = _phases(proc.stderr)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        out["runs"].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_avg": load, "phases_s": phases})
        shutil.rmtree(root, ignore_errors=True)
    walls = sorted(r["wall_s"] for r in out["runs"])
    out["wall_s"] = {"min": walls[0], "median": walls[len(walls) // 2], "max": walls[-1]}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="shipped model name, checkpoint, preset or tiny-<backbone>")
    ap.add_argument("--structure", default="water")
    ap.add_argument("--spacing", type=float, default=0.08, help="grid spacing (Å)")
    ap.add_argument("--probes", type=int, default=20000, help="grid points decoded (runtime case)")
    ap.add_argument("--batch", type=int, default=2500, help="probe batch")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--formats", default="onnx,onnx-cdp,torchscript",
                    help="comma-separated: onnx, onnx-cdp (ONNX with cdp's operators: --ops cdp), torchscript, "
                         "torchscript-cdp (TorchScript with cdp's operators), pt2")
    ap.add_argument("--export-dir", default=None, help="keep the exports here (reused when present)")
    ap.add_argument("--export-time", action="store_true", help="also time the whole `cdp export` command")
    ap.add_argument("--export-runs", type=int, default=1, help="runs of the timed `cdp export` (each with empty caches)")
    ap.add_argument("--export-jobs", type=int, default=None, help="--jobs for the timed `cdp export` (default: its own)")
    ap.add_argument("--export-time-only", action="store_true", help="only time the whole `cdp export` command")
    ap.add_argument("--full-grid", action="store_true", help="also predict the whole grid (Predictor vs ONNX)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.export_time_only:
        result = {"model": args.model, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                  "export_command": export_time(args.model, args.export_runs, args.export_jobs)}
        _print_export_time(result, args.json)
        return

    import torch

    torch.set_num_threads(args.threads)
    from cdp.core.grid import grid_frame
    from cdp.export import export_model
    from cdp.export.runtime import load_exported
    from cdp.predict import Predictor

    model = build_model(args.model)
    atoms = structure(args.structure)
    shape = grid_shape(atoms, args.spacing)
    frame = grid_frame(atoms, shape)
    n = min(args.probes, int(np.prod(shape)))
    predictor = Predictor(model, probe_batch=args.batch)
    root = Path(args.export_dir or tempfile.mkdtemp(prefix="cdp-bench-"))
    result = {
        "model": args.model, "structure": args.structure, "atoms": len(atoms), "grid": list(shape),
        "spacing": args.spacing, "probes": n, "batch": args.batch, "threads": args.threads,
        "dtype": str(model.dtype).replace("torch.", ""), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "decoder_s": {}, "max_rel_diff": {}, "export_s": {},
    }
    first = (int(np.prod(shape)) - n) // 2  # the middle of the grid: the slab through the structure
    chunks = [frame.grid_points(first + s, first + min(s + args.batch, n)) for s in range(0, n, args.batch)]
    edges = _probe_edges(model, atoms, chunks)
    runs = {"pytorch-fast": _fast_decoder(model, atoms, edges)}
    ref = runs["pytorch-fast"]()
    scale = float(np.abs(ref).max())
    for fmt in [f for f in args.formats.split(",") if f]:
        out = root / fmt
        if not (out / "cdp_export.json").is_file():
            t = time.perf_counter()
            # onnx-cdp / torchscript-cdp: with cdp's operators (cdp export --ops cdp)
            base, _, ops = fmt.partition("-")
            export_model(model, out, base, ops=ops or "standard")
            result["export_s"][fmt] = round(time.perf_counter() - t, 1)
        runs[fmt] = _exported_decoder(load_exported(out, workers=1), atoms, edges)
        got = runs[fmt]()
        result["max_rel_diff"][fmt] = float(np.abs(got - ref).max() / scale)
    # interleaved rounds, best per runtime: a busy machine slows every runtime alike
    times = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    result["decoder_s"] = {name: round(min(ts), 4) for name, ts in times.items()}
    for fmt in result["decoder_s"]:
        result.setdefault("ratio_to_fast", {})[fmt] = round(result["decoder_s"][fmt] / result["decoder_s"]["pytorch-fast"], 3)
    if args.full_grid:
        if not (root / "onnx" / "cdp_export.json").is_file():
            export_model(model, root / "onnx", "onnx")
        t = time.perf_counter()
        rho_fast = predictor.predict_grid(atoms, shape).values
        t_fast = time.perf_counter() - t
        pred = load_exported(root / "onnx", workers=args.threads)
        t = time.perf_counter()
        rho_onnx = pred.predict_grid(atoms, shape).values
        t_onnx = time.perf_counter() - t
        result["full_grid"] = {"points": int(np.prod(shape)), "pytorch_fast_s": round(t_fast, 2), "onnx_s": round(t_onnx, 2),
                               "ratio": round(t_onnx / t_fast, 3),
                               "max_rel_diff": float(np.abs(rho_onnx - rho_fast).max() / np.abs(rho_fast).max())}
    if args.export_time:
        result["export_command"] = export_time(args.model, args.export_runs, args.export_jobs)
    try:
        import onnxruntime

        result["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    line = json.dumps(result)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    print(f"\n{args.model}, {args.structure} ({len(atoms)} atoms), {n} grid points at {args.spacing} Å in batches of "
          f"{args.batch}, {args.threads} thread(s), {result['cpu']}")
    print(f"{'decoder':<16}{'seconds':>10}{'x fast':>9}{'max rel diff':>15}")
    for fmt, s in result["decoder_s"].items():
        diff = result["max_rel_diff"].get(fmt)
        print(f"{fmt:<16}{s:>10.3f}{result['ratio_to_fast'][fmt]:>9.2f}{'' if diff is None else f'{diff:.1e}':>15}")
    if "full_grid" in result:
        g = result["full_grid"]
        print(f"full grid ({g['points']} points): PyTorch fast {g['pytorch_fast_s']} s, ONNX {g['onnx_s']} s ({g['ratio']}x)")
    if "export_command" in result:
        _print_export_time(result, None, header=False)


def _print_export_time(result: dict, json_path, header: bool = True) -> None:
    """The whole-command export timing as JSON (when ``header``: printed, and written to ``json_path``) and a table."""
    if header:
        line = json.dumps(result)
        print(line)
        if json_path:
            Path(json_path).write_text(line + "\n")
        print(f"\n{result['model']}, {result['cpu']} ({result['cpu_count']} CPUs)")
    e = result["export_command"]
    print(f"`{e['command']}` (OMP_NUM_THREADS=2, empty caches: {', '.join(e['empty_caches'])})")
    print(f"{'run':<5}{'wall s':>8}{'cpu s':>8}  {'load avg (1/5/15 min)':<24}phases")
    for i, r in enumerate(e["runs"], 1):
        phases = ", ".join(f"{k} {v}" for k, v in r["phases_s"].items())
        print(f"{i:<5}{r['wall_s']:>8.2f}{r['cpu_s']:>8.2f}  {' '.join(f'{x:.2f}' for x in r['load_avg']):<24}{phases}")
    w = e["wall_s"]
    print(f"wall: min {w['min']} s, median {w['median']} s, max {w['max']} s")


def _probe_edges(model, atoms, chunks):
    """(edge_index [2, Ep] int64, edge_vec [Ep, 3]) per probe chunk, from the model's own probe graph."""
    import torch

    from cdp.core.types import Batch, edge_vectors

    batch = Batch.from_atoms([atoms]).to(dtype=model.dtype)
    out = []
    with torch.no_grad():
        for pts in chunks:
            p = torch.as_tensor(pts, dtype=model.dtype)
            graph = model.probe_graph(batch, p)
            vec = edge_vectors(batch.positions, p, graph.edge_index, graph.offsets, batch.cell, batch.atom_batch)
            out.append((graph.edge_index, vec, len(pts)))
    return out


def _fast_decoder(model, atoms, edges):
    """PyTorch's decoder (the model's own backend) over the chunks' probe edges; atom features computed once."""
    import torch

    from cdp.core.types import Batch

    batch = Batch.from_atoms([atoms]).to(dtype=model.dtype)
    with torch.no_grad():
        feats = model.encode(batch)

    def run():
        with torch.no_grad():
            return np.concatenate([model.readout(model.backbone.decode(feats.layers, ei, vec, m)).double().numpy()
                                   for ei, vec, m in edges])

    return run


def _exported_decoder(pred, atoms, edges):
    """An export's decoder over the same probe edges; its encoder run once."""
    layers = pred.encode(atoms).layers
    dtype = pred.np_dtype
    feeds = [(np.ascontiguousarray(ei.numpy()), np.ascontiguousarray(vec.numpy().astype(dtype)), np.zeros(m, dtype=dtype))
             for ei, vec, m in edges]

    def run():
        return np.concatenate([np.asarray(pred.backend.decode(layers, ei, vec, slots), dtype=np.float64) for ei, vec, slots in feeds])

    return run


if __name__ == "__main__":
    main()
