"""Runtime scaling on supercells of one structure (ChargE3Net paper Fig. 6), also the benchmark's scaling case.

For n = 1, 2, … the n×n×n supercell (up to ``max_atoms``) gets ``probes_per_atom`` random probes per atom;
a fresh spawned process per size times graph construction, the atom encoder (once) and the probe decoder
(in probe batches) separately and reports its peak RSS.  The exponent α of wall time ∝ N^α comes from a
least-squares line on log-log axes.  Writes ``scaling.json``, ``scaling.md`` and ``scaling.png``.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from ase.build import bulk
import ase.io
import numpy as np
import torch

from cdp.core.checkpoint import load_checkpoint
from cdp.core.constants import DEFAULT_PROBE_BATCH  # noqa: F401  (re-exported for cdp.cli.experiment)
from cdp.core.malloc import keep_freed_memory
from cdp.core.model import DensityModel
from cdp.core.registry import get_registry
from cdp.core.types import Batch, CdpError
from cdp.evaluate.experiments import atomic_figure, atomic_text, json_default, peak_rss_mb, prepare_out, run_in_process

DEFAULT_MODEL = "chargee3net-cpu"
DEFAULT_MAX_ATOMS = 512
DEFAULT_PROBES_PER_ATOM = 50
DEFAULT_FIT_MIN_ATOMS = 64  # smaller cells are dominated by fixed per-call overheads
SCALING_FILES = ("scaling.json", "scaling.md", "scaling.png")
PARTS = ("graph_s", "encode_s", "decode_s")


def si_diamond():
    """Silicon, diamond structure, conventional 8-atom cubic cell (a = 5.43 Å)."""
    return bulk("Si", "diamond", a=5.43, cubic=True)


def read_structure(path) -> object:
    """The first frame of an ase-readable periodic structure file."""
    try:
        atoms = ase.io.read(str(path), index=0)
    except FileNotFoundError:
        raise CdpError(f"{path}: no such structure file") from None
    except Exception as exc:
        raise CdpError(f"{path}: cannot read a structure ({type(exc).__name__}: {exc})") from None
    if len(atoms) == 0:
        raise CdpError(f"{path}: the structure has no atoms")
    if not np.all(atoms.pbc) or atoms.cell.rank < 3:
        raise CdpError(f"{path}: supercells need a 3D periodic structure (a cell and pbc on all axes)")
    return atoms


def fit_exponent(atoms: Sequence[float], seconds: Sequence[float]) -> Tuple[float, float]:
    """(α, c) of the least-squares line log t = α·log N + log c; needs two or more distinct N and t > 0."""
    n = np.asarray(atoms, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    if n.shape != t.shape or n.ndim != 1:
        raise ValueError("atoms and seconds must be 1-D sequences of the same length")
    if np.any(n <= 0) or np.any(t <= 0) or not np.all(np.isfinite(t)):
        raise ValueError("atom counts and times must be positive and finite")
    if len(np.unique(n)) < 2:
        raise ValueError("the fit needs at least two different sizes")
    x, y = np.log(n), np.log(t)
    design = np.stack([x, np.ones_like(x)], axis=1)
    (alpha, logc), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(alpha), float(np.exp(logc))


def supercell_sizes(natoms: int, max_atoms: int) -> list:
    """Repeats n = 1, 2, … with n³·natoms ≤ max_atoms (always at least n = 1)."""
    reps, n = [1], 2
    while n**3 * natoms <= max_atoms:
        reps.append(n)
        n += 1
    return reps


# -- one size, in its own process ----------------------------------------------------------------------
def build_model(model: str, backend: Optional[str], seed: int):
    """A DensityModel from a checkpoint file or a preset (seeded random weights); ``backend`` overrides
    ChargE3Net's convolution backend (the parameters are the same for every backend)."""
    if Path(str(model)).is_file():
        net, _ = load_checkpoint(model)
        if backend is not None:
            cfg = {k: dict(v) for k, v in net.config.items()}
            cfg["backbone"]["backend"] = backend
            state = net.state_dict()
            net = DensityModel.from_config(cfg).to(net.dtype)
            net.load_state_dict(state)
        return net.eval()
    reg = get_registry()
    if str(model) not in reg.presets:
        raise CdpError(f"--model: '{model}' is neither a checkpoint file nor a preset ({', '.join(sorted(reg.presets))})")
    cfg = {k: dict(v) for k, v in reg.preset(str(model)).items() if k in ("featurizer", "graph", "backbone", "readout")}
    if backend is not None:
        cfg["backbone"]["backend"] = backend
    torch.manual_seed(seed)
    return DensityModel.from_config(cfg).eval()


