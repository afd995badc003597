"""Fitting a model's atomic reference densities (:mod:`cdp.core.prior`) on the training grids.

Runs once before step 0: a seeded random subsample of training structures and of their grid points,
atom→probe edges from the model's own graph builder (so periodic images count as in training), the
normal equations accumulated per structure, then the KKT solve with ∫ρ⁰_Z = n_Z.  n_Z comes from the
electron counts the dataset's ``manifest.json`` records per structure (``electrons_expected``: the
recipe's valence count, e.g. GTH H 1, C 4, N 5, O 6, F 7) and otherwise from the grids' own totals
(Σρ·dV), in both cases by least squares over structures.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from cdp.core.prior import NormalEquations, PriorFit, electrons_per_element, fit_coefficients
from cdp.core.types import edge_vectors
from cdp.data.datasets import _stem

MAX_STRUCTURES = 512  # structures the fit reads at most
MAX_POINTS = 200_000  # grid points over all fitted structures
MAX_POINTS_PER_STRUCTURE = 20_000
MIN_POINTS_PER_STRUCTURE = 500


def manifest_electrons(source) -> Dict[str, float]:
    """``{dataset name: electrons_expected}`` from ``source/manifest.json`` (empty when absent or unreadable)."""
    path = os.path.join(str(source), "manifest.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as fh:
            structures = json.load(fh).get("structures", {})
        out = {}
        for key, entry in structures.items():
            value = entry.get("electrons_expected") if isinstance(entry, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[str(key)] = float(value)
                if isinstance(entry.get("file"), str):
                    out[_stem(entry["file"])] = float(value)
        return out
    except (OSError, ValueError, AttributeError):
        return {}


def fit_prior(model, cache, items: Sequence, seed: int, source=None) -> PriorFit:
    """Fit ``model.prior`` in place on training ``items`` (objects with ``name``, ``index``, ``batch``)
    whose grids ``cache.get(index)`` returns; returns the :class:`PriorFit` (also stored in the buffers)."""
    t0 = time.perf_counter()
    prior = model.prior
    rng = np.random.default_rng([int(seed), 0x7121])
    chosen = list(items)
    if len(chosen) > MAX_STRUCTURES:
        chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), MAX_STRUCTURES, replace=False))]
    per = int(np.clip(MAX_POINTS // max(len(chosen), 1), MIN_POINTS_PER_STRUCTURE, MAX_POINTS_PER_STRUCTURE))
    recorded = manifest_electrons(source) if source is not None else {}
    eqs = NormalEquations(prior)
    compositions: List[Dict[int, int]] = []
    totals: List[float] = []
    from_recipe = True
    with torch.no_grad():
        for item in chosen:
            entry = cache.get(item.index)
            values = entry.values.reshape(-1)
            k = min(per, values.size)
            flat = rng.choice(values.size, k, replace=False) if k < values.size else np.arange(values.size)
            batch = item.batch.to(dtype=torch.float64)
            probes = torch.from_numpy(entry.points(flat))
            graph = model.probe_graph(batch, probes)
            vec = edge_vectors(batch.positions, probes, graph.edge_index, graph.offsets, batch.cell, batch.atom_batch)
            numbers = batch.numbers.numpy()
            eqs.add(numbers, graph.edge_index.numpy(), (vec * vec).sum(-1).numpy(), values[flat].astype(np.float64))
            compositions.append(dict(Counter(int(z) for z in numbers)))
            if item.name in recorded:
                totals.append(recorded[item.name])
            else:
                from_recipe = False
                volume = abs(float(np.linalg.det(entry.cell))) / values.size
                totals.append(float(values.sum(dtype=np.float64)) * volume)
    electrons, resid = electrons_per_element(compositions, totals, integer=from_recipe)
    fit = fit_coefficients(eqs, electrons)
    fit.electrons_source = "manifest electrons_expected (recipe valence count)" if from_recipe else "grid totals (sum rho dV)"
    fit.info = {"electron_count_residual": resid, "points_per_structure": per, "seconds": time.perf_counter() - t0,
                "n_basis": prior.n_basis, "cutoff": float(prior.cutoff)}
    prior.set_fit(fit)
    return fit


def fit_record(fit: PriorFit) -> dict:
    """The JSON-able summary of a fit written to a training log."""
    return {
        "electrons": {str(z): round(v, 6) for z, v in sorted(fit.electrons.items())},
        "electrons_source": fit.electrons_source,
        "rmse": fit.rmse,
        "relative_l2": fit.relative_l2,
        "constraint_error": fit.constraint_error,
        "points": fit.points,
        "structures": fit.structures,
        **fit.info,
    }
