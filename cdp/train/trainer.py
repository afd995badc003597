"""The training loop: single process or torchrun DDP, exact resume, atomic checkpoints, a JSON-lines log.

A run directory holds ``config.yaml`` (the resolved config, split as names), ``log.jsonl``, ``last.ckpt``
(model + training state: optimizer, scheduler, step, RNG states, best validation metric) and
``best.ckpt`` (lowest validation NMAPE), and ``summary.json`` once training stops.  Every step's
structures and probes are pure functions of (seed, step) (:mod:`cdp.train.sampling`), so resuming from
``last.ckpt`` reproduces an uninterrupted run, and DDP ranks train on disjoint shards whose union is the
single-process batch.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cdp.core.atomic import atomic_write_text
from cdp.core.checkpoint import load_state_dict_checked, read_checkpoint, save_checkpoint
from cdp.core.model import DensityModel
from cdp.core.provenance import check_provenance
from cdp.core.registry import PRESET_KEYS, get_registry
from cdp.core.types import Batch, CdpError
from cdp.core.validate import MAX_Z, check_overlap
from cdp.data import load_dataset, load_split
from cdp.data.sampling import GridCache, ProbeSampler
from cdp.predict import resolve_device
from cdp.train import ddp
from cdp.train.config import dump_config, load_config_file, resolve_config, resume_config
from cdp.train.prior_fit import fit_prior, fit_record
from cdp.train.sampling import shard, step_slots
from cdp.train.schedule import PowerDecay

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
LAST = "last.ckpt"
BEST = "best.ckpt"
SUMMARY = "summary.json"
BEST_METRIC = "val_nmape"
VALIDATION_EPOCH = 2**30  # probe-generator epoch reserved for the fixed validation probes
VALIDATION_CHUNK = 2000  # probes per decode call in validation (atom features computed once)
DEFAULT_SPLIT = {"train": 0.8, "validation": 0.1, "test": 0.1}


@dataclass
class TrainResult:
    """What a finished (or budget-stopped) run did; also written to ``summary.json``."""

    run_dir: str
    steps: int
    stopped_by: str
    train_seconds: float
    elapsed_seconds: float
    probes_per_second: float
    probes_seen: int
    last_checkpoint: str
    best_checkpoint: Optional[str]
    best_metric: Optional[float]
    best_step: Optional[int]
    seed: int
    world_size: int
    global_batch: int
    num_parameters: int
    skipped: List[str] = field(default_factory=list)
    ddp_weight_spread: Optional[float] = None
    prior: Optional[dict] = None  # the atomic prior's fit record (None: the model has no prior)
    steps_taken: Optional[int] = None  # steps of this call (a resumed run that had reached its budget: 0)
    load_average: Optional[List[float]] = None  # os.getloadavg() when training stopped

    def to_dict(self) -> dict:
        return asdict(self)


# -- public API ------------------------------------------------------------------------------------
def train(config: Union[dict, str, Path, None] = None, run_dir=None, resume=None, device: Optional[str] = None,
          progress: Optional[bool] = None) -> Path:
    """Train from a config mapping or YAML path; returns the run directory (see :func:`train_run`)."""
    return Path(train_run(config, run_dir=run_dir, resume=resume, device=device, progress=progress).run_dir)


def train_run(config: Union[dict, str, Path, None] = None, run_dir=None, resume=None, device: Optional[str] = None,
              progress: Optional[bool] = None) -> TrainResult:
    """Train (or ``resume`` the run in that directory) and return a :class:`TrainResult`.

    With ``resume`` the run's own ``config.yaml`` is used; a ``config`` given as well may only change
    ``steps``, ``time_budget`` and ``progress`` (to train further).  Under torchrun (RANK/WORLD_SIZE set)
    this joins the process group; only rank 0 writes files.
    """
    info = ddp.env_info()
    dev = ddp.setup(info, resolve_device(device))
    finished = False
    try:
        if resume is not None:
            run = Path(resume)
            saved_path = run / CONFIG_FILE
            if not saved_path.is_file() or not (run / LAST).is_file():
                raise CdpError(f"{run}: not a training run directory (needs {CONFIG_FILE} and {LAST})")
            raw = load_config_file(saved_path)
            legacy = isinstance(raw.get("model"), dict) and "prior" not in raw["model"]
            if legacy:  # a run started before model priors existed trained without one
                raw["model"]["prior"] = None
            saved = resolve_config(raw)
            given = resolve_config(config) if config is not None else None
            if legacy and given is not None:
                given["model"]["prior"] = None
            cfg = resume_config(saved, given, str(config) if isinstance(config, (str, Path)) else "config")
        else:
            if config is None:
                raise CdpError("give a training config (or --resume DIR)")
            cfg = resolve_config(config)
            run = Path(run_dir) if run_dir is not None else Path(time.strftime("cdp-train-%Y%m%d-%H%M%S"))
            run = Path(_agree(info, str(run)))
            if (run / LAST).exists() or (run / CONFIG_FILE).exists():
                raise CdpError(f"{run}: already holds a training run (continue it with --resume {run}, or choose another --run)")
        if progress is not None:
            cfg["progress"] = bool(progress)
        trainer = Trainer(cfg, run, dev, info, resume=resume is not None)
        result = trainer.fit()
        finished = True
        return result
    finally:
        ddp.teardown(info, finished)


def _agree(info: ddp.DistInfo, text: str) -> str:
    """Rank 0's value of ``text`` on every rank (run directory names carry a timestamp)."""
    if not info.enabled:
        return text

    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- data --------------------------------------------------------------------------------------------
