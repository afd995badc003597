"""Decoder latency: onnxruntime (CPU, 1 intra-op thread) vs PyTorch eager, on one workload.

Exports a model's decoder to ONNX, builds one structure's atom features and one probe batch with cdp's
graph builder, then times the decoder alone (best of ``--repeat``) in both runtimes with the same
inputs and thread count.  Prints a JSON line and a table.

usage: python benchmarks/export_bench.py [--model tiny-chargee3net|PRESET|CKPT] [--probes 2500] [--repeat 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_model(text: str):
    from cdp.core.checkpoint import load_checkpoint
    from cdp.core.model import DensityModel
    from cdp.core.registry import get_registry
    from cdp.export.examples import TINY_CONFIGS

    if text.startswith("tiny-"):
        torch.manual_seed(0)
        return DensityModel.from_config(TINY_CONFIGS[text[5:]]).eval()
    if Path(text).is_file():
        return load_checkpoint(text)[0]
    return DensityModel.from_config(get_registry().preset(text)).eval()


def best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-chargee3net")
    ap.add_argument("--probes", type=int, default=2500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--export-dir", default=None, help="reuse/keep the ONNX export here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ase.build import bulk

    from cdp.core.types import Batch
    from cdp.export import export_model
    from cdp.export.runtime import load_exported

    model = build_model(args.model)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)  # 64 atoms
    atoms.numbers[::4] = 6
    out_dir = Path(args.export_dir or tempfile.mkdtemp(prefix="cdp-bench-"))
    t0 = time.perf_counter()
    if not (out_dir / "cdp_export.json").is_file():
        export_model(model, out_dir, "onnx")
    export_s = time.perf_counter() - t0
    pred = load_exported(out_dir, workers=1)
    dtype = model.dtype
    rng = np.random.default_rng(0)
    probes = rng.uniform(0, 1, size=(args.probes, 3)) @ atoms.cell.array
    batch = Batch.from_atoms([atoms]).to(dtype=dtype)
    with torch.no_grad():
        feats = model.encode(batch)
        pts = torch.as_tensor(probes, dtype=dtype)
        graph = model.probe_graph(batch, pts)
        from cdp.core.types import edge_vectors

        vec = edge_vectors(batch.positions, pts, graph.edge_index, graph.offsets, batch.cell, batch.atom_batch)
    layers = [t.numpy() for t in feats.layers]
    ei, ev = graph.edge_index.numpy(), vec.numpy()
    slots = np.zeros(args.probes, dtype=ev.dtype)

    def eager():
        with torch.no_grad():
            return model.readout(model.backbone.decode(feats.layers, graph.edge_index, vec, args.probes))

    def ort():
        return pred.backend.decode(layers, ei, ev, slots)

    diff = float(np.abs(ort() - eager().numpy()).max() / max(1e-30, float(eager().abs().max())))
    t_eager, t_ort = best(eager, args.repeat), best(ort, args.repeat)
    import onnxruntime

    result = {
        "model": args.model, "atoms": len(atoms), "probes": args.probes, "probe_edges": int(ei.shape[1]),
        "threads": args.threads, "dtype": str(dtype).replace("torch.", ""),
        "eager_ms": round(1e3 * t_eager, 2), "onnxruntime_ms": round(1e3 * t_ort, 2),
        "speedup": round(t_eager / t_ort, 3), "max_rel_diff": diff, "export_s": round(export_s, 1),
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
    }
    print(json.dumps(result))
    print(f"\n{'runtime':<28}{'decoder ms':>12}")
    print(f"{'PyTorch eager':<28}{result['eager_ms']:>12.2f}")
    print(f"{'onnxruntime CPU (1 thread)':<28}{result['onnxruntime_ms']:>12.2f}")
    print(f"{args.probes} probes, {result['probe_edges']} probe edges, {len(atoms)} atoms; speedup {result['speedup']}x; max rel diff {diff:.1e}")


if __name__ == "__main__":
    main()
