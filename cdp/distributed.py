"""Scale-out inference and evaluation under ``torchrun``: structures sharded across ranks, big grids split.

Without torchrun (or with one process) everything here reduces to the plain single-process loop.  Under
``torchrun --nproc_per_node=N`` each rank joins a gloo process group (used only for small control messages
and raw density blocks; a GPU rank computes on ``cuda:LOCAL_RANK``, a CPU rank with the threads of an
explicit ``OMP_NUM_THREADS``) and:

* **sharding** — whole structures are assigned to ranks by greedy longest-processing-time on their number
  of grid points (:func:`lpt`), deterministically, so every rank derives the same plan;
* **splitting** — a structure whose grid is more than one rank's fair share of the work (more than half
  of it on two ranks), or every structure when there are fewer structures than ranks, is computed by all
  ranks together: each encodes the atoms once, takes a contiguous run of the *same* probe batches one
  process would use, and ranks 1… stream their raw float64 values to rank 0, which formats and compresses
  the single output file in order (:func:`split_chunks`).  The file equals the single-process one byte for
  byte.

Outputs are written atomically by the rank that owns them; a rank stopped by torchrun (because another
failed or the run was interrupted) removes its temporary files and rank 0 names the structures left
unwritten.  :func:`evaluate_sharded` does the same for ``cdp evaluate``, gathering per-structure records
(and, for a split structure, per-batch partial sums added in one process's order) so the metrics are
identical to a single-process run.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import click
import numpy as np
import torch
import torch.distributed as dist

from cdp.core.types import CdpError
from cdp.evaluate.evaluate import _set_molecule, evaluate, evaluate_structure, open_data, structure_record
from cdp.evaluate.metrics import EpsMae, summarize
from cdp.io.stream import stream_grid, stream_predicted_grid
from cdp.predict import check_elements, grid_frame

_POLL = 0.05  # seconds between checks of a pending transfer (keeps SIGTERM deliverable)
_BLOCK = 1 << 20  # float64 values per transfer message of a split structure
_TIMEOUT = timedelta(hours=24)  # a rank may wait for another's long grid; torchrun ends dead runs


# -- planning (pure, testable without processes) ---------------------------------------------------------


def lpt(costs: Sequence[float], world: int) -> List[List[int]]:
    """Greedy longest-processing-time assignment of items with ``costs`` to ``world`` ranks.

    Items are taken largest first (ties: lower index first) and each goes to the least-loaded rank (ties:
    lower rank).  Returns, per rank, its item indices in ascending order.  Deterministic: every rank
    computes the same answer.
    """
    if world < 1:
        raise CdpError(f"the number of ranks must be at least 1, got {world}")
    loads = [0.0] * world
    shards: List[List[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        shards[r].append(i)
        loads[r] += float(costs[i])
    return [sorted(s) for s in shards]


@dataclass
class Plan:
    """Which rank does what: ``split`` items are computed by all ranks together, ``shards[r]`` by rank r."""

    split: List[int]
    shards: List[List[int]]

    def to_json(self) -> dict:
        return {"split": self.split, "shards": self.shards}

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        return cls([int(i) for i in d["split"]], [[int(i) for i in s] for s in d["shards"]])


def make_plan(costs: Sequence[float], world: int, split: str = "auto") -> Plan:
    """The work plan for items of ``costs`` (grid points) on ``world`` ranks.

    ``split="auto"``: an item is split across all ranks when there are fewer items than ranks, or when its
    cost exceeds one rank's fair share (``cost · world > total``: more than half the work on 2 ranks); the
    rest are sharded by :func:`lpt`.  ``"always"`` splits every item, ``"never"`` none.
    """
    n = len(costs)
    if split not in ("auto", "always", "never"):
        raise CdpError(f"split must be auto, always or never, got '{split}'")
    if world == 1:
        return Plan([], [list(range(n))])
    total = float(sum(costs))
    if split == "always" or (split == "auto" and n < world):
        big = list(range(n))
    elif split == "never":
        big = []
    else:
        big = [i for i in range(n) if float(costs[i]) * world > total]
    rest = [i for i in range(n) if i not in set(big)]
    shards = lpt([costs[i] for i in rest], world)
    return Plan(big, [[rest[j] for j in s] for s in shards])


def batch_ranges(total: int, step: int, world: int) -> List[Tuple[int, int]]:
    """Per rank, the flat-index range ``[start, stop)`` of its contiguous run of probe batches.

    The grid's ``ceil(total / step)`` batches of ``step`` points (one process's boundaries) are dealt out
    in ``world`` contiguous runs of near-equal batch counts, rank 0 first.
    """
    n = -(-int(total) // int(step))
    out = []
    for r in range(world):
        lo, hi = r * n // world, (r + 1) * n // world
        out.append((min(lo * step, total), min(hi * step, total)))
    return out


# -- the process group -------------------------------------------------------------------------------


class Stopped(BaseException):
    """Raised in a rank when torchrun asks it to stop (SIGTERM): another rank failed or the run was interrupted."""


@dataclass
class Session:
    """This process's place in a torchrun job; ``enabled`` only with more than one rank."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False
    running: bool = False  # past validation: errors are this rank's own, reported by it
    targets: List[Path] = field(default_factory=list)  # outputs the plan writes (for the stop report)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_SESSION = Session()