def resolve_split(dataset, split, seed: int) -> Dict[str, List[str]]:
    """``{train, validation, test}`` as lists of item names, from the config's split or the dataset's own.

    ``split`` may be None (the dataset's split, else 80/10/10 fractions), a JSON path, a mapping of
    name/index lists, or a mapping of fractions (a seeded shuffle; at least one item per nonzero part
    once there are three or more items).
    """
    if split is None:
        split = dataset.splits if dataset.splits is not None else dict(DEFAULT_SPLIT)
    elif isinstance(split, str):
        split = load_split(split)
    names = list(dataset.names)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in split.values()):
        n = len(names)
        order = np.random.default_rng([seed, 0x5917]).permutation(n)
        counts = {}
        for part in ("validation", "test"):
            f = float(split.get(part, 0.0))
            counts[part] = max(1, int(round(f * n))) if f > 0 and n >= 3 else int(round(f * n))
        if n - counts["validation"] - counts["test"] < 1:
            counts = {"validation": min(counts["validation"], max(n - 1, 0)), "test": 0}
        k_val, k_test = counts["validation"], counts["test"]
        picked = [names[i] for i in order]
        out = {"train": picked[k_val + k_test:], "validation": picked[:k_val], "test": picked[k_val:k_val + k_test]}
        return {k: sorted(v) for k, v in out.items()}
    out: Dict[str, List[str]] = {}
    known = set(names)
    for part in ("train", "validation", "test"):
        items = []
        for item in split.get(part, []) or []:
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= int(item) < len(names):
                    raise CdpError(f"split '{part}': index {item} is out of range ({len(names)} items in {dataset.source})")
                items.append(names[int(item)])
            elif isinstance(item, str):
                if item not in known:
                    raise CdpError(f"split '{part}': no item named '{item}' in {dataset.source}")
                items.append(item)
            else:
                raise CdpError(f"split '{part}': entries must be names or indices, got {item!r}")
        out[part] = items
    if not out["train"]:
        raise CdpError(f"split: the 'train' part of {dataset.source} is empty")
    return out


@dataclass
class _Item:
    """A loaded training/validation structure: its cache entry and a Batch built once."""

    name: str
    index: int  # index into the subset the sampler reads
    batch: Batch