def _time_size(net, atoms, probes_per_atom: int, probe_batch: int, seed: int) -> dict:
    """Time atom graph, encoder, probe graphs and decoder on one structure with random probes."""
    batch = Batch.from_atoms([atoms]).to("cpu", net.dtype)
    m = int(probes_per_atom) * len(atoms)
    rng = np.random.default_rng(seed)
    probes = torch.from_numpy(rng.uniform(0.0, 1.0, (m, 3)) @ np.asarray(atoms.cell.array)).to(net.dtype)
    row = {"atoms": len(atoms), "probes": m}
    with torch.no_grad():
        t0 = time.perf_counter()
        agraph = net.atom_graph(batch)
        atom_graph_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = net.encode(batch, agraph)
        row["encode_s"] = time.perf_counter() - t0
        probe_graph_s = decode_s = 0.0
        probe_edges = 0
        for s in range(0, m, probe_batch):
            chunk = probes[s : s + probe_batch]
            t0 = time.perf_counter()
            pgraph = net.probe_graph(batch, chunk)
            probe_graph_s += time.perf_counter() - t0
            probe_edges += int(pgraph.edge_index.shape[1])
            t0 = time.perf_counter()
            net.decode(batch, feats, chunk, graph=pgraph)
            decode_s += time.perf_counter() - t0
    row.update(
        atom_edges=int(agraph.edge_index.shape[1]),
        probe_edges=probe_edges,
        atom_graph_s=atom_graph_s,
        probe_graph_s=probe_graph_s,
        graph_s=atom_graph_s + probe_graph_s,
        decode_s=decode_s,
    )
    row["total_s"] = row["graph_s"] + row["encode_s"] + row["decode_s"]
    row["probes_per_s"] = m / row["total_s"] if row["total_s"] > 0 else None
    return row


def measure_size(case: dict) -> dict:
    """One supercell in this process: warm up on the unit cell, then time the n×n×n supercell."""
    keep_freed_memory()  # per-batch temporaries reused, as in the CLI

    torch.set_num_threads(max(1, int(case["threads"])))
    t0 = time.perf_counter()
    net = build_model(case["model"], case.get("backend"), int(case["seed"]))
    build_s = time.perf_counter() - t0
    unit = read_structure(case["structure"]) if case.get("structure") else si_diamond()
    _time_size(net, unit, 2, int(case["probe_batch"]), int(case["seed"]))  # warm-up: lazy setup, allocator
    rss_before = peak_rss_mb()
    atoms = unit.repeat(int(case["rep"]))
    row = _time_size(net, atoms, int(case["probes_per_atom"]), int(case["probe_batch"]), int(case["seed"]))
    row.update(rep=int(case["rep"]), build_s=build_s, rss_after_warmup_mb=rss_before, peak_rss_mb=peak_rss_mb(),
               threads=int(torch.get_num_threads()))
    return row


def _worker(case: dict, queue) -> None:
    try:
        queue.put(("ok", measure_size(case)))
    except CdpError as exc:
        queue.put(("error", str(exc)))
    except BaseException as exc:  # report, never hang the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _check_model(model: str) -> None:
    reg = get_registry()
    if not Path(str(model)).is_file() and str(model) not in reg.presets:
        raise CdpError(f"--model: '{model}' is neither a checkpoint file nor a preset ({', '.join(sorted(reg.presets))})")


