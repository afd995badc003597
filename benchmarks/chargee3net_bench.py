"""ChargE3Net (fast vs e3nn backend) and DeepDFT inference speed, peak memory and scaling with system size.

    python -m benchmarks chargee3net [--quick] [--threads 1 2] [--skip-scaling] [--json out.json]
    python -m benchmarks chargee3net --huge [12 24]      # the 10⁵-atom case alone (~10 min)

Every case runs in a fresh Python process (``--case``), so its peak RSS is its own. Models are the published
sizes with seeded random weights (speed does not depend on training). Cases:

* ``decode``: Si 2×2×2 (diamond a = 5.43 Å, 64 atoms), random probes; atom-encoder time, probe-decoder
  time and peak RSS; probes/s of the decoder and of the full model (encoder + decoder).  ChargE3Net with the
  ``e3nn`` and ``fast`` backends at the same probe batch (their outputs are compared), the fast backend also
  at 10,000 probes; equiDeepDFT and invDeepDFT at 1,000.
  Decoder timings are medians of repeats after one full-size warm-up (5 for DeepDFT, 3 fast, 2 e3nn;
  1 with ``--quick``), as the published code's reference timings were taken.
* ``encoder``: atom encoder on Si 4×4×4 (512 atoms), both backends.
* ``scaling``: Si supercells from 8 atoms upward at a fixed number of probes per atom, fast backend; wall
  time of graph + encoder + decoder and a least-squares exponent of time ∝ N^α over N ≥ 100.
* ``huge`` (``--huge``): Si 12³ and 24³ supercells (13,824 and 110,592 atoms), one probe per atom decoded
  in batches of 5,000: times, atom-feature size, peak RSS while encoding, RSS after encoding, and the
  decoding phase's own peak (VmHWM reset after encoding): the decoder's extra memory should not grow with N.
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

import numpy as np

PRESETS = {"chargee3net": "chargee3net", "equideepdft": "equideepdft", "invdeepdft": "invdeepdft"}


# -- child process ------------------------------------------------------------------------------------
def _model(name: str, backend: str | None):
    import torch

    from cdp.core.model import DensityModel
    from cdp.core.registry import get_registry

    cfg = get_registry().preset(PRESETS[name])
    cfg = {k: dict(cfg[k]) for k in ("featurizer", "graph", "backbone", "readout")}
    if backend is not None:
        cfg["backbone"]["backend"] = backend
    torch.manual_seed(0)
    return DensityModel.from_config(cfg).eval()


def _si(rep: int):
    from ase.build import bulk

    return bulk("Si", "diamond", a=5.43, cubic=True).repeat(rep)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run_case(case: dict) -> dict:
    import torch

    from cdp.core.malloc import keep_freed_memory
    from cdp.core.types import Batch

    keep_freed_memory()  # as the CLI does
    torch.set_num_threads(int(case["threads"]))
    t_build = time.perf_counter()
    model = _model(case["model"], case.get("backend"))
    build_s = time.perf_counter() - t_build
    atoms = _si(case["rep"])
    batch = Batch.from_atoms([atoms]).to("cpu", torch.float32)
    rng = np.random.default_rng(0)
    m = int(case.get("probes", 0))
    probes = torch.from_numpy(rng.uniform(0, 1, (m, 3)) @ atoms.cell.array).to(torch.float32)
    out: dict = dict(case, atoms=len(atoms), build_s=build_s)
    with torch.no_grad():
        # warm-up on a small slice (allocator, lazy constants); RSS after it is the baseline
        t0 = time.perf_counter()
        agraph = model.atom_graph(batch)
        out["atom_graph_s"] = time.perf_counter() - t0
        out["atom_edges"] = int(agraph.edge_index.shape[1])
        feats = model.encode(batch, agraph)
        model.decode(batch, feats, probes[:16])
        out["rss_before_mib"] = _rss_mib()
        c0, t0 = time.process_time(), time.perf_counter()
        feats = model.encode(batch, agraph)
        out["encode_s"], out["encode_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        if m:
            t0 = time.perf_counter()
            pgraph = model.probe_graph(batch, probes)
            out["probe_graph_s"] = time.perf_counter() - t0
            out["probe_edges"] = int(pgraph.edge_index.shape[1])
            batch_size = int(case.get("batch") or m)
            repeats = int(case.get("repeats", 1))

            def decode_all():
                return [model.decode(batch, feats, probes[s : s + batch_size]) for s in range(0, m, batch_size)]

            if repeats > 1:
                decode_all()  # full-size warm-up, as the published code's reference timings were taken
            walls, cpus = [], []
            for _ in range(repeats):
                c0, t0 = time.process_time(), time.perf_counter()
                rho = decode_all()
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            out["decode_s"], out["decode_cpu_s"] = float(np.median(walls)), float(np.median(cpus))
            out["repeats"] = repeats
            rho = torch.cat(rho).double().numpy()
            out["decode_probes_per_s"] = m / out["decode_s"]
            out["full_probes_per_s"] = m / (out["decode_s"] + out["encode_s"])
            out["total_s"] = out["atom_graph_s"] + out["encode_s"] + out["probe_graph_s"] + out["decode_s"]
            if case.get("save"):
                np.save(case["save"], rho)
    out["peak_rss_mib"] = _rss_mib()
    return out


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so that a later phase's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _hwm_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _run_huge(case: dict) -> dict:
    """One large supercell: atom graph, encoder, then probes decoded in batches; memory at each stage."""
    import torch

    from cdp.core.malloc import keep_freed_memory
    from cdp.core.types import Batch

    keep_freed_memory()
    torch.set_num_threads(int(case["threads"]))
    model = _model("chargee3net", "fast")
    atoms = _si(case["rep"])
    batch = Batch.from_atoms([atoms]).to("cpu", torch.float32)
    m, bs = int(case["probes_per_atom"] * len(atoms)), int(case["batch"])
    out: dict = dict(case, atoms=len(atoms), probes=m, rss_start_mib=_current_rss_mib())
    rng = np.random.default_rng(0)
    with torch.no_grad():
        t0 = time.perf_counter()
        agraph = model.atom_graph(batch)
        out["atom_graph_s"], out["atom_edges"] = time.perf_counter() - t0, int(agraph.edge_index.shape[1])
        t0 = time.perf_counter()
        feats = model.encode(batch, agraph)
        out["encode_s"] = time.perf_counter() - t0
        out["atom_feature_mib"] = sum(t.numel() * t.element_size() for t in feats.layers) / 2**20
        del agraph
        out["rss_after_encode_mib"] = _current_rss_mib()
        out["peak_encode_mib"] = _rss_mib()
        peak_reset = _reset_peak()
        graph_s = decode_s = 0.0
        cell = np.asarray(atoms.cell.array)
        for s in range(0, m, bs):
            probes = torch.from_numpy(rng.uniform(0, 1, (min(bs, m - s), 3)) @ cell).to(torch.float32)
            t0 = time.perf_counter()
            pgraph = model.probe_graph(batch, probes)
            graph_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            model.decode(batch, feats, probes, graph=pgraph)
            decode_s += time.perf_counter() - t0
        out.update(probe_graph_s=graph_s, decode_s=decode_s, decode_probes_per_s=m / decode_s)
    out["total_s"] = out["atom_graph_s"] + out["encode_s"] + graph_s + decode_s
    out["peak_rss_mib"] = _rss_mib()
    # the decoding phase's own peak (VmHWM reset after encoding) above the memory held after encoding
    out["peak_decode_mib"] = _hwm_mib() if peak_reset else out["peak_rss_mib"]
    out["decoder_extra_mib"] = out["peak_decode_mib"] - out["rss_after_encode_mib"]
    return out


def run_huge(reps=(12, 24), threads: int = 1, probes_per_atom: float = 1.0, batch: int = 5000) -> list:
    """The large-system case: Si supercells (8·rep³ atoms; rep 24 = 110,592), one process each."""
    return [_spawn({"kind": "huge", "rep": r, "threads": threads, "probes_per_atom": probes_per_atom, "batch": batch})
            for r in reps]


def _huge_table(rows: list) -> str:
    lines = [f"{'atoms':>7} {'probes':>7} {'graph s':>8} {'enc s':>7} {'dec s':>7} {'dec p/s':>7} {'feat MiB':>8} "
             f"{'enc peak':>8} {'RSS enc':>8} {'dec peak':>8} {'dec +MiB':>8}"]
    for r in rows:
        if "error" in r:
            lines.append(f"rep {r['rep']}: error: {r['error']}")
            continue
        lines.append(f"{r['atoms']:>7} {r['probes']:>7} {r['atom_graph_s'] + r['probe_graph_s']:>8.1f} {r['encode_s']:>7.1f} "
                     f"{r['decode_s']:>7.1f} {r['decode_probes_per_s']:>7.0f} {r['atom_feature_mib']:>8.0f} "
                     f"{r['peak_encode_mib']:>8.0f} {r['rss_after_encode_mib']:>8.0f} {r['peak_decode_mib']:>8.0f} "
                     f"{r['decoder_extra_mib']:>8.0f}")
    return "\n".join(lines)


# -- parent: spawn cases ------------------------------------------------------------------------------
def _spawn(case: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]), MKL_NUM_THREADS=str(case["threads"]))
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "benchmarks.chargee3net_bench", "--case", json.dumps(case)]
    res = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    if res.returncode != 0:
        return dict(case, error=res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(threads=(1, 2), quick: bool = False, scaling: bool = True, probes_per_atom: int = 2, max_rep: int | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="cdp-bench-") as tmp:
        return _run_all(Path(tmp), threads, quick, scaling, probes_per_atom, max_rep)


def _run_all(tmp: Path, threads, quick: bool, scaling: bool, probes_per_atom: int, max_rep: int | None) -> dict:
    small = 1000 if not quick else 300
    results: dict = {"decode": [], "encoder": [], "equivalence": [], "scaling": [], "load_average": os.getloadavg()}
    for t in threads:
        # ChargE3Net, both backends at the same batch, outputs compared
        pair = {}
        for backend in ("e3nn", "fast"):
            save = str(tmp / f"rho_{backend}_{t}.npy")
            r = _spawn({"kind": "decode", "model": "chargee3net", "backend": backend, "rep": 2, "probes": small,
                        "threads": t, "save": save, "repeats": 1 if quick else (2 if backend == "e3nn" else 3)})
            results["decode"].append(r)
            pair[backend] = r
        if all("error" not in r for r in pair.values()):
            a = np.load(tmp / f"rho_e3nn_{t}.npy")
            b = np.load(tmp / f"rho_fast_{t}.npy")
            results["equivalence"].append({
                "threads": t, "probes": small,
                "max_abs_diff_over_max_rho": float(np.abs(a - b).max() / np.abs(a).max()),
                "speedup_full": pair["fast"]["full_probes_per_s"] / pair["e3nn"]["full_probes_per_s"],
                "speedup_decoder": pair["fast"]["decode_probes_per_s"] / pair["e3nn"]["decode_probes_per_s"],
                "rss_ratio": pair["fast"]["peak_rss_mib"] / pair["e3nn"]["peak_rss_mib"],
            })
        if not quick:
            results["decode"].append(_spawn({"kind": "decode", "model": "chargee3net", "backend": "fast", "rep": 2,
                                             "probes": 10_000, "batch": 2500, "threads": t}))
        for name in ("equideepdft", "invdeepdft"):
            results["decode"].append(_spawn({"kind": "decode", "model": name, "rep": 2, "probes": small, "threads": t,
                                             "repeats": 5}))
        enc = {}
        for backend in ("e3nn", "fast"):
            enc[backend] = _spawn({"kind": "encoder", "model": "chargee3net", "backend": backend,
                                   "rep": 4 if not quick else 3, "threads": t})
            results["encoder"].append(enc[backend])
        if all("encode_s" in r for r in enc.values()):
            results["encoder"].append({"threads": t, "speedup": enc["e3nn"]["encode_s"] / enc["fast"]["encode_s"]})
    if scaling:
        # the same study as `cdp experiment scaling` (cdp.evaluate.scaling), fast backend, 1 thread
        reps = [1, 2, 3, 4, 6] if quick else [1, 2, 3, 4, 6, 8, 11]
        if max_rep:
            reps = [r for r in reps if r <= max_rep]
        from cdp.evaluate.scaling import scaling_study

        study = scaling_study(model="chargee3net", max_atoms=8 * max(reps) ** 3, probes_per_atom=probes_per_atom,
                              threads=1, backend="fast", fit_min_atoms=100)
        results["scaling"] = study["rows"]
        results["scaling_exponent"] = study["fit"]["total"]["exponent"]
    return results


def _table(results: dict) -> str:
    lines = [f"load average at start: {', '.join(f'{x:.2f}' for x in results['load_average'])}", "",
             f"{'model':<12} {'backend':<7} {'thr':>3} {'probes':>6} {'enc s':>7} {'dec s':>7} {'dec p/s':>8} "
             f"{'full p/s':>8} {'dec CPU-s/1k':>12} {'peak MiB':>8}"]
    for r in results["decode"]:
        if "error" in r:
            lines.append(f"{r['model']:<12} {r.get('backend') or '-':<7} {r['threads']:>3} error: {r['error']}")
            continue
        lines.append(f"{r['model']:<12} {r.get('backend') or '-':<7} {r['threads']:>3} {r['probes']:>6} {r['encode_s']:>7.3f} "
                     f"{r['decode_s']:>7.3f} {r['decode_probes_per_s']:>8.0f} {r['full_probes_per_s']:>8.0f} "
                     f"{1000 * r['decode_cpu_s'] / r['probes']:>12.3f} {r['peak_rss_mib']:>8.0f}")
    lines.append("")
    for e in results["equivalence"]:
        lines.append(f"ChargE3Net fast vs e3nn, {e['threads']} thr: full {e['speedup_full']:.2f}x, decoder "
                     f"{e['speedup_decoder']:.2f}x, peak RSS ratio {e['rss_ratio']:.2f}, max|Δρ|/max|ρ| "
                     f"{e['max_abs_diff_over_max_rho']:.1e}")
    for r in results["encoder"]:
        if "speedup" in r:
            lines.append(f"atom encoder 512 atoms, {r['threads']} thr: fast {r['speedup']:.2f}x e3nn")
        elif "error" in r:
            lines.append(f"atom encoder {r.get('backend')}: error: {r['error']}")
        else:
            lines.append(f"atom encoder 512 atoms {r['backend']:<5} {r['threads']} thr: {r['encode_s']:.3f} s "
                         f"({r['encode_cpu_s']:.3f} CPU-s)")
    if results["scaling"]:
        lines += ["", f"{'atoms':>7} {'probes':>8} {'graph+enc+dec s':>16} {'peak MiB':>9}"]
        for r in results["scaling"]:
            if "error" in r:
                lines.append(f"{r.get('atoms', '?'):>7} error: {r['error']}")
            else:
                lines.append(f"{r['atoms']:>7} {r['probes']:>8} {r['total_s']:>16.2f} {r['peak_rss_mb']:>9.0f}")
        alpha = results.get("scaling_exponent")
        lines.append(f"fitted exponent (N >= 100): {alpha:.3f}" if alpha is not None else "fitted exponent: n/a")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="300 probes, no 10k case, supercells up to 1,728 atoms")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--probes-per-atom", type=int, default=2)
    ap.add_argument("--max-rep", type=int, default=None, help="largest supercell repeat of the 8-atom Si cell")
    ap.add_argument("--json", dest="json_path", help="also write the JSON here")
    ap.add_argument("--huge", type=int, nargs="*", metavar="REP",
                    help="only the large-system case: Si supercells of these repeats (default 12 24: 13,824 and "
                         "110,592 atoms), 1 probe per atom in batches of 5,000, memory after encoding and at peak")
    args = ap.parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(_run_huge(case) if case.get("kind") == "huge" else _run_case(case)))
        return
    if args.huge is not None:
        rows = run_huge(tuple(args.huge or (12, 24)), threads=args.threads[0])
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(rows, indent=2))
        print(json.dumps(rows, indent=2))
        print(_huge_table(rows))
        return
    results = run(args.threads, args.quick, not args.skip_scaling, args.probes_per_atom, args.max_rep)
    text = json.dumps(results, indent=2)
    if args.json_path:
        Path(args.json_path).write_text(text)
    print(text)
    print(_table(results))


if __name__ == "__main__":
    main()
