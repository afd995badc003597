"""ChargE3Net (fast vs e3nn backend) and DeepDFT inference speed, peak memory and scaling with system size.

    python -m benchmarks chargee3net [--quick] [--threads 1 2] [--skip-scaling] [--json out.json]
    python -m benchmarks chargee3net --huge [12 24]      # the 10⁵-atom case alone (~10 min)
    python -m benchmarks chargee3net --vs-published [--reference DIR] [--threads 1 2]   # vs the published code

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
* ``vs-published`` (``--vs-published``): cdp against the published ChargE3Net source tree (``--reference``,
  default ``$CDP_REFERENCE_CODE``; its ``src/charge3net`` is imported from there, never copied).  The paper
  size (3 layers, mul 500, lmax 4, cutoff 4 Å, 20 Gaussians, ~1.9M parameters) with seeded random weights
  saved in the published format and imported into cdp (cdp.importers.charge3net): the same weights on
  both sides.  Si 2×2×2 (64 atoms), 1,000 random probes; CPU seconds (``time.process_time``) of one full
  ``predict(atoms, probes)`` (graph construction included, model loading not) after one warm-up call, each
  side in its own fresh process, at 1 and 2 threads; peak RSS; outputs compared.  A kernel case times the
  fused kernel's entry points (every ISA build this CPU runs; radial weights as rows from the MLP and from
  a piecewise-cubic table) on the same edges, and its FLOP/s against the peak measured by a 1-thread
  float32 matmul.
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


# -- side by side with the published code -------------------------------------------------------------
PAPER_HP = {"num_interactions": 3, "num_neighbors": 20, "mul": 500, "lmax": 4, "cutoff": 4.0, "basis": "gaussian",
            "num_basis": 20}


def _probes(atoms, m: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (m, 3)) @ np.asarray(atoms.cell.array)


def _published_model(reference: str):
    """The published E3DensityModel class (imported from the reference tree) and its graph helpers."""
    sys.path.insert(0, str(Path(reference).resolve()))
    from src.charge3net.data.collate import collate_list_of_dicts
    from src.charge3net.data.graph_construction import KdTreeGraphConstructor
    from src.charge3net.models.e3 import E3DensityModel

    return E3DensityModel, KdTreeGraphConstructor, collate_list_of_dicts


def _write_published_weights(case: dict) -> dict:
    """A published-architecture model with seeded random weights, saved as the published code saves it."""
    import torch

    E3DensityModel, _, _ = _published_model(case["reference"])
    torch.manual_seed(0)
    model = E3DensityModel(**PAPER_HP)
    torch.save({"model": model.state_dict()}, case["checkpoint"])
    return {"params": sum(p.numel() for p in model.parameters())}


def _timed_predict(predict, case: dict) -> dict:
    """One warm-up call, then CPU and wall seconds of one call; saves ρ."""
    predict()
    c0, t0 = time.process_time(), time.perf_counter()
    rho = np.asarray(predict(), dtype=np.float64).reshape(-1)
    out = {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0, "max_abs_rho": float(np.abs(rho).max())}
    if case.get("save"):
        np.save(case["save"], rho)
    return out


def published_batch(GraphConstructor, collate, atoms, probes: np.ndarray, dtype) -> dict:
    """The published inference path's input for ``probes``: its graph dict (KD-tree probe graph), collated."""
    import torch

    graph = GraphConstructor(cutoff=PAPER_HP["cutoff"]).atoms_and_probes_to_graph(atoms, probes)
    graph.update(num_nodes=torch.tensor(graph["nodes"].shape[0]),
                 num_atom_edges=torch.tensor(graph["atom_edges"].shape[0]),
                 num_probes=torch.tensor(probes.shape[0]),
                 num_probe_edges=torch.tensor(graph["probe_edges"].shape[0]),
                 probe_xyz=torch.tensor(probes, dtype=dtype),
                 atom_xyz=torch.tensor(atoms.get_positions(), dtype=dtype),
                 cell=torch.tensor(np.array(atoms.get_cell()), dtype=dtype))
    return collate([graph])


def _run_published(case: dict) -> dict:
    import torch

    torch.set_num_threads(int(case["threads"]))
    E3DensityModel, GraphConstructor, collate = _published_model(case["reference"])
    model = E3DensityModel(**PAPER_HP)
    model.load_state_dict(torch.load(case["checkpoint"], map_location="cpu", weights_only=True)["model"])
    model.eval()
    atoms = _si(2)
    probes = _probes(atoms, int(case["probes"]))
    dtype = torch.get_default_dtype()

    def predict():
        with torch.no_grad():
            return model(published_batch(GraphConstructor, collate, atoms, probes, dtype)).numpy()

    out = dict(case, side="published", **_timed_predict(predict, case))
    out["peak_rss_mib"] = _rss_mib()
    return out