def session() -> Session:
    """The current session (a single process outside :func:`torchrun_entry`)."""
    return _SESSION


def _env_session() -> Session:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Session()
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise CdpError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)") from None
    return Session(rank, world, local, enabled=world > 1)


def rank_device(device: Optional[str], local_rank: int) -> str:
    """This rank's device: ``cuda`` / ``auto`` (with GPUs) → ``cuda:LOCAL_RANK``; anything else unchanged."""
    text = "auto" if device is None else str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text != "cuda":
        return text
    if not torch.cuda.is_available():
        raise CdpError(f"device '{device}' requested but no CUDA device is available")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise CdpError(f"local rank {local_rank} has no GPU of its own ({count} visible): "
                       f"start at most {count} processes per node")
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


def _on_sigterm(signum, frame):
    raise Stopped()


def torchrun_entry(fn: Callable) -> Callable:
    """Decorator for a click command: joins the torchrun process group (gloo) around the command.

    Outside torchrun (or with one rank) the command runs unchanged.  Inside it, the ``device`` argument
    becomes this rank's device, SIGTERM stops the rank cleanly (temporary files removed), and a CdpError
    raised on ranks other than 0 before the work starts (input validation, identical on every rank) exits
    quietly, so a bad input is reported once, by rank 0.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _SESSION
        info = _env_session()
        if not info.enabled:
            return fn(*args, **kwargs)
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        try:
            if "device" in kwargs:
                kwargs["device"] = rank_device(kwargs["device"], info.local_rank)
        except CdpError as exc:
            raise CdpError(f"rank {info.rank}: {exc}") from None
        try:
            dist.init_process_group("gloo", rank=info.rank, world_size=info.world, timeout=_TIMEOUT)
        except (ValueError, RuntimeError) as exc:
            raise CdpError(f"rank {info.rank}: cannot join the torchrun process group "
                           f"({' '.join(str(exc).split())[:200]})") from None
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        _SESSION = info
        try:
            return fn(*args, **kwargs)
        except Stopped:
            _remove_temporaries(info.targets)  # also those of a rank that was killed outright
            if info.is_main:
                raise CdpError(_stop_report(info)) from None
            raise click.exceptions.Exit(143) from None
        except CdpError as exc:
            if info.is_main:
                raise
            if not info.running:
                raise click.exceptions.Exit(2) from None
            raise CdpError(f"rank {info.rank}: {exc}") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            _SESSION = Session()
            try:
                dist.destroy_process_group()
            except Exception:  # pragma: no cover - best effort at exit
                pass

    return wrapper


def _remove_temporaries(targets: Sequence[Path]) -> None:
    """Delete the atomic-write temporaries (``.<name>*.tmp`` beside each target) of unfinished outputs."""
    for target in targets:
        for tmp in glob.glob(os.path.join(glob.escape(str(target.parent)), f".{glob.escape(target.name)}*.tmp")):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _stop_report(info: Session) -> str:
    missing = [p for p in info.targets if not p.exists()]
    if not info.running:
        return "stopped before writing anything (another rank failed or the run was interrupted)"
    if not missing:
        return "stopped (another rank failed or the run was interrupted); every output had been written"
    shown = ", ".join(str(p.name) for p in missing[:20]) + (" ..." if len(missing) > 20 else "")
    return (f"stopped (another rank failed or the run was interrupted): {len(missing)} of {len(info.targets)} "
            f"structures not written: {shown} (rerun with --skip-existing to finish them)")


def _wait(work) -> None:
    """Wait for an async collective or send/recv while keeping SIGTERM deliverable.

    The wait runs in a helper thread (gloo's send/recv works only complete inside ``wait``); the main
    thread sleeps on an event, which a signal interrupts, so a rank stopped by torchrun while waiting for
    a dead peer still runs its cleanup (temporary files removed).
    """
    done = threading.Event()
    failure: list = []

    def run() -> None:
        try:
            work.wait()
        except BaseException as exc:  # re-raised in the main thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    while not done.wait(_POLL):
        pass
    if failure:
        raise failure[0]


def broadcast_json(obj, src: int = 0):
    """``obj`` (JSON-serialisable) from rank ``src`` on every rank; no pickling."""
    data = json.dumps(obj).encode("utf-8") if session().rank == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64)
    _wait(dist.broadcast(size, src, async_op=True))
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(int(size), dtype=torch.uint8)
    if int(size):
        _wait(dist.broadcast(buf, src, async_op=True))
    return json.loads(bytes(buf.numpy()).decode("utf-8"))


def gather_json(obj, dst: int = 0) -> Optional[list]:
    """Every rank's ``obj`` as a list on rank ``dst`` (None elsewhere), sent point to point as JSON."""
    info = session()
    if info.rank != dst:
        data = torch.frombuffer(bytearray(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)
        _wait(dist.isend(torch.tensor([data.numel()], dtype=torch.int64), dst))
        _wait(dist.isend(data, dst))
        return None
    out = []
    for r in range(info.world):
        if r == dst:
            out.append(obj)
            continue
        size = torch.zeros(1, dtype=torch.int64)
        _wait(dist.irecv(size, r))
        buf = torch.zeros(int(size), dtype=torch.uint8)
        _wait(dist.irecv(buf, r))
        out.append(json.loads(bytes(buf.numpy()).decode("utf-8")))
    return out


# -- split structures: one grid over all ranks --------------------------------------------------------


def _batch_step(predictor, atoms, probe_batch: Optional[int]) -> int:
    return int(probe_batch or predictor.batch_for_memory(atoms))


def can_split(predictor) -> bool:
    """Whether ``predictor`` exposes the encode/decode split needed to share one grid (torch Predictors)."""
    return hasattr(predictor, "encode") and hasattr(getattr(predictor, "model", None), "decode")


@torch.no_grad()
def iter_grid_range(predictor, atoms, frame, start: int, stop: int, step: int, order: str) -> Iterator[tuple]:
    """``(start, values)`` for the probe batches of ``frame``'s flat grid in ``[start, stop)``.

    The same batches (boundaries every ``step`` points from 0) and the same arithmetic as
    ``Predictor.iter_grid``, so each value equals the single-process one bit for bit.
    """
    if start >= stop:
        return
    encoded = predictor.encode(atoms)  # in the predictor's local frame, as Predictor.iter_grid
    for s in range(start, stop, step):
        yield s, predictor.decode(encoded, frame.grid_points(s, min(s + step, stop), order))


def split_chunks(predictor, atoms, frame, order: str, probe_batch: Optional[int] = None,
                 width: int = 1) -> Iterator[tuple]:
    """All ranks: compute this rank's run of batches.  Rank 0 yields the whole grid's ``(start, values)``
    in order (its own batches as computed, then each other rank's raw float64 values as received); the
    other ranks park their values in an unlinked temporary file, send them to rank 0 and yield nothing.

    ``width`` is 2 for spin models ([k, 2] values).  Memory: one probe batch plus one transfer block.
    """
    info = session()
    total = int(np.prod(frame.values.shape))
    step = _batch_step(predictor, atoms, probe_batch)
    ranges = batch_ranges(total, step, info.world)
    lo, hi = ranges[info.rank]
    own = iter_grid_range(predictor, atoms, frame, lo, hi, step, order)
    if info.is_main:
        yield from own
        for r in range(1, info.world):
            start, stop = ranges[r]
            pos = start
            while pos < stop:
                k = min(_BLOCK, stop - pos)
                buf = torch.empty(k * width, dtype=torch.float64)
                _wait(dist.irecv(buf, r))
                values = buf.numpy()
                yield pos, (values.reshape(k, width) if width > 1 else values)
                pos += k
        return
    with tempfile.TemporaryFile() as park:  # unlinked at creation: nothing remains, whatever happens
        for _, out in own:
            park.write(np.ascontiguousarray(out, dtype=np.float64).tobytes())
        park.seek(0)
        pos = lo
        while pos < hi:
            k = min(_BLOCK, hi - pos)
            data = np.frombuffer(park.read(8 * k * width), dtype=np.float64)
            if data.size != k * width:
                raise CdpError("split grid: scratch file ended early")
            _wait(dist.isend(torch.from_numpy(data.copy()), 0))
            pos += k


# -- predict: many structures -----------------------------------------------------------------------------


@dataclass
class GridJob:
    """One structure's full grid to predict and write.

    ``atoms`` (ase.Atoms, Å), grid ``shape`` (nx, ny, nz) over ``cell`` [3, 3] (Å) from ``origin`` [3] (Å);
    ``target`` the output file in format ``fmt`` (chgcar, cube, npy); CHGCAR augmentation text to carry.
    """

    name: str
    source: str
    atoms: object
    shape: Tuple[int, int, int]
    cell: np.ndarray
    origin: np.ndarray
    target: Path
    fmt: str
    augmentation: Optional[str] = None
    spin_augmentation: Optional[str] = None

    @property
    def points(self) -> int:
        return int(np.prod(self.shape))


def _done(job: GridJob) -> bool:
    """Whether ``job``'s output is complete (for npy also its sidecar, which is written last)."""
    if job.fmt == "npy":
        return job.target.is_file() and job.target.with_name(job.target.name + ".json").is_file()
    return job.target.is_file()


def run_grids(predictor, jobs: Sequence[GridJob], finish: Callable[[GridJob, float], None],
              skip_existing: bool = False, probe_batch: Optional[int] = None, directory: Optional[Path] = None,
              progress: Optional[Callable[[GridJob], Optional[Callable[[int], None]]]] = None,
              split: str = "auto") -> List[GridJob]:
    """Predict and write every job's grid; returns the jobs written by this process.

    Single process: in order, as ``cdp predict`` always did.  Under torchrun: the plan of
    :func:`make_plan` (rank 0's, broadcast), split structures first (all ranks together), then each rank's
    shard.  ``finish(job, electrons)`` runs after a job's file is in place, on the rank that wrote it
    (e.g. the npy sidecar and a report line).  ``skip_existing`` leaves complete outputs alone.
    ``directory`` is created when missing (and removed again if a single-process run fails before
    writing into it).  ``progress(job)`` may return a per-batch callback (points done).
    """
    info = session()
    todo = [i for i, j in enumerate(jobs) if not (skip_existing and _done(j))]
    for i in sorted(set(range(len(jobs))) - set(todo)):
        if info.is_main:
            print(f"{jobs[i].name}: {jobs[i].target} exists, skipped", flush=True)
    if info.enabled:
        plan = make_plan([jobs[i].points for i in todo], info.world, split if can_split(predictor) else "never")
        plan = Plan.from_json(broadcast_json(plan.to_json() if info.is_main else None))
        split_ids = [todo[i] for i in plan.split]
        mine = [todo[i] for i in plan.shards[info.rank]]
        info.targets = [jobs[i].target for i in todo]
        info.running = True
    else:
        split_ids, mine = [], todo
    created = False
    if directory is not None and not directory.exists():
        directory.mkdir(parents=True, exist_ok=True)
        created = True
    written: List[GridJob] = []
    spin = bool(getattr(predictor, "spin", False))
    try:
        for i in split_ids:
            job = jobs[i]
            frame = grid_frame(job.atoms, job.shape, job.cell, job.origin)
            order = "F" if job.fmt == "chgcar" else "C"
            keep_spin = spin and job.fmt != "cube"
            chunks = split_chunks(predictor, job.atoms, frame, order, probe_batch, width=2 if spin else 1)
            if not info.is_main:
                for _ in chunks:  # computes and sends this rank's part
                    pass
                continue

            def feed(_order, chunks=chunks):
                for start, out in chunks:
                    yield start, (out[:, 0] if (spin and not keep_spin) else out)

            electrons = stream_grid(job.target, job.fmt, job.atoms, frame, feed, spin=keep_spin,
                                    augmentation=job.augmentation, spin_augmentation=job.spin_augmentation,
                                    progress=progress(job) if progress else None)
            finish(job, electrons)
            written.append(job)
        for i in mine:
            job = jobs[i]
            electrons = stream_predicted_grid(predictor, job.target, job.fmt, job.atoms, job.shape, job.cell,
                                              job.origin, probe_batch=probe_batch, augmentation=job.augmentation,
                                              spin_augmentation=job.spin_augmentation,
                                              progress=progress(job) if progress else None)
            finish(job, electrons)
            written.append(job)
        if info.enabled:  # stay until every rank is done: a rank dying late is still cleaned up and reported
            _wait(dist.barrier(async_op=True))
    except BaseException:
        if created and not info.enabled:
            try:
                directory.rmdir()
            except OSError:
                pass
        raise
    return written


# -- evaluate ------------------------------------------------------------------------------------------


def _item_cost(items, i: int) -> float:
    """A cheap size estimate of dataset item ``i`` before loading it: its file size when known, else 1."""
    paths = getattr(items, "paths", None)
    if callable(paths):
        try:
            return float(os.path.getsize(paths()[i]))
        except (OSError, IndexError, TypeError):
            return 1.0
    return 1.0


def _load_item(items, i: int, report: bool = True):
    """Item ``i`` as (name, atoms, grid), or None when the dataset skips it (named by its on_error if ``report``)."""
    try:
        item = items[i]
    except CdpError as exc:
        on_error = getattr(items, "on_error", None)
        if on_error is None:
            raise
        if report:
            on_error(f"skipped: {exc}")
        return None
    try:
        name, atoms, grid = item
    except (TypeError, ValueError):
        raise CdpError("dataset items must be (name, atoms, DensityGrid) triples") from None
    return str(name), atoms, grid


def _split_sums(predictor, name, atoms, grid, probe_batch) -> dict:
    """Evaluate one structure with all ranks: per-batch partial sums, added on every rank in batch order."""
    info = session()
    check_elements(predictor, atoms, name)
    t0 = time.perf_counter()
    ref = np.asarray(grid.values, dtype=np.float64).reshape(-1)
    ref_spin = None if grid.spin is None else np.asarray(grid.spin, dtype=np.float64).reshape(-1)
    both_spin = ref_spin is not None and bool(predictor.spin)
    total = ref.size
    step = _batch_step(predictor, atoms, probe_batch)
    nb = -(-total // step)
    sums = torch.zeros((nb, 5), dtype=torch.float64)  # |ρ−ρ̂|, |ρ|, ρ̂, and the same for the magnetisation
    lo, hi = batch_ranges(total, step, info.world)[info.rank]
    frame = grid_frame(atoms, grid.shape, grid.cell, grid.origin)  # as Predictor.iter_grid builds it
    for start, out in iter_grid_range(predictor, atoms, frame, lo, hi, step, "C"):
        rho = out[:, 0] if out.ndim == 2 else out
        stop = start + len(rho)
        row = [float(np.abs(ref[start:stop] - rho).sum()), float(np.abs(ref[start:stop]).sum()), float(rho.sum()), 0.0, 0.0]
        if both_spin:
            row[3] = float(np.abs(ref_spin[start:stop] - out[:, 1]).sum())
            row[4] = float(np.abs(ref_spin[start:stop]).sum())
        sums[start // step] = torch.tensor(row, dtype=torch.float64)
    _wait(dist.all_reduce(sums, async_op=True))  # each row is non-zero on one rank only: exact
    acc, acc_spin, pred_sum = EpsMae(), EpsMae(), 0.0
    for row in sums.tolist():  # one process's accumulation order
        acc.numerator += row[0]
        acc.denominator += row[1]
        pred_sum += row[2]
        acc_spin.numerator += row[3]
        acc_spin.denominator += row[4]
    return structure_record(name, atoms, grid, acc, acc_spin if both_spin else None, pred_sum, t0)


def evaluate_sharded(predictor, data=None, split: Optional[str] = "test", pbc: Optional[bool] = None,
                     probe_batch: Optional[int] = None, on_structure=None, split_mode: str = "auto") -> dict:
    """``cdp.evaluate.evaluate`` across the ranks of a torchrun job (the plain function in one process).

    Items are sharded by :func:`make_plan` on their file sizes (the grid is unknown before loading); a
    split item is evaluated by all ranks with per-batch sums.  Rank 0 returns the result dict of
    ``evaluate`` with the records in dataset order — identical metrics to one process (``seconds``
    aside); other ranks return None.  ``on_structure(record)`` runs on the rank that evaluated it.
    """
    info = session()
    if not info.enabled:
        return evaluate(predictor, data=data, split=split, pbc=pbc, probe_batch=probe_batch, progress=False,
                        on_structure=on_structure)
    items, label, chosen = open_data(data, split)
    if not hasattr(items, "__getitem__"):
        items = list(items)
    n = len(items)
    plan = make_plan([_item_cost(items, i) for i in range(n)], info.world,
                     split_mode if can_split(predictor) else "never")
    plan = Plan.from_json(broadcast_json(plan.to_json() if info.is_main else None))
    info.running = True

    def prepared(i, report=True):
        got = _load_item(items, i, report)
        if got is None:
            return None
        name, atoms, grid = got
        if pbc is False:
            _set_molecule(atoms, grid)
        elif pbc is True:
            atoms.pbc = True
            grid.pbc = np.ones(3, dtype=bool)
        return name, atoms, grid

    records: Dict[int, dict] = {}
    for i in plan.split:
        got = prepared(i, report=info.is_main)  # every rank loads it; rank 0 names a skipped one
        if got is None:
            continue
        record = _split_sums(predictor, *got, probe_batch)
        if info.is_main:
            records[i] = record
            if on_structure is not None:
                on_structure(record)
    for i in plan.shards[info.rank]:
        got = prepared(i)
        if got is None:
            continue
        records[i] = evaluate_structure(predictor, got[0], got[1], got[2], probe_batch)
        if on_structure is not None:
            on_structure(records[i])
    gathered = gather_json({str(k): v for k, v in records.items()})
    if not info.is_main:
        return None
    merged: Dict[int, dict] = {}
    for part in gathered:
        merged.update({int(k): v for k, v in part.items()})
    ordered = [merged[i] for i in sorted(merged)]
    if not ordered:
        raise CdpError(f"{label}: no structures to evaluate in split '{chosen}'")
    model_label = str(getattr(predictor, "name", type(predictor).__name__))
    return {
        "eps_mae": summarize(r["eps_mae"] for r in ordered),
        "structures": ordered,
        "model": model_label,
        "data": label,
        "split": chosen,
    }
