"""Resumable, parallel generation of reference-density datasets (one CHGCAR per structure + manifest.json).

The driver is recipe-agnostic: a *job function* (module-level, so process pools can pickle it) turns
``(name, atoms, options)`` into a written file and a manifest entry.  Each file is written atomically
and the manifest is rewritten atomically by the parent process after every structure, so an
interrupted run leaves only finished structures behind and the next run skips them.  A failing
structure is reported with its name and the run goes on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from cdp.core.types import CdpError
from cdp.core.atomic import atomic_write_bytes
from cdp.data.files import clean_temporaries

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "cdp-dataset"
MANIFEST_VERSION = 1


@dataclass
class GenerationReport:
    """What a generation run did: names made now, names skipped (already there), failures with reasons."""

    made: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)
    out_dir: str = ""


def read_manifest(out_dir: str) -> dict:
    """The manifest of ``out_dir`` (an empty one if absent)."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "structures": {}}
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise CdpError(f"{path}: not a readable JSON manifest: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("structures", {}), dict):
        raise CdpError(f"{path}: manifest must be an object with a 'structures' object")
    data.setdefault("structures", {})
    return data


def write_manifest(out_dir: str, manifest: dict) -> None:
    """Atomically (re)write ``out_dir/manifest.json``."""
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(os.path.join(out_dir, MANIFEST), text.encode())


def _set_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    try:
        from pyscf import lib  # optional dependency (cdp[data])

        lib.num_threads(threads)
    except Exception:  # pyscf missing or not needed by this recipe
        pass


def _run_job(job: Callable, name: str, atoms, options: dict) -> Tuple[str, Optional[dict], Optional[str]]:
    try:
        return name, job(name, atoms, options), None
    except CdpError as exc:
        msg = str(exc)
        return name, None, msg if msg.startswith(name) else f"{name}: {msg}"
    except MemoryError:
        return name, None, f"{name}: out of memory"
    except Exception as exc:  # any recipe failure is reported per structure; the run continues
        return name, None, f"{name}: {type(exc).__name__}: {exc}"


def generate(
    structures: Sequence[Tuple[str, object]],
    out_dir: str,
    job: Callable,
    options: dict,
    recipe_key: dict,
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
    report: Optional[Callable[[str], None]] = None,
    header: Optional[dict] = None,
) -> GenerationReport:
    """Run ``job`` for every structure not already finished in ``out_dir``; returns a GenerationReport.

    ``recipe_key`` must be equal to the ``recipe`` of entries already in the manifest: resuming into a
    directory made with other settings is refused rather than mixing recipes.
    """
    if workers < 1:
        raise CdpError(f"--workers must be at least 1, got {workers}")
    names = [n for n, _ in structures]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise CdpError(f"duplicate structure names: {', '.join(sorted(dup)[:5])}")
    os.makedirs(out_dir, exist_ok=True)
    clean_temporaries(out_dir)
    manifest = read_manifest(out_dir)
    if header:
        manifest.update({k: v for k, v in header.items() if k != "structures"})
    manifest["format"], manifest["version"] = MANIFEST_FORMAT, MANIFEST_VERSION
    entries = manifest["structures"]
    rep = GenerationReport(out_dir=out_dir)
    say = report or (lambda msg: print(msg, file=sys.stderr))

    for name, entry in entries.items():
        if isinstance(entry, dict) and "recipe" in entry and entry["recipe"] != recipe_key:
            raise CdpError(
                f"{os.path.join(out_dir, MANIFEST)}: '{name}' was made with a different recipe or "
                f"settings; write to a new directory"
            )
    todo = []
    for name, atoms in structures:
        entry = entries.get(name)
        if entry is not None and os.path.exists(os.path.join(out_dir, entry.get("file", ""))):
            rep.skipped.append(name)
        else:
            todo.append((name, atoms))
    manifest.pop("failed", None)

    bar = None
    if progress and todo:
        bar = tqdm(total=len(todo), unit="structure", file=sys.stderr, disable=None)

    def finish(name: str, entry: Optional[dict], error: Optional[str]) -> None:
        if entry is not None:
            entry["recipe"] = recipe_key
            entries[name] = entry
            rep.made.append(name)
        else:
            rep.failed[name] = error or f"{name}: failed"
            say(f"failed: {rep.failed[name]}")
        if rep.failed:
            manifest["failed"] = dict(rep.failed)
        write_manifest(out_dir, manifest)
        if bar is not None:
            bar.update(1)

    try:
        if workers == 1 or len(todo) <= 1:
            _set_threads(threads)
            for name, atoms in todo:
                finish(*_run_job(job, name, atoms, options))
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_set_threads, initargs=(threads,)) as pool:
                futures = [pool.submit(_run_job, job, name, atoms, options) for name, atoms in todo]
                for fut in as_completed(futures):
                    finish(*fut.result())
    finally:
        if bar is not None:
            bar.close()
    if not todo:
        write_manifest(out_dir, manifest)
    return rep


def timed(fn: Callable, *args, **kwargs):
    """(result, seconds) of a call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