def _cdp_predictor(case: dict):
    from cdp.core.model import DensityModel
    from cdp.importers.charge3net import import_charge3net
    from cdp.plugins.backbones.chargee3net import native
    from cdp.predict import Predictor

    cfg, state = import_charge3net(case["checkpoint"], dict(PAPER_HP))
    cfg["backbone"]["backend"] = case["backend"]
    model = DensityModel.from_config(cfg)
    model.load_state_dict(state)
    if case["backend"] == "fast":
        native.load()  # at model load, as the CLI and load_model do: never inside the timed call
    return Predictor(model)


def _run_cdp(case: dict) -> dict:
    import torch

    from cdp.core.malloc import keep_freed_memory

    keep_freed_memory()  # as the CLI does
    torch.set_num_threads(int(case["threads"]))
    pred = _cdp_predictor(case)
    atoms = _si(2)
    probes = _probes(atoms, int(case["probes"]))
    out = dict(case, side="cdp", **_timed_predict(lambda: pred.predict(atoms, probes), case))
    out["peak_rss_mib"] = _rss_mib()
    if case["backend"] == "fast":
        from cdp.plugins.backbones.chargee3net import native

        out["isa"] = native._state.get("isa")
    return out


def _peak_flops(seconds: float = 1.0) -> float:
    """float32 FLOP/s of one thread: best of a few 1024² matmuls (MKL/OpenBLAS at its best)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * 1024**3 / best


def _kernel_flops(paths, pairs, n_edges: int, n_cols: int, table: bool) -> float:
    """Multiply-adds × 2 of the kernel per call: per pair mul FMAs, per output row mul (w · t) FMAs and
    mul adds, the coefficients A (2 per term), and with a table 4 multiply-adds per weight column."""
    paths, pairs = paths.long(), pairs.long()
    per_edge = 0
    for mul, d_k, _, _, _, _, q0, q1 in paths.tolist():
        rows = len(set(pairs[q0:q1, 0].tolist()))
        per_edge += 2 * mul * (q1 - q0) + 3 * mul * rows
    per_edge += 2 * int((pairs[:, 3] - pairs[:, 2]).sum())
    if table:
        per_edge += 8 * n_cols
    return float(per_edge) * n_edges


def _run_kernel(case: dict) -> dict:
    """The predict with radial MLPs and with radial tables (measured, same process), and the fused kernel's
    entry points timed alone on the recorded calls of one predict, for every ISA build: radial weights as
    precomputed rows or evaluated from the table inside the kernel; FLOP/s against the matmul peak."""
    import torch

    from cdp.core.malloc import keep_freed_memory
    from cdp.plugins.backbones.chargee3net import native
    from cdp.plugins.backbones.chargee3net.fast_conv import table_weights
    from cdp.plugins.backbones.chargee3net.tp_scatter import NativeTPScatter

    keep_freed_memory()  # as the CLI and the cdp case do
    torch.set_num_threads(1)
    pred = _cdp_predictor(dict(case, backend="fast"))
    atoms = _si(2)
    probes = _probes(atoms, int(case["probes"]))
    backbone, totals = pred.model.backbone, {}
    for radial in ("mlp", "table"):
        backbone.radial = radial
        pred.predict(atoms, probes)  # warm-up (builds the tables)
        c0 = time.process_time()
        pred.predict(atoms, probes)
        totals[radial] = time.process_time() - c0
    calls, original = [], NativeTPScatter.forward_table

    def record(self, x, sh, r, table, src, dst, ptr, n):
        calls.append((self, x, sh.contiguous(), r.contiguous(), table, src.contiguous(), dst.contiguous(), list(ptr), n))
        return original(self, x, sh, r, table, src, dst, ptr, n)

    NativeTPScatter.forward_table = record
    try:  # the probe decoder's kernel calls (the encoder's too), recorded for timing the entry points alone
        pred.predict(atoms, probes)
    finally:
        NativeTPScatter.forward_table = original
    prepared = [(c, table_weights(c[4], c[3])) for c in calls]
    edges = sum(c[5].shape[0] for c in calls)

    def flops(table: bool) -> float:
        total = 0.0
        for c, _ in prepared:
            paths, pairs, _, _ = c[0].plan.on(c[4].knots, "kernel")
            total += _kernel_flops(paths, pairs, c[5].shape[0], c[4].width, table)
        return total

    flops_rows, flops_table = flops(False), flops(True)
    peak = _peak_flops()
    out = dict(case, side="kernel", kernel_calls=len(prepared), edges=edges, predict_mlp_cpu_s=totals["mlp"],
               predict_table_cpu_s=totals["table"], peak_gflops=peak / 1e9, flops_rows=flops_rows,
               flops_table=flops_table, flops_per_probe_rows=flops_rows / int(case["probes"]), isas={})
    for isa in native.available_isas():
        lib = native.load_isa(isa)
        times = {}
        for kind in ("rows", "table"):
            best = float("inf")
            for _ in range(int(case.get("repeats", 3))):
                elapsed = 0.0
                for (impl, x, sh, r, table, src, dst, ptr, n), w in prepared:
                    saved, impl.lib = impl.lib, lib
                    try:
                        c0 = time.process_time()
                        if kind == "rows":
                            impl.forward_kernel(x, sh, w, src, dst, ptr, n)
                        else:
                            impl.forward_table(x, sh, r, table, src, dst, ptr, n)
                        elapsed += time.process_time() - c0
                    finally:
                        impl.lib = saved
                best = min(best, elapsed)
            times[kind] = best
        work = {"rows": flops_rows, "table": flops_table}
        out["isas"][isa] = {k: {"cpu_s": v, "gflops": work[k] / v / 1e9, "fraction_of_peak": work[k] / v / peak}
                            for k, v in times.items()}
    return out


def run_vs_published(reference: str, threads=(1, 2), probes: int = 1000) -> dict:
    """cdp (fast and e3nn backends) against the published code, same weights; see the module docstring."""
    ref = Path(reference)
    if not (ref / "src" / "charge3net" / "models" / "e3.py").is_file():
        raise SystemExit(f"error: {reference}: not the published ChargE3Net tree (no src/charge3net/models/e3.py)")
    results: dict = {"load_average_start": os.getloadavg(), "cpus": os.cpu_count(), "probes": probes, "runs": [],
                     "comparison": []}
    with tempfile.TemporaryDirectory(prefix="cdp-vs-published-") as tmp:
        ckpt = str(Path(tmp) / "published.pt")
        made = _spawn({"kind": "published-weights", "reference": str(ref), "checkpoint": ckpt, "threads": 1})
        if "error" in made:
            raise SystemExit(f"error: building the published model: {made['error']}")
        results["params"] = made["params"]
        for t in threads:
            side = {}
            for name, case in (("published", {"kind": "published", "reference": str(ref)}),
                               ("e3nn", {"kind": "cdp", "backend": "e3nn"}), ("fast", {"kind": "cdp", "backend": "fast"})):
                save = str(Path(tmp) / f"rho_{name}_{t}.npy")
                r = _spawn(dict(case, checkpoint=ckpt, threads=t, probes=probes, save=save))
                r["name"] = name
                results["runs"].append(r)
                side[name] = r
            if all("error" not in r for r in side.values()):
                rho = {k: np.load(Path(tmp) / f"rho_{k}_{t}.npy") for k in side}
                scale = float(np.abs(rho["e3nn"]).max())
                results["comparison"].append({
                    "threads": t,
                    "fast_vs_e3nn_over_max_rho": float(np.abs(rho["fast"] - rho["e3nn"]).max() / scale),
                    "e3nn_vs_published_over_max_rho": float(np.abs(rho["e3nn"] - rho["published"]).max() / scale),
                    "speedup_fast_cpu": side["published"]["cpu_s"] / side["fast"]["cpu_s"],
                    "speedup_e3nn_cpu": side["published"]["cpu_s"] / side["e3nn"]["cpu_s"],
                })
        results["kernel"] = _spawn({"kind": "kernel", "checkpoint": ckpt, "threads": 1, "probes": probes})
        k, pub = results["kernel"], [r for r in results["runs"] if r["name"] == "published" and r["threads"] == 1]
        if "error" not in k and pub and "error" not in pub[0]:
            k["speedup_mlp_cpu"] = pub[0]["cpu_s"] / k["predict_mlp_cpu_s"]
            k["speedup_table_cpu"] = pub[0]["cpu_s"] / k["predict_table_cpu_s"]
    for t in threads:
        by = {r["name"]: r for r in results["runs"] if r["threads"] == t and "error" not in r}
        if threads[0] in (1,) and t != 1 and by:
            base = {r["name"]: r for r in results["runs"] if r["threads"] == 1 and "error" not in r}
            results.setdefault("scaling", []).append(
                {"threads": t, **{n: base[n]["wall_s"] / by[n]["wall_s"] for n in by if n in base}})
    results["load_average_end"] = os.getloadavg()
    return results


def _vs_table(res: dict) -> str:
    lines = [f"load average: start {', '.join(f'{x:.2f}' for x in res['load_average_start'])}; end "
             f"{', '.join(f'{x:.2f}' for x in res['load_average_end'])} ({res.get('cpus')} CPUs; a load above "
             f"the CPU count makes multi-thread timings unreliable)",
             f"paper-size ChargE3Net ({res.get('params', 0):,} parameters), Si 64 atoms, {res['probes']} probes, "
             f"one predict after a warm-up", "",
             f"{'side':<10} {'thr':>3} {'CPU s':>8} {'wall s':>8} {'peak MiB':>9}"]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"{r['name']:<10} {r['threads']:>3} error: {r['error']}")
        else:
            lines.append(f"{r['name']:<10} {r['threads']:>3} {r['cpu_s']:>8.3f} {r['wall_s']:>8.3f} {r['peak_rss_mib']:>9.0f}")
    lines.append("")
    for c in res["comparison"]:
        lines.append(f"{c['threads']} thr: cdp fast {c['speedup_fast_cpu']:.1f}x the published code (CPU s), cdp e3nn "
                     f"{c['speedup_e3nn_cpu']:.1f}x; max|Δρ|/max|ρ| fast vs e3nn {c['fast_vs_e3nn_over_max_rho']:.1e}, "
                     f"e3nn vs published {c['e3nn_vs_published_over_max_rho']:.1e}")
    for s in res.get("scaling", []):
        lines.append(f"wall-time speedup 1 → {s['threads']} threads: " +
                     ", ".join(f"{k} {v:.2f}x" for k, v in s.items() if k != "threads"))
    k = res.get("kernel", {})
    if "error" in k:
        lines.append(f"kernel case: error: {k['error']}")
    elif k:
        lines += ["", f"fused kernel, 1 thread, {k['edges']:,} edges in {k['kernel_calls']} calls "
                      f"({k['flops_per_probe_rows'] / 1e6:.1f} MFLOP per probe); matmul peak {k['peak_gflops']:.1f} GFLOP/s; "
                      f"predict {k['predict_mlp_cpu_s']:.3f} CPU s with radial MLPs, {k['predict_table_cpu_s']:.3f} "
                      f"with radial tables (same process)",
                  f"{'ISA':<8} {'rows s':>8} {'GFLOP/s':>8} {'of peak':>8} {'table s':>8} {'GFLOP/s':>8} {'of peak':>8}"]
        for isa, v in k["isas"].items():
            lines.append(f"{isa:<8} {v['rows']['cpu_s']:>8.3f} {v['rows']['gflops']:>8.1f} {v['rows']['fraction_of_peak']:>8.1%} "
                         f"{v['table']['cpu_s']:>8.3f} {v['table']['gflops']:>8.1f} {v['table']['fraction_of_peak']:>8.1%}")
        if "speedup_table_cpu" in k:
            lines.append(f"vs the published code in that process: radial MLPs {k['speedup_mlp_cpu']:.1f}x, "
                         f"radial tables (the default) {k['speedup_table_cpu']:.1f}x")
    return "\n".join(lines)


_CASES = {"published-weights": _write_published_weights, "published": _run_published, "cdp": _run_cdp,
          "kernel": _run_kernel, "huge": _run_huge}


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
    ap.add_argument("--vs-published", action="store_true",
                    help="only the comparison with the published ChargE3Net code (same weights, 1,000 probes)")
    ap.add_argument("--reference", help="the published source tree (default $CDP_REFERENCE_CODE)")
    ap.add_argument("--probes", type=int, default=None, help="probes of --vs-published (default 1000)")
    args = ap.parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(_CASES.get(case.get("kind"), _run_case)(case)))
        return
    if args.vs_published:
        reference = args.reference or os.environ.get("CDP_REFERENCE_CODE")
        if not reference:
            raise SystemExit("error: --vs-published needs --reference DIR or CDP_REFERENCE_CODE")
        res = run_vs_published(reference, tuple(args.threads), args.probes or 1000)
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        print(_vs_table(res))
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
