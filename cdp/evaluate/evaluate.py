"""``evaluate``: ε_mae of a model on full reference grids, streamed in probe batches, plus ζ and electron counts.

Atom features are computed once per structure; the grid passes through the decoder in probe batches and
each batch is reduced into running sums at once, so memory does not grow with the grid size.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from cdp.core.atomic import atomic_write_bytes
from cdp.core.types import Batch, CdpError, DensityGrid
from cdp.core.validate import check_overlap
from cdp.data import load_dataset
from cdp.evaluate.metrics import EpsMae, summarize, zeta
from cdp.predict import DEFAULT_PROBE_BATCH, Predictor, check_elements, load_model

Item = Tuple[str, object, DensityGrid]


# -- data ----------------------------------------------------------------------------------------------


def open_data(data=None, split: Optional[str] = "test") -> Tuple[Iterable[Item], str, str]:
    """(items, data label, split used) for ``data``: None (the embedded dataset), a path, a Dataset or items.

    A dataset with splits gives its ``split`` part; one without splits is evaluated whole (split "all"),
    as is any dataset when ``split`` is None or "all". Unreadable items are skipped and named by the
    dataset's iterator.
    """
    if data is None or isinstance(data, (str, os.PathLike)):
        dataset = load_dataset(None if data is None else os.fspath(data))
        label = "embedded" if data is None else os.fspath(data)
    elif hasattr(data, "names") and hasattr(data, "split"):
        dataset, label = data, str(getattr(data, "source", "dataset"))
    else:
        return data, "in-memory", "given"
    if split in (None, "all") or not getattr(dataset, "splits", None):
        return dataset, label, "all"
    return dataset.split(split), label, split


class CheckedItems:
    """Dataset items ``(name, atoms, grid)`` with ``pbc`` applied, every structure checked for atoms on
    top of each other (cdp.core.validate.check_overlap) before any model runs.

    Samples read by the check are kept for the evaluation while they total at most ``cache_points`` grid
    points; the others are read again.  Unreadable items are reported once (``on_error`` of the dataset,
    else a warning on stderr) and skipped.
    """

    def __init__(self, data=None, split: Optional[str] = "test", pbc: Optional[bool] = None,
                 cache_points: int = 1 << 24):
        items, self.label, self.split = open_data(data, split)
        self.pbc = pbc
        self._items = items if _random_access(items) else list(items)
        self._warn = getattr(items, "on_error", None) or _warn
        self._cache: dict = {}
        self._skip: set = set()
        budget = int(cache_points)
        for i in range(len(self._items)):
            item = self._read(i, report=True)
            if item is None:
                continue
            name, atoms, grid = item
            check_overlap(atoms, str(name))
            points = int(np.prod(grid.shape))
            if points <= budget:
                self._cache[i] = item
                budget -= points

    def _read(self, i: int, report: bool) -> Optional[Item]:
        try:
            item = self._items[i]
            name, atoms, grid = item
        except CdpError as exc:
            self._skip.add(i)
            if report:
                self._warn(f"skipped: {exc}")
            return None
        except (TypeError, ValueError):
            raise CdpError("dataset items must be (name, atoms, DensityGrid) triples") from None
        _apply_pbc(atoms, grid, self.pbc)
        return name, atoms, grid

    def __len__(self) -> int:
        return len(self._items) - len(self._skip)

    def __iter__(self) -> Iterator[Item]:
        for i in range(len(self._items)):
            if i in self._skip:
                continue
            item = self._cache.get(i) or self._read(i, report=True)
            if item is not None:
                yield item


def _random_access(items) -> bool:
    return hasattr(items, "__len__") and hasattr(items, "__getitem__") and not isinstance(items, (str, bytes))


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _apply_pbc(atoms, grid: DensityGrid, pbc: Optional[bool]) -> None:
    if pbc is False:
        _set_molecule(atoms, grid)
    elif pbc is True:
        atoms.pbc = True
        grid.pbc = np.ones(3, dtype=bool)


# -- model ---------------------------------------------------------------------------------------------


def as_predictor(model, device: Optional[str] = None, probe_batch: Optional[int] = None):
    """A Predictor from a Predictor, a DensityModel, a checkpoint path, a shipped model or a preset name."""
    if isinstance(model, Predictor) or hasattr(model, "predict_grid"):
        return model
    return load_model(model, device=device or "cpu", probe_batch=probe_batch or DEFAULT_PROBE_BATCH)


# -- evaluation ----------------------------------------------------------------------------------------


def _set_molecule(atoms, grid: DensityGrid) -> None:
    atoms.pbc = False
    grid.pbc = np.zeros(3, dtype=bool)


def structure_record(name: str, atoms, grid: DensityGrid, acc, acc_spin, pred_sum: float, t0: float) -> dict:
    """One structure's evaluation record from its accumulated ε_mae (and spin ε_mae, or None), the sum of the
    predicted values and the start time (``time.perf_counter``)."""
    record = {
        "name": name,
        "eps_mae": acc.value,
        "zeta": zeta(grid, atoms),
        "electrons_ref": grid.electrons,
        "electrons_pred": pred_sum * grid.voxel_volume,
        "seconds": time.perf_counter() - t0,
        "grid_shape": list(grid.shape),
    }
    if acc_spin is not None:
        record["eps_mae_spin"] = acc_spin.value
    return record


def evaluate_structure(predictor, name: str, atoms, grid: DensityGrid, probe_batch: Optional[int] = None,
                       bar=None) -> dict:
    """Per-structure record: ε_mae (and of the magnetisation when both sides have spin), ζ, electrons, seconds."""
    check_elements(predictor, atoms, name)
    ref = np.asarray(grid.values, dtype=np.float64).reshape(-1)
    ref_spin = None if grid.spin is None else np.asarray(grid.spin, dtype=np.float64).reshape(-1)
    both_spin = ref_spin is not None and bool(predictor.spin)
    acc, acc_spin = EpsMae(), EpsMae()
    pred_sum = 0.0
    t0 = time.perf_counter()
    if hasattr(predictor, "iter_grid"):
        stream = predictor.iter_grid(atoms, grid.shape, grid.cell, grid.origin, probe_batch)
    else:  # a runtime without streaming (e.g. onnx): one full grid
        full = predictor.predict_grid(atoms, grid.shape, grid.cell, grid.origin, probe_batch)
        out = full.values.reshape(-1) if full.spin is None else np.stack([full.values.reshape(-1), full.spin.reshape(-1)], 1)
        stream = iter([(0, out)])
    for start, out in stream:
        total = out[:, 0] if out.ndim == 2 else out
        stop = start + len(total)
        acc.update(ref[start:stop], total)
        pred_sum += float(total.sum())
        if both_spin:
            acc_spin.update(ref_spin[start:stop], out[:, 1])
        if bar is not None:
            bar.update(len(total))
    record = structure_record(name, atoms, grid, acc, acc_spin if both_spin else None, pred_sum, t0)
    return record


def evaluate(
    model_or_predictor,
    data=None,
    split: Optional[str] = "test",
    pbc: Optional[bool] = None,
    device: Optional[str] = None,
    probe_batch: Optional[int] = None,
    progress: bool = True,
    on_structure=None,
) -> dict:
    """Evaluate a model on the full reference grids of ``data`` (default: the embedded dataset's test split).

    ``pbc=False`` treats every structure as a molecule (the ``--no-pbc`` of the CLI). Returns
    ``{"eps_mae": {"mean", "stderr", "median", "max"}, "structures": [...], "model", "data", "split"}``
    with ε_mae in percent; ``seconds`` per structure include graph construction and atom encoding.
    ``on_structure(record)`` is called after each structure (e.g. to print a table row).
    Every structure is checked for atoms (or periodic images) closer than 0.5 Å before the model loads;
    ``data`` may be a :class:`CheckedItems` already (its own ``pbc`` then applies).
    """
    items = data if isinstance(data, CheckedItems) else CheckedItems(data, split, pbc)
    label, chosen = items.label, items.split
    predictor = as_predictor(model_or_predictor, device=device, probe_batch=probe_batch)
    if isinstance(model_or_predictor, (str, os.PathLike)):
        model_label = str(model_or_predictor)
    else:
        model_label = str(getattr(predictor, "name", type(model_or_predictor).__name__))
    records = []
    for item in items:
        name, atoms, grid = item
        bar = None
        if progress:
            bar = tqdm(total=int(np.prod(grid.shape)), desc=str(name), unit="pt", unit_scale=True, leave=False)
        try:
            record = evaluate_structure(predictor, str(name), atoms, grid, probe_batch, bar)
        finally:
            if bar is not None:
                bar.close()
        records.append(record)
        if on_structure is not None:
            on_structure(record)
    if not records:
        raise CdpError(f"{label}: no structures to evaluate in split '{chosen}'")
    return {
        "eps_mae": summarize(r["eps_mae"] for r in records),
        "structures": records,
        "model": model_label,
        "data": label,
        "split": chosen,
    }


def to_json(result: dict) -> str:
    """JSON text of an evaluation result; non-finite numbers become null."""

    def clean(x):
        if isinstance(x, float) and not np.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return clean(x.item())
        return x

    return json.dumps(clean(result), indent=1) + "\n"


def write_json(path, result: dict) -> None:
    """Write the evaluation JSON atomically."""
    atomic_write_bytes(Path(path), to_json(result).encode("utf-8"))


def evaluate_prior(model, data=None, split: Optional[str] = "test", chunk: int = 20000) -> Optional[dict]:
    """ε_mae of a model's atomic prior alone (no network) on the full grids of ``data``; None without a prior.

    ``model`` is a DensityModel (or a Predictor holding one).  Returns ``{"eps_mae": summary,
    "structures": [{"name", "eps_mae"}]}`` like :func:`evaluate`, ε_mae in percent.
    """
    model = getattr(model, "model", model)
    if getattr(model, "prior", None) is None:
        return None
    items, label, chosen = open_data(data, split)
    records = []
    dtype = model.dtype
    with torch.no_grad():
        for name, atoms, grid in items:
            batch = Batch.from_atoms([atoms], dtype=dtype).to(model.device)
            ref = np.asarray(grid.values, dtype=np.float64).reshape(-1)
            acc = EpsMae()
            for start in range(0, ref.size, chunk):
                pts = torch.from_numpy(grid.grid_points(start, start + chunk)).to(model.device, dtype)
                acc.update(ref[start:start + len(pts)], model.prior_density(batch, pts).double().cpu().numpy())
            records.append({"name": str(name), "eps_mae": acc.value})
    if not records:
        raise CdpError(f"{label}: no structures to evaluate in split '{chosen}'")
    return {"eps_mae": summarize(r["eps_mae"] for r in records), "structures": records, "data": label, "split": chosen}
