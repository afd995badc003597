"""``cdp data info``: a short description of a dataset (items, elements, grids, electrons, splits)."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Optional

from ase.formula import Formula
import numpy as np

from cdp.core.types import CdpError
from cdp.data.datasets import load_dataset, load_split
from cdp.data.paths import embedded_path


def _manifest(path: str) -> Optional[dict]:
    man = os.path.join(path, "manifest.json") if os.path.isdir(path) else None
    if man and os.path.exists(man):
        try:
            with open(man) as fh:
                return json.load(fh)
        except (OSError, json.JSONDecodeError):
            return None
    return None


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def dataset_info(path: Optional[str] = None, split: Optional[str] = None, read_all: Optional[bool] = None) -> dict:
    """JSON-able summary of the dataset at ``path`` (None → embedded).

    Uses the generator manifest when it has per-structure metadata; otherwise (or with
    ``read_all=True``) reads every item.  Unreadable items are counted, not fatal.
    """
    path = embedded_path() if path is None else os.fspath(path)
    ds = load_dataset(path)
    info = {
        "dataset": os.path.abspath(path),
        "embedded": os.path.abspath(path) == os.path.abspath(embedded_path()),
        "kind": type(ds).__name__,
        "items": len(ds),
        "bytes_on_disk": _size(path),
    }
    man = _manifest(path)
    entries = (man or {}).get("structures", {})
    use_manifest = (not read_all) and entries and all(n in entries and "shape" in entries[n] for n in ds.names)
    elements: Counter = Counter()
    shapes, points, electrons, unreadable = [], [], [], []
    if use_manifest:
        for n in ds.names:
            e = entries[n]
            if "formula" in e:
                elements.update(Formula(e["formula"]).count().keys())
            shapes.append(tuple(e["shape"]))
            points.append(int(np.prod(e["shape"])))
            if "electrons_grid" in e:
                electrons.append(float(e["electrons_grid"]))
    else:
        for i in range(len(ds)):
            try:
                s = ds[i]
            except CdpError as exc:
                unreadable.append(str(exc))
                continue
            elements.update(set(s.atoms.get_chemical_symbols()))
            shapes.append(s.grid.shape)
            points.append(int(np.prod(s.grid.shape)))
            electrons.append(s.grid.electrons)
    info["elements"] = dict(sorted(elements.items()))
    if points:
        info["grid_points"] = {"min": min(points), "median": int(np.median(points)), "max": max(points), "total": sum(points)}
    if electrons:
        info["electrons"] = {"min": round(min(electrons), 4), "max": round(max(electrons), 4)}
    if unreadable:
        info["unreadable"] = unreadable
    if man and "generator" in man:
        info["generator"] = man["generator"]
    spl = load_split(split) if split else ds.splits
    if spl:
        info["split"] = {k: len(v) for k, v in spl.items()}
    return info


def format_info(info: dict) -> str:
    """Human-readable text of :func:`dataset_info`."""
    lines = [f"dataset: {info['dataset']}{' (embedded)' if info.get('embedded') else ''}"]
    lines.append(f"layout: {info['kind']}, {info['items']} items, {info['bytes_on_disk'] / 1e6:.2f} MB on disk")
    if info.get("elements"):
        lines.append("elements: " + ", ".join(f"{k} ({v})" for k, v in info["elements"].items()))
    if "grid_points" in info:
        g = info["grid_points"]
        lines.append(f"grid points per item: min {g['min']}, median {g['median']}, max {g['max']} (total {g['total']})")
    if "electrons" in info:
        lines.append(f"electrons on the grid: {info['electrons']['min']} to {info['electrons']['max']}")
    if "split" in info:
        lines.append("split: " + ", ".join(f"{k} {v}" for k, v in info["split"].items()))
    gen = info.get("generator")
    if gen:
        rc = gen.get("recipe", {})
        lines.append(
            "recipe: " + ", ".join(f"{k}={rc[k]}" for k in ("code", "xc", "basis", "pseudo", "spacing", "vacuum", "cutoff_eV") if k in rc)
        )
        if gen.get("command"):
            lines.append(f"command: {gen['command']}")
    for msg in info.get("unreadable", []):
        lines.append(f"unreadable: {msg}")
    return "\n".join(lines)
