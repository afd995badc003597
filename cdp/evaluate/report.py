"""The comparison report: report.json, report.md, the terminal table and PNG figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np

from cdp.core.atomic import atomic_write_text


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def table(report: dict) -> str:
    """The side-by-side table (markdown, also printed on the terminal)."""
    head = ("| model | preset | parameters | steps | train s | train probes/s | load avg | ε_mae mean % | ± stderr | median | max "
            "| prior alone ε_mae % | inference probes/s | peak RSS MB |")
    rows = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for m in report["models"]:
        e = m["evaluate"]["eps_mae"]
        prior = (m.get("prior") or {}).get("eps_mae", {}).get("mean")
        load = (m.get("load_average") or [None])[0]
        rows.append(
            f"| {m['name']} | {m.get('preset') or 'checkpoint'} | {m['parameters']:,} | {m['steps']} | "
            f"{m['train_seconds']:.0f} | {_fmt(m['train_probes_per_s'], '.0f')} | {_fmt(load, '.2f')} | {_fmt(e['mean'])} | "
            f"{_fmt(e.get('stderr'))} | {_fmt(e.get('median'))} | {_fmt(e.get('max'))} | {_fmt(prior)} | "
            f"{_fmt(m.get('inference_probes_per_s'), '.0f')} | "
            f"{_fmt(m.get('peak_rss_mb'), '.0f')} |"
        )
    return "\n".join(rows)


def write_report(outdir: Path, report: dict) -> str:
    """Write report.json, report.md and the figures; returns the table."""
    outdir = Path(outdir)
    text = table(report)
    figures = write_figures(outdir, report)
    report = dict(report, figures=figures)
    atomic_write_text(outdir / "report.json", json.dumps(report, indent=2, default=_json_default))
    md = [
        "# cdp compare",
        "",
        f"Data: {report['data']} (test split) · seed {report['seed']} · size {report['size']} · budget: "
        + _budget_text(report["budget"]) + _load_text(report.get("load_average")),
        "",
        text,
        "",
        _prior_text(report["models"]),
        "",
        "ε_mae = 100·Σ|ρ−ρ̂|/Σ|ρ| over each full test grid (paper Eq. 5); mean ± standard error over structures.",
        "Each model trained with its own preset's training defaults on the same data, seed and budget,",
        "in its own process (peak RSS is that process's).",
        "",
    ]
    if report.get("errors"):
        md += ["## Failed", ""] + [f"- {k}: {v.splitlines()[0]}" for k, v in report["errors"].items()] + [""]
    md += [f"![{f}]({f})" for f in figures]
    atomic_write_text(outdir / "report.md", "\n".join(md) + "\n")
    return text


def _budget_text(budget: dict) -> str:
    if not budget:
        return "none (given checkpoints)"
    if all(isinstance(v, dict) for v in budget.values()):  # per model
        return ", ".join(f"{k} " + (f"{v['steps']} steps" if "steps" in v else f"{v['time_budget_s']:g} s")
                         for k, v in budget.items())
    return ", ".join(f"{k} = {v}" for k, v in budget.items()) + " per model"


def _load_text(load) -> str:
    return f" · load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)" if load else ""


def _prior_text(models: List[dict]) -> str:
    """Which models add atomic reference densities, and what those alone score."""
    on = [m for m in models if m.get("prior")]
    if not on:
        return "Atomic prior: off for every model (the network predicts the whole density)."
    parts = [f"{m['name']} (prior alone ε_mae {m['prior']['eps_mae']['mean']:.3f} %)" for m in on]
    off = [m["name"] for m in models if not m.get("prior")]
    return ("Atomic prior: on for " + ", ".join(parts) + (f"; off for {', '.join(off)}" if off else "")
            + ". These models predict ρ = Σ_a ρ⁰_Z(|r − R_a|) + network(r), the per-element profiles ρ⁰_Z fitted "
            "on the training grids with ∫ρ⁰_Z = n_Z; every ε_mae is of the total density.")


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_figures(outdir: Path, report: dict) -> List[str]:
    """learning_curves.png, eps_mae_per_structure.png, density_slice.png (those that have data)."""
    import matplotlib  # start-up: matplotlib loads only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: matplotlib loads only when a figure is drawn

    written = []
    models = report["models"]
    # learning curves
    fig, ax = plt.subplots(figsize=(6, 4))
    any_curve = False
    for m in models:
        log = outdir / "logs" / f"{m['name']}.jsonl"
        if not log.is_file():
            continue
        steps, losses = [], []
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in rec and "step" in rec:
                steps.append(rec["step"])
                losses.append(rec["loss"])
        if steps:
            ax.plot(steps, losses, label=m["name"])
            any_curve = True
    if any_curve:
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (each model's own loss)")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(outdir / "learning_curves.png", dpi=100)
        written.append("learning_curves.png")
    plt.close(fig)
    # eps_mae per structure
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [s["name"] for s in models[0]["evaluate"]["structures"]]
    width = 0.8 / max(1, len(models))
    for k, m in enumerate(models):
        vals = [s["eps_mae"] for s in m["evaluate"]["structures"]]
        ax.bar(np.arange(len(vals)) + k * width, vals, width, label=m["name"])
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("ε_mae (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "eps_mae_per_structure.png", dpi=100)
    plt.close(fig)
    written.append("eps_mae_per_structure.png")
    # density slice: reference, each model, and its error
    slices = []
    for m in models:
        path = outdir / "work" / f"slice-{m['name']}.npz"
        if path.is_file():
            with np.load(path) as z:
                slices.append((m["name"], z["reference"], z["prediction"], str(z["name"])))
    if slices:
        n = len(slices)
        fig, axes = plt.subplots(2, n + 1, figsize=(3 * (n + 1), 6), squeeze=False)
        ref = slices[0][1]
        vmax = float(np.abs(ref).max()) or 1.0
        axes[0, 0].imshow(ref.T, origin="lower", vmin=0, vmax=vmax)
        axes[0, 0].set_title(f"reference\n{slices[0][3]}", fontsize=8)
        axes[1, 0].axis("off")
        lim = max(float(np.abs(pred - ref).max()) for _, _, pred, _ in slices) or 1.0  # one error scale for all
        for k, (name, _, pred, _) in enumerate(slices, start=1):
            axes[0, k].imshow(pred.T, origin="lower", vmin=0, vmax=vmax)
            axes[0, k].set_title(name, fontsize=8)
            err = pred - ref
            axes[1, k].imshow(err.T, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[1, k].set_title(f"{name} − reference (±{lim:.2g})", fontsize=8)
        for a in axes.ravel():
            a.set_xticks([])
            a.set_yticks([])
        fig.tight_layout()
        fig.savefig(outdir / "density_slice.png", dpi=100)
        plt.close(fig)
        written.append("density_slice.png")
    return written