def _load_items(dataset, names: List[str], pbc: Optional[bool], dtype: torch.dtype, spin: bool, what: str,
                warn) -> Tuple[object, List[_Item], List[str]]:
    """Read the grids of ``names`` (float32 cache); unreadable items are skipped and named."""
    subset = dataset.subset(names)
    cache = GridCache(subset)
    items: List[_Item] = []
    skipped: List[str] = []
    for i, name in enumerate(subset.names):
        try:
            entry = cache.get(i)
        except CdpError as exc:
            skipped.append(f"{name}: {exc}")
            warn(f"warning: skipped {what} item {name}: {exc}")
            continue
        z = int(np.max(entry.atoms.numbers))
        if z > MAX_Z or int(np.min(entry.atoms.numbers)) < 1:
            bad = z if z > MAX_Z else int(np.min(entry.atoms.numbers))
            raise CdpError(f"{name}: element with atomic number {bad} is outside 1..{MAX_Z}; no model can embed it")
        if pbc is not None:
            entry.atoms = entry.atoms.copy()
            entry.atoms.pbc = pbc
        check_overlap(entry.atoms, name)  # atoms on top of each other: a wrong cell or pbc, refused by name
        if spin and entry.spin is None:
            raise CdpError(f"{name}: the model predicts spin but this density has no magnetisation")
        items.append(_Item(name, i, Batch.from_atoms([entry.atoms], dtype=dtype)))
    return ProbeSampler(subset, 1, cache=cache), items, skipped