# -- the study ------------------------------------------------------------------------------------------
def fit_rows(rows: list, min_atoms: int = DEFAULT_FIT_MIN_ATOMS) -> dict:
    """Exponents of total time and of each part over sizes with N ≥ min_atoms (all sizes when fewer than 2)."""
    used = [r for r in rows if r["atoms"] >= min_atoms]
    if len({r["atoms"] for r in used}) < 2:
        used = list(rows)
    fits: dict = {"fit_atoms": [r["atoms"] for r in used]}
    for key in ("total_s", *PARTS):
        n = [r["atoms"] for r in used if r.get(key, 0) > 0]
        t = [r[key] for r in used if r.get(key, 0) > 0]
        try:
            alpha, c = fit_exponent(n, t)
        except ValueError:
            alpha, c = None, None
        fits[key.replace("_s", "")] = {"exponent": alpha, "prefactor_s": c}
    return fits


def scaling_study(
    model: str = DEFAULT_MODEL,
    structure: Optional[str] = None,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    probes_per_atom: int = DEFAULT_PROBES_PER_ATOM,
    threads: int = 1,
    backend: Optional[str] = None,
    out: Optional[os.PathLike] = None,
    probe_batch: int = DEFAULT_PROBE_BATCH,
    seed: int = 0,
    fit_min_atoms: int = DEFAULT_FIT_MIN_ATOMS,
    force: bool = True,
    echo: Optional[Callable] = None,
    isolate: bool = True,
) -> dict:
    """Time ``model`` on n×n×n supercells of ``structure`` (default Si diamond, 8 atoms) up to ``max_atoms``.

    ``model`` is a preset (seeded random weights: speed does not depend on training) or a checkpoint file;
    each size runs in a fresh process with ``threads`` torch threads.  Returns
    ``{"rows": [...], "fit": {"total": {"exponent", "prefactor_s"}, "graph": …, "encode": …, "decode": …}, …}``
    and, when ``out`` is given, writes scaling.json/md/png there.  ``isolate=False`` times every size in this
    process (for tests; peak RSS is then this process's).
    """
    say = echo or (lambda *a: None)
    if int(max_atoms) < 1:
        raise CdpError(f"max_atoms must be positive, got {max_atoms}")
    if int(probes_per_atom) < 1:
        raise CdpError(f"probes_per_atom must be at least 1, got {probes_per_atom}")
    if int(threads) < 1:
        raise CdpError(f"threads must be at least 1, got {threads}")
    if int(probe_batch) < 1:
        raise CdpError(f"probe_batch must be at least 1, got {probe_batch}")
    if backend is not None and backend not in ("fast", "e3nn"):
        raise CdpError(f"--backend must be fast or e3nn, got '{backend}'")
    unit = read_structure(structure) if structure is not None else si_diamond()
    _check_model(model)  # a clear error here, before any process starts
    outdir = prepare_out(out, SCALING_FILES, force, "cdp-scaling") if out is not None else None
    reps = supercell_sizes(len(unit), int(max_atoms))
    rows, errors = [], {}
    for rep in reps:
        case = {"model": str(model), "structure": None if structure is None else str(structure), "rep": rep,
                "probes_per_atom": int(probes_per_atom), "threads": int(threads), "backend": backend,
                "probe_batch": int(probe_batch), "seed": int(seed)}
        status, payload = run_in_process(_worker, (case,), isolate)
        if status == "ok":
            rows.append(payload)
            say(f"[{rep}x{rep}x{rep}] {payload['atoms']} atoms, {payload['probes']} probes: graph {payload['graph_s']:.3f} s, "
                f"encode {payload['encode_s']:.3f} s, decode {payload['decode_s']:.3f} s, peak RSS {payload['peak_rss_mb']:.0f} MB")
        else:
            errors[f"{rep}x{rep}x{rep}"] = payload
            say(f"[{rep}x{rep}x{rep}] failed: {payload.splitlines()[0]}")
    if not rows:
        raise CdpError("every size failed: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in errors.items()))
    result = {
        "experiment": "scaling",
        "model": str(model),
        "structure": str(structure) if structure is not None else "Si diamond, conventional 8-atom cell (a = 5.43 Å)",
        "formula": unit.get_chemical_formula(),
        "max_atoms": int(max_atoms),
        "probes_per_atom": int(probes_per_atom),
        "probe_batch": int(probe_batch),
        "threads": int(threads),
        "backend": backend,
        "seed": int(seed),
        "isolated": bool(isolate),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "rows": rows,
        "errors": errors,
        "fit": fit_rows(rows, fit_min_atoms) if len(rows) >= 2 else None,
    }
    if outdir is not None:
        text = write_scaling(outdir, result)
        say(text)
        say(f"results: {outdir}")
        result["out"] = str(outdir)
    return result


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def scaling_table(result: dict) -> str:
    """The per-size table (markdown)."""
    head = "| supercell | atoms | probes | graph s | encode s | decode s | total s | probes/s | peak RSS MB |"
    rows = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in result["rows"]:
        rows.append(
            f"| {r['rep']}×{r['rep']}×{r['rep']} | {r['atoms']} | {r['probes']} | {r['graph_s']:.3f} | {r['encode_s']:.3f} | "
            f"{r['decode_s']:.3f} | {r['total_s']:.3f} | {_fmt(r.get('probes_per_s'), '.0f')} | {r['peak_rss_mb']:.0f} |"
        )
    fit = result.get("fit")
    if fit:
        parts = ", ".join(f"{k} {_fmt(fit[k]['exponent'], '.2f')}" for k in ("total", "graph", "encode", "decode"))
        rows += ["", f"Exponent α of time ∝ N^α (least squares on log-log over N = {fit['fit_atoms']}): {parts}"]
    return "\n".join(rows)


def write_scaling(outdir: Path, result: dict) -> str:
    """Write scaling.png, scaling.json and scaling.md; returns the table."""
    outdir = Path(outdir)
    plot_scaling(result, outdir / "scaling.png")
    text = scaling_table(result)
    atomic_text(outdir / "scaling.json", json.dumps(result, indent=2, default=json_default))
    load = result.get("load_average")
    md = [
        "# Runtime scaling with system size (ChargE3Net paper Fig. 6)",
        "",
        f"Model {result['model']} (backend {result['backend'] or 'default'}) · supercells of {result['structure']} "
        f"({result['formula']}) up to {result['max_atoms']} atoms · {result['probes_per_atom']} random probes per atom, "
        f"decoded in batches of {result['probe_batch']} · {result['threads']} thread(s)"
        + (f" · load average at the end {load[0]:.2f}" if load else ""),
        "",
        text,
        "",
        "Graph = atom and probe neighbour lists; encode = atom layers (once per structure); decode = probe layers",
        "and readout over all probe batches. Each size runs in a fresh process after a warm-up on the unit cell;",
        "peak RSS is that process's.",
        "",
    ]
    if result.get("errors"):
        md += ["## Failed", ""] + [f"- {k}: {v.splitlines()[0]}" for k, v in result["errors"].items()] + [""]
    md += ["![scaling](scaling.png)", ""]
    atomic_text(outdir / "scaling.md", "\n".join(md))
    return text


def plot_scaling(result: dict, path: Path) -> None:
    """Log-log wall time against atoms: total and each part, with the fitted power law of the total."""
    import matplotlib  # start-up: matplotlib loads only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: matplotlib loads only when a figure is drawn

    rows = result["rows"]
    n = np.array([r["atoms"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(n, [r["total_s"] for r in rows], "o-", color="k", label="total")
    for key, style in zip(PARTS, ("s--", "^--", "v--")):
        vals = np.array([r[key] for r in rows])
        if np.all(vals > 0):
            ax.loglog(n, vals, style, alpha=0.7, label=key[:-2])
    fit = result.get("fit")
    if fit and fit["total"]["exponent"] is not None:
        a, c = fit["total"]["exponent"], fit["total"]["prefactor_s"]
        xs = np.geomspace(n.min(), n.max(), 50)
        ax.loglog(xs, c * xs**a, ":", color="C3", label=f"fit: t ∝ N^{a:.2f}")
    ax.set_xlabel("atoms N")
    ax.set_ylabel("wall time (s)")
    ax.set_title(f"{result['model']}, {result['probes_per_atom']} probes/atom, {result['threads']} thread(s)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_figure(fig, path)
    finally:
        plt.close(fig)
