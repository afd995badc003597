"""Probe-graph construction speed: 64-atom Si with 10^4..10^6 random probes, cutoff 4 Å.

    python -m benchmarks.graph_bench [--probes 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from ase.build import bulk

from cdp.plugins.graphs.periodic import PeriodicGraphBuilder


def run(probe_counts, cutoff: float = 4.0, repeats: int = 3) -> list:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    builder = PeriodicGraphBuilder()
    rng = np.random.default_rng(0)
    rows = []
    for m in probe_counts:
        probes = rng.uniform(0, 1, size=(m, 3)) @ atoms.cell.array
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            ei, _ = builder.probe_edges(atoms.positions, atoms.cell.array, atoms.pbc, probes, cutoff)
            best = min(best, time.perf_counter() - t0)
        rows.append({"probes": m, "edges": int(ei.shape[1]), "seconds": best, "probes_per_s": m / best})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--probes", type=int, nargs="+", default=[10_000, 100_000])
    args = ap.parse_args(argv)
    rows = run(args.probes)
    print(json.dumps({"benchmark": "probe_graph", "structure": "Si 2x2x2 (64 atoms)", "rows": rows}, indent=2))
    print(f"{'probes':>10} {'edges':>12} {'seconds':>9} {'probes/s':>12}")
    for r in rows:
        print(f"{r['probes']:>10} {r['edges']:>12} {r['seconds']:>9.3f} {r['probes_per_s']:>12.0f}")


if __name__ == "__main__":
    main()