# -- RNG state as plain containers (weights_only-loadable) -------------------------------------------
def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": py[0], "state": list(py[1]), "gauss_next": py[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- the trainer -------------------------------------------------------------------------------------
class Trainer:
    """One training run in one directory (fresh or resumed)."""

    def __init__(self, cfg: dict, run_dir: Path, device: torch.device, info: ddp.DistInfo, resume: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = device
        self.info = info
        self.main = info.is_main
        self.dtype = torch.float64 if cfg["dtype"] == "float64" else torch.float32
        self.global_batch = cfg["batch_size"] * info.world
        seed = cfg["seed"]
        seed_everything(seed)

        # model first (its init consumes the torch RNG right after seeding)
        model_cfg = {k: cfg["model"][k] for k in PRESET_KEYS}
        if cfg["model"].get("prior") is not None:
            model_cfg["prior"] = cfg["model"]["prior"]
        self.model = DensityModel.from_config(model_cfg).to(dtype=self.dtype, device=device)
        self.spin = self.model.spin

        # data
        dataset = load_dataset(cfg["dataset"])
        split = resolve_split(dataset, cfg["split"], seed)
        cfg["split"] = split
        self.train_sampler, self.train_items, skipped = _load_items(
            dataset, split["train"], cfg["pbc"], self.dtype, self.spin, "training", self._warn)
        val_names = split["validation"][: cfg["val_structures"]] if cfg["val_structures"] else split["validation"]
        self.val_sampler, self.val_items, skipped_val = _load_items(
            dataset, val_names, cfg["pbc"], self.dtype, self.spin, "validation", self._warn) if val_names else (None, [], [])
        self.skipped = skipped + skipped_val
        if not self.train_items:
            raise CdpError(f"{dataset.source}: no readable training structures")
        self.dataset_source = str(dataset.source)
        self._val_cache = None

        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg["lr"])
        self.scheduler = PowerDecay(self.optimizer, cfg["beta"])
        self.step = 0
        self.best_metric: Optional[float] = None
        self.best_step: Optional[int] = None
        self.elapsed = 0.0
        self.train_seconds = 0.0
        self.probes_seen = 0
        self.window = {"loss": 0.0, "count": 0, "probes": 0, "seconds": 0.0}
        prior_record = None
        if resume:
            self._restore()
        elif self.model.prior is not None:
            prior_record = self._fit_prior()
        self.prior_record = prior_record if prior_record is not None else _logged_prior(self.run_dir, resume)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / CONFIG_FILE, dump_config(cfg))
            if not resume:
                atomic_write_text(self.run_dir / LOG_FILE, "")
            if prior_record is not None:
                self._log({"step": 0, "prior": prior_record})

        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.net = self.model

    # -- helpers ---------------------------------------------------------------------------------
    def _warn(self, text: str) -> None:
        if self.main:
            print(text, file=sys.stderr)

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(pred, target) if self.cfg["loss"] == "l1" else F.mse_loss(pred, target)

    def _targets(self, values: np.ndarray) -> np.ndarray:
        if values.ndim == 2 and not self.spin:
            return values[:, 0]
        return values

    def _step_inputs(self, step: int):
        """This rank's batch, probes [M, 3], probe_batch [M] and targets for ``step``."""
        slots = shard(step_slots(len(self.train_items), self.cfg["seed"], step, self.global_batch),
                      self.info.rank, self.info.world)
        probes, targets, owner, batches = [], [], [], []
        for j, (i, epoch) in enumerate(slots):
            item = self.train_items[i]
            s = self.train_sampler.sample(item.index, epoch, self.cfg["probes"])
            probes.append(s.probes)
            targets.append(self._targets(s.targets))
            owner.append(np.full(len(s.probes), j, dtype=np.int64))
            batches.append(item.batch)
        batch = _concat_batches(batches).to(self.device)
        p = torch.from_numpy(np.concatenate(probes)).to(self.device, self.dtype)
        t = torch.from_numpy(np.concatenate(targets)).to(self.device, self.dtype)
        pb = torch.from_numpy(np.concatenate(owner)).to(self.device)
        return batch, p, pb, t

    def _train_step(self) -> float:
        batch, probes, probe_batch, target = self._step_inputs(self.step)
        pred = self.net(batch, probes, probe_batch)
        loss = self._loss(pred, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    # -- the atomic prior --------------------------------------------------------------------------
    def _fit_prior(self) -> dict:
        """Fit the model's atomic reference densities on the training grids (before step 0); its log record."""
        fit = fit_prior(self.model, self.train_sampler.cache, self.train_items, self.cfg["seed"], self.dataset_source)
        self.model.to(dtype=self.dtype, device=self.device)
        record = fit_record(fit)
        record["val_nmape"] = self._prior_val_nmape()
        return record

    @torch.no_grad()
    def _prior_val_nmape(self) -> Optional[float]:
        """100·Σ|ρ⁰−ρ|/Σ|ρ| of the prior alone on the fixed validation probes (None without validation data)."""
        if not self.val_items:
            return None
        abs_sum = ref_sum = 0.0
        for batch, probes, target in self._validation_data():
            total_t = target[:, 0] if target.ndim == 2 else target
            pred = self.model.prior_density(batch, probes).to(total_t.dtype)
            abs_sum += float((pred - total_t).abs().sum())
            ref_sum += float(total_t.abs().sum())
        return 100.0 * abs_sum / ref_sum if ref_sum > 0 else float("nan")

    # -- validation ------------------------------------------------------------------------------
    def _validation_data(self) -> list:
        """(batch, probes, targets) of each validation structure, drawn once and kept."""
        if self._val_cache is None:
            self._val_cache = []
            for item in self.val_items:
                s = self.val_sampler.sample(item.index, VALIDATION_EPOCH, self.cfg["val_probes"])
                self._val_cache.append((
                    item.batch.to(self.device),
                    torch.from_numpy(s.probes).to(self.device, self.dtype),
                    torch.from_numpy(self._targets(s.targets)).to(self.device, self.dtype),
                ))
        return self._val_cache

    @torch.no_grad()
    def validate(self) -> Optional[dict]:
        """Loss, MAE, RMSE and NMAPE (100·Σ|ρ−ρ̂|/Σ|ρ| of the total density, the prior included) on the fixed validation probes."""
        if not self.val_items:
            return None
        model = self.model
        was_training = model.training
        model.eval()
        loss_sum = abs_sum = sq_sum = ref_sum = 0.0
        count = 0
        for batch, probes, target in self._validation_data():
            feats = model.encode(batch)
            pred = torch.cat([model.decode(batch, feats, probes[k:k + VALIDATION_CHUNK])
                              for k in range(0, len(probes), VALIDATION_CHUNK)])
            loss_sum += float(self._loss(pred, target)) * len(probes)
            total_p = pred[:, 0] if pred.ndim == 2 else pred
            total_t = target[:, 0] if target.ndim == 2 else target
            err = total_p - total_t
            abs_sum += float(err.abs().sum())
            sq_sum += float((err * err).sum())
            ref_sum += float(total_t.abs().sum())
            count += len(probes)
        model.train(was_training)
        return {
            "val_loss": loss_sum / count,
            "val_mae": abs_sum / count,
            "val_rmse": math.sqrt(sq_sum / count),
            "val_nmape": 100.0 * abs_sum / ref_sum if ref_sum > 0 else float("nan"),
        }

    # -- checkpoints -----------------------------------------------------------------------------
    def _metadata(self) -> dict:
        return {
            "kind": "training",
            "step": self.step,
            "seed": self.cfg["seed"],
            "model_preset": self.cfg["model"]["preset"],
            "dataset": self.dataset_source,
            "elements": sorted({int(z) for item in self.train_items for z in item.batch.numbers.tolist()}),
            "train_config": {k: v for k, v in self.cfg.items() if k != "split"},
            "best_metric_name": BEST_METRIC,
            "best_metric": self.best_metric,
            "world_size": self.info.world,
        }

    def _train_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "rng": rng_state(),
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "elapsed": self.elapsed,
            "train_seconds": self.train_seconds,
            "probes_seen": self.probes_seen,
            "window": dict(self.window),
            "world_size": self.info.world,
        }

    def save_last(self) -> None:
        if self.main:
            save_checkpoint(self.run_dir / LAST, self.model, self._metadata(), self._train_state())

    def save_best(self) -> None:
        if self.main:
            save_checkpoint(self.run_dir / BEST, self.model, self._metadata())

    def _restore(self) -> None:
        path = self.run_dir / LAST
        data = read_checkpoint(path)
        check_provenance(data.get("components"), get_registry(), str(path))
        ts = data.get("train_state")
        if not isinstance(ts, dict):
            raise CdpError(f"{path}: holds no training state to resume from")
        if int(ts.get("world_size", 1)) != self.info.world:
            raise CdpError(f"{path}: was trained with {ts.get('world_size', 1)} processes; resume with the same number "
                           f"({self.info.world} now) to continue exactly")
        load_state_dict_checked(self.model, data["state_dict"], str(path))
        self.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        self.step = int(ts["step"])
        self.best_metric = ts.get("best_metric")
        self.best_step = ts.get("best_step")
        self.elapsed = float(ts.get("elapsed", 0.0))
        self.train_seconds = float(ts.get("train_seconds", 0.0))
        self.probes_seen = int(ts.get("probes_seen", 0))
        self.window = dict(ts.get("window", self.window))
        set_rng_state(ts["rng"])
        if self.main:
            _truncate_log(self.run_dir / LOG_FILE, self.step)

    # -- the loop --------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if self.main:
            with open(self.run_dir / LOG_FILE, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _should_stop(self) -> Optional[str]:
        """Why training stops now, judged on ``self.elapsed`` so the recorded time is the one compared."""
        cfg = self.cfg
        if cfg["steps"] is not None and self.step >= cfg["steps"]:
            return "steps"
        over = False
        if cfg["time_budget"] is not None:
            over = ddp.any_rank(self.info, self.elapsed >= cfg["time_budget"] and self.main)
        return "time_budget" if over else None

    def _progress_bar(self):
        enabled = self.cfg["progress"]
        if enabled is None:
            enabled = sys.stderr.isatty()
        return tqdm(total=self.cfg["steps"], initial=self.step, disable=not (enabled and self.main),
                    file=sys.stderr, unit="step", dynamic_ncols=True, leave=True)

    def _validate_and_save(self, bar) -> None:
        metrics = self.validate() if self.main else None
        record = {"step": self.step, "elapsed": round(self.elapsed, 4)}
        if metrics is not None:
            record.update(metrics)
            value = metrics[BEST_METRIC]
            if self.best_metric is None or value < self.best_metric:
                self.best_metric, self.best_step = value, self.step
                self.save_best()
            self._log(record)
            self._postfix["val_nmape"] = f"{value:.3g}%"
            bar.set_postfix(self._postfix, refresh=False)
        elif self.main and not self.val_items:
            self.best_step = self.step
            self.save_best()  # no validation data: the best model is the latest one
        self.save_last()

    def fit(self) -> TrainResult:
        cfg = self.cfg
        probes_per_step = self.global_batch * cfg["probes"]
        self.model.train()
        if self.step == 0 and self.main:
            self.save_last()  # a resumable starting point, so an early Ctrl-C leaves a checkpoint
        bar = self._progress_bar()
        self._postfix: Dict[str, str] = {}
        start_wall = time.perf_counter()
        start_elapsed = self.elapsed
        stopped = None
        last_saved = first_step = self.step
        try:
            while True:
                self.elapsed = start_elapsed + (time.perf_counter() - start_wall)
                stopped = self._should_stop()
                if stopped:
                    break
                lr = self.optimizer.param_groups[0]["lr"]
                t0 = time.perf_counter()
                loss = self._train_step()
                dt = time.perf_counter() - t0
                loss = ddp.mean_over_ranks(self.info, loss)
                self.step += 1
                self.train_seconds += dt
                self.probes_seen += probes_per_step
                self.elapsed = start_elapsed + (time.perf_counter() - start_wall)
                w = self.window
                w["loss"] += loss
                w["count"] += 1
                w["probes"] += probes_per_step
                w["seconds"] += dt
                bar.update(1)
                if self.step % cfg["log_every"] == 0:
                    rate = w["probes"] / w["seconds"] if w["seconds"] > 0 else 0.0
                    self._log({"step": self.step, "loss": w["loss"] / w["count"], "lr": lr,
                               "probes_per_s": rate, "elapsed": round(self.elapsed, 4)})
                    self._postfix.update(loss=f"{w['loss'] / w['count']:.4g}", probes_s=f"{rate:.0f}")
                    bar.set_postfix(self._postfix, refresh=False)
                    self.window = {"loss": 0.0, "count": 0, "probes": 0, "seconds": 0.0}
                if self.step % cfg["validate_every"] == 0 or self.step % cfg["checkpoint_every"] == 0:
                    if self.step % cfg["validate_every"] == 0:
                        self._validate_and_save(bar)
                    else:
                        self.save_last()
                    last_saved = self.step
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through cdp.cli.main
            bar.close()
            if self.main:
                print(f"interrupted at step {self.step}; {self.run_dir / LAST} holds step {last_saved}; "
                      f"resume with: cdp train --resume {self.run_dir}", file=sys.stderr, flush=True)
            raise
        except OSError as exc:  # a full disk (ENOSPC) while checkpointing or logging: the old files stay whole
            bar.close()
            where = f"{exc.filename}: " if exc.filename else ""
            raise CdpError(f"{where}{exc.strerror or exc} at step {self.step}; {self.run_dir / LAST} holds step "
                           f"{last_saved}; free space, then resume with: cdp train --resume {self.run_dir}") from None
        if self.step != last_saved or not (self.run_dir / BEST).exists():
            self._validate_and_save(bar)
        bar.close()
        spread = ddp.weight_spread(self.info, self.model)
        result = TrainResult(
            run_dir=str(self.run_dir),
            steps=self.step,
            steps_taken=self.step - first_step,
            stopped_by=stopped or "steps",
            train_seconds=self.train_seconds,
            elapsed_seconds=self.elapsed,
            probes_per_second=self.probes_seen / self.train_seconds if self.train_seconds > 0 else 0.0,
            probes_seen=self.probes_seen,
            last_checkpoint=str(self.run_dir / LAST),
            best_checkpoint=str(self.run_dir / BEST) if (self.run_dir / BEST).exists() or not self.main else None,
            best_metric=self.best_metric,
            best_step=self.best_step,
            seed=cfg["seed"],
            world_size=self.info.world,
            global_batch=self.global_batch,
            num_parameters=self.model.num_parameters(),
            skipped=list(self.skipped),
            ddp_weight_spread=spread,
            prior=self.prior_record,
            load_average=_load_average(),
        )
        if self.main:
            atomic_write_text(self.run_dir / SUMMARY, json.dumps(result.to_dict(), indent=1) + "\n")
        return result


def _concat_batches(batches: List[Batch]) -> Batch:
    """One Batch from several single-structure batches (atoms concatenated, structures renumbered)."""
    if len(batches) == 1:
        return batches[0]
    owner = [torch.full_like(b.atom_batch, k) for k, b in enumerate(batches)]
    return Batch(
        numbers=torch.cat([b.numbers for b in batches]),
        positions=torch.cat([b.positions for b in batches]),
        cell=torch.cat([b.cell for b in batches]),
        pbc=torch.cat([b.pbc for b in batches]),
        atom_batch=torch.cat(owner),
    )


def _load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _logged_prior(run_dir: Path, resume: bool) -> Optional[dict]:
    """The prior fit record a resumed run logged at its start (None when there is none)."""
    path = Path(run_dir) / LOG_FILE
    if not resume or not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("prior"), dict):
            return rec["prior"]
    return None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint being resumed from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption
        if int(rec.get("step", 0)) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(l + "\n" for l in keep))


def read_summary(run_dir) -> dict:
    """The ``summary.json`` of a finished run."""
    path = Path(run_dir) / SUMMARY
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CdpError(f"{path}: no readable training summary ({exc})") from None
