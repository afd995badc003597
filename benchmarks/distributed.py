"""Sharded ``cdp predict`` under torchrun: N ranks × 1 thread vs 1 process × 1 thread, end to end.

Writes QM9 molecules of the embedded dataset as .xyz files, predicts their full grids into a directory
of .npy files with ``--model demo`` once in one process (OMP_NUM_THREADS=1) and once under
``python -m torch.distributed.run --nproc_per_node=N`` (gloo on loopback, OMP_NUM_THREADS=1 per rank),
checks that both directories hold byte-identical files, and reports wall times (process start included),
the speed-up, the load average around each run (the machine may be shared) and the atom-encoder time
that every rank repeats for a split structure.  Prints a JSON line and a table.

usage: python -m benchmarks distributed [--molecules 6] [--spacing 0.12] [--nproc 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_molecules(directory: Path, count: int) -> list:
    """The first ``count`` molecules of the embedded dataset's test split (then others) as .xyz files."""
    from ase.io import write

    from cdp.data import load_dataset

    ds = load_dataset(None)
    names = list(ds.splits.get("test", [])) if ds.splits else []
    names += [n for n in ds.names if n not in names]
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names[:count]:
        atoms = ds.get(name).atoms.copy()
        atoms.pbc = False
        write(str(directory / f"{name}.xyz"), atoms)
        out.append((name, len(atoms)))
    return out


def timed(cmd, env) -> tuple:
    load0 = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, load0, os.getloadavg()


def encoder_seconds(directory: Path) -> dict:
    """Median atom-encoder time of the largest molecule vs its full-grid decode (what a split repeats)."""
    import numpy as np
    import torch
    from ase.io import read

    from cdp.predict import load_model, molecule_box

    torch.set_num_threads(1)
    pred = load_model("demo")
    atoms = max((read(str(p)) for p in sorted(directory.glob("*.xyz"))), key=len)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        pred.encode(molecule_box(atoms))
        times.append(time.perf_counter() - t)
    return {"atoms": len(atoms), "encode_s": float(np.median(times))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecules", type=int, default=6)
    ap.add_argument("--spacing", type=float, default=0.12)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--keep", default=None, help="work in this directory and keep it")
    args = ap.parse_args(argv)
    root = str(Path(__file__).resolve().parents[1])
    work = Path(args.keep or tempfile.mkdtemp(prefix="cdp-dist-bench-"))
    try:
        inp = work / "in"
        mols = write_molecules(inp, args.molecules)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                   GLOO_SOCKET_IFNAME="lo", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        common = ["-m", "cdp.cli.main", "predict", str(inp), "--model", "demo", "--spacing", str(args.spacing),
                  "--format", "npy", "--no-progress"]
        for d in ("single", "multi"):
            shutil.rmtree(work / d, ignore_errors=True)
        single = timed([sys.executable, *common, "-o", str(work / "single")], env)
        multi = timed([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={args.nproc}",
                       "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *common, "-o", str(work / "multi")],
                      env)
        names = sorted(p.name for p in (work / "single").iterdir())
        identical = names == sorted(p.name for p in (work / "multi").iterdir()) and all(
            filecmp.cmp(work / "single" / n, work / "multi" / n, shallow=False) for n in names)
        points = 0
        for n in names:
            if n.endswith(".npy.json"):
                shape = json.loads((work / "single" / n).read_text())["shape"]
                points += shape[0] * shape[1] * shape[2]
        enc = encoder_seconds(inp)
        result = {
            "benchmark": "distributed",
            "molecules": [{"name": n, "atoms": a} for n, a in mols],
            "spacing": args.spacing,
            "grid_points": points,
            "nproc": args.nproc,
            "threads_per_process": 1,
            "single_s": round(single[0], 2),
            "torchrun_s": round(multi[0], 2),
            "speedup": round(single[0] / multi[0], 3),
            "identical_files": identical,
            "loadavg_single": [round(x, 2) for x in single[1] + single[2]],
            "loadavg_torchrun": [round(x, 2) for x in multi[1] + multi[2]],
            "cpus": os.cpu_count(),
            "encoder": enc,
        }
        print(json.dumps(result))
        print(f"{'run':<28} {'wall s':>8} {'load before (1/5/15 min)':>26} {'after':>20}")
        for label, (wall, before, after) in ((f"1 process x 1 thread", single),
                                             (f"{args.nproc} ranks x 1 thread", multi)):
            print(f"{label:<28} {wall:8.2f} {' '.join(f'{x:.2f}' for x in before):>26} "
                  f"{' '.join(f'{x:.2f}' for x in after):>20}")
        print(f"speed-up {result['speedup']:.2f}x on {points:,} grid points ({len(mols)} molecules), "
              f"files identical: {identical}; encoder of {enc['atoms']} atoms: {enc['encode_s'] * 1000:.1f} ms")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
