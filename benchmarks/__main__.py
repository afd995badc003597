"""``python -m benchmarks <name> [args]``: run one benchmark (see BENCHMARKS below; each prints JSON and a table)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "chargee3net": "benchmarks.chargee3net_bench",
    "graph": "benchmarks.graph_bench",
    "compare": "benchmarks.compare_bench",
    "export": "benchmarks.export_bench",
    "model_card": "benchmarks.model_card",
    "learning_curves": "benchmarks.learning_curves",
    "train_throughput": "benchmarks.train_throughput",
    "scf": "benchmarks.scf",
    "distributed": "benchmarks.distributed",
    "gpu": "benchmarks.gpu_bench",
}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m benchmarks {{{','.join(sorted(BENCHMARKS))}}} [args]", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
