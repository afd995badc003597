"""Density datasets: directories / list files of CHGCAR or cube files, DeepDFT tars, ChargE3Net npy+pkl dirs.

Every dataset is a sequence of :class:`Sample` ``(name, atoms, grid)`` read lazily.  ``dataset[i]``
raises :class:`CdpError` naming the file (or tar member) when it cannot be read; iterating skips such
items and reports them, so one corrupt member does not stop a run.  Splits come from a JSON object
with ``train`` / ``validation`` / ``test`` lists of names (or integer indices, DeepDFT style).
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from cdp.core.types import CdpError, DensityGrid
from cdp.data.paths import embedded_path
from cdp.data.safe_atoms import load_atoms_pickle
import cdp.io
from cdp.data.files import density_kind, parse_density, split_compression

SPLIT_KEYS = ("train", "validation", "test")
SPLIT_FILE = "split.json"


@dataclass
class Sample:
    """One dataset item: a name, the structure and its density grid (e/Å³)."""

    name: str
    atoms: object
    grid: DensityGrid

    def __iter__(self):  # allows ``name, atoms, grid = sample``
        return iter((self.name, self.atoms, self.grid))


def _stem(filename: str) -> str:
    """Dataset name of a density file: base name without compression and ``.CHGCAR`` / ``.cube`` suffixes."""
    base = split_compression(os.path.basename(filename))[0]
    low = base.lower()
    for suf in (".chgcar", ".cube", ".cub", ".vasp"):
        if low.endswith(suf):
            return base[: -len(suf)]
    return base


def _member_name(member: str) -> str:
    """Dataset name of a tar member: its path without suffixes; a bare ``dir/CHGCAR`` is named ``dir``."""
    path = split_compression(member.strip("/"))[0]
    head, base = os.path.split(path)
    stem = _stem(base)
    if stem == base and head and base.upper() in ("CHGCAR", "CHG", "AECCAR0", "AECCAR2", "PARCHG"):
        return head
    return os.path.join(head, stem) if head else stem


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


class Dataset:
    """Base class: ``names``, ``len``, ``dataset[i]`` → Sample, ``get(name)``, iteration that skips bad items."""

    source: str = ""
    splits: Optional[Dict[str, List]] = None

    def __init__(self) -> None:
        self.names: List[str] = []
        self.on_error: Callable[[str], None] = _warn

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> Sample:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def __getitem__(self, i: int) -> Sample:
        n = len(self.names)
        if not -n <= int(i) < n:
            raise IndexError(f"dataset index {i} out of range ({n} items)")
        return self.load(int(i) % n)

    def index(self, name: str) -> int:
        lookup = getattr(self, "_lookup", None)
        if lookup is None or len(lookup) != len(self.names):
            lookup = self._lookup = {n: i for i, n in enumerate(self.names)}
        if name not in lookup:
            raise CdpError(f"{self.source}: no item named '{name}'")
        return lookup[name]

    def get(self, name: str) -> Sample:
        return self[self.index(name)]

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            try:
                yield self[i]
            except CdpError as exc:
                self.on_error(f"skipped: {exc}")

    def subset(self, keys: Sequence[Union[str, int]]) -> "Subset":
        return Subset(self, keys)

    def split(self, part: str, split: Union[None, str, dict] = None) -> "Subset":
        """The ``train`` / ``validation`` / ``test`` part, from ``split`` (path or dict) or the dataset's own."""
        spl = self.splits if split is None else (split if isinstance(split, dict) else load_split(split))
        if spl is None:
            raise CdpError(f"{self.source}: no split given and the dataset has no {SPLIT_FILE}")
        if part not in spl:
            raise CdpError(f"split has no '{part}' part (has: {', '.join(spl)})")
        return self.subset(spl[part])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, {len(self)} items)"


class Subset(Dataset):
    """Items of a parent dataset chosen by name or index."""

    def __init__(self, parent: Dataset, keys: Sequence[Union[str, int]]):
        super().__init__()
        self.parent = parent
        self.source = parent.source
        self.on_error = parent.on_error
        self._idx: List[int] = []
        for k in keys:
            if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
                if not 0 <= int(k) < len(parent):
                    raise CdpError(f"split index {k} is out of range for {parent.source} ({len(parent)} items)")
                self._idx.append(int(k))
            elif isinstance(k, str):
                self._idx.append(parent.index(k))
            else:
                raise CdpError(f"split entries must be names or integer indices, got {k!r}")
        self.names = [parent.names[i] for i in self._idx]

    def load(self, i: int) -> Sample:
        return self.parent.load(self._idx[i])


class Concat(Dataset):
    """Several datasets one after another (DeepDFT's list of tars)."""

    def __init__(self, parts: Sequence[Dataset], source: str = ""):
        super().__init__()
        self.parts = list(parts)
        self.source = source
        self._where: List[Tuple[int, int]] = []
        for p, ds in enumerate(self.parts):
            self._where.extend((p, j) for j in range(len(ds)))
            self.names.extend(ds.names)

    def load(self, i: int) -> Sample:
        p, j = self._where[i]
        return self.parts[p].load(j)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _manifest_pbc(directory: str) -> Tuple[Dict[str, object], Dict[str, str]]:
    """({file name: pbc}, {file name: dataset name}) from ``directory/manifest.json`` if present."""
    path = os.path.join(directory, "manifest.json")
    if not os.path.exists(path):
        return {}, {}
    try:
        with open(path) as fh:
            man = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise CdpError(f"{path}: not a readable JSON manifest: {exc}") from exc
    entries = man.get("structures") if isinstance(man, dict) else None
    if not isinstance(entries, dict):
        raise CdpError(f"{path}: manifest needs a 'structures' object of {{name: {{file, pbc}}}}")
    pbc, names = {}, {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or "file" not in entry:
            raise CdpError(f"{path}: entry '{name}' has no 'file'")
        if not isinstance(entry["file"], str) or not entry["file"]:
            raise CdpError(f"{path}: entry '{name}': 'file' must be a file name, got {_short(entry['file'])}")
        if "pbc" in entry:
            pbc[entry["file"]] = entry["pbc"]
        names[entry["file"]] = name
    return pbc, names


class FileDataset(Dataset):
    """CHGCAR/cube files on disk with optional per-file pbc."""

    def __init__(self, files: Sequence[Tuple[str, str, object]], source: str):
        super().__init__()
        self.source = source
        self._files = list(files)  # (name, path, pbc or None)
        self.names = [f[0] for f in self._files]
        dup = {n for n in self.names if self.names.count(n) > 1}
        if dup:
            raise CdpError(f"{source}: several files give the same item name: {', '.join(sorted(dup)[:5])}")

    @property
    def paths(self) -> List[str]:
        return [f[1] for f in self._files]

    def load(self, i: int) -> Sample:
        name, path, pbc = self._files[i]
        atoms, grid = cdp.io.read(path, pbc=pbc)
        return Sample(name, atoms, grid)


def directory_dataset(directory: str) -> FileDataset:
    """All density files of a directory; ``manifest.json`` (if any) gives names and pbc; ``split.json`` splits."""
    pbc, names = _manifest_pbc(directory)
    files = []
    for f in sorted(os.listdir(directory)):
        full = os.path.join(directory, f)
        if f.startswith(".") or not os.path.isfile(full) or density_kind(f) is None:
            continue
        files.append((names.get(f, _stem(f)), full, pbc.get(f)))
    if not files:
        raise CdpError(f"{directory}: no CHGCAR or cube files in the directory")
    ds = FileDataset(files, source=directory)
    split = os.path.join(directory, SPLIT_FILE)
    if os.path.exists(split):
        ds.splits = load_split(split)
    return ds


class TarDataset(Dataset):
    """DeepDFT tar: members are CHGCAR/cube files, each optionally ``.zz`` / ``.lz4`` / ``.gz`` compressed."""

    def __init__(self, path: str):
        super().__init__()
        self.source = path
        try:
            with tarfile.open(path, "r:") as tf:
                members = [m for m in tf.getmembers() if m.isfile() and density_kind(m.name) is not None]
        except (tarfile.TarError, OSError) as exc:
            raise CdpError(f"{path}: not a readable tar archive: {exc}") from exc
        self._members = [(m.name, m.offset_data, m.size) for m in members]
        self.names = [_member_name(m.name) for m in members]
        self._local = threading.local()

    def _handle(self):
        fh = getattr(self._local, "fh", None)
        if fh is None or fh.closed:
            fh = self._local.fh = open(self.source, "rb")
        return fh

    def load(self, i: int) -> Sample:
        member, offset, size = self._members[i]
        label = f"{self.source}:{member}"
        fh = self._handle()
        fh.seek(offset)
        data = fh.read(size)
        if len(data) != size:
            raise CdpError(f"{label}: truncated tar member ({len(data)} of {size} bytes)")
        atoms, grid = parse_density(data, label)
        return Sample(self.names[i], atoms, grid)

    def __getstate__(self):  # picklable for DataLoader workers: the file handle is reopened there
        state = dict(self.__dict__)
        state.pop("_local", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


class Charge3NetDataset(Dataset):
    """ChargE3Net directory: ``filelist.txt`` of ids, ``<id>.npy`` density (e/Å³) and ``<id>_atoms.pkl``.

    The pickle is read with a restricted unpickler that admits only ase Atoms and NumPy arrays.  A
    trailing axis of 2 in the array holds (total, magnetisation).
    """

    def __init__(self, directory: str):
        super().__init__()
        self.source = directory
        listing = os.path.join(directory, "filelist.txt")
        try:
            with open(listing) as fh:
                self.names = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
        except OSError as exc:
            raise CdpError(f"{listing}: cannot read: {exc.strerror}") from exc
        split = os.path.join(directory, SPLIT_FILE)
        if os.path.exists(split):
            self.splits = load_split(split)

    def load(self, i: int) -> Sample:
        ident = self.names[i]
        npy = os.path.join(self.source, f"{ident}.npy")
        pkl = os.path.join(self.source, f"{ident}_atoms.pkl")
        try:
            values = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CdpError(f"{npy}: cannot read density array: {exc}") from exc
        try:
            with open(pkl, "rb") as fh:
                atoms = load_atoms_pickle(fh.read(), name=pkl)
        except OSError as exc:
            raise CdpError(f"{pkl}: cannot read: {exc.strerror}") from exc
        spin = None
        if values.ndim == 4 and values.shape[-1] == 2:
            values, spin = values[..., 0], values[..., 1]
        if values.ndim != 3 or values.size == 0 or not np.issubdtype(values.dtype, np.floating):
            raise CdpError(f"{npy}: expected a 3-D float density array, got {values.dtype} {values.shape}")
        if not np.all(np.isfinite(values)):
            raise CdpError(f"{npy}: density holds non-finite values")
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        if abs(np.linalg.det(cell)) < 1e-8:
            raise CdpError(f"{pkl}: the atoms have no 3-D cell, so the grid has no geometry")
        grid = DensityGrid(
            cell=cell, values=np.asarray(values, dtype=np.float64),
            spin=None if spin is None else np.asarray(spin, dtype=np.float64),
            pbc=np.asarray(atoms.pbc, dtype=bool).copy(),
        )
        return Sample(ident, atoms, grid)


def list_dataset(path: str) -> Dataset:
    """A ``.txt`` list of tars, directories or density files (relative to the list's directory)."""
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path) as fh:
            lines = [ln.strip() for ln in fh if ln.strip() and not ln.strip().startswith("#")]
    except OSError as exc:
        raise CdpError(f"{path}: cannot read: {exc.strerror}") from exc
    if not lines:
        raise CdpError(f"{path}: the list is empty")
    parts: List[Dataset] = []
    loose: List[Tuple[str, str, object]] = []
    for ln in lines:
        full = ln if os.path.isabs(ln) else os.path.join(base, ln)
        if not os.path.exists(full):
            raise CdpError(f"{path}: listed path {ln} does not exist")
        if os.path.isdir(full) or full.lower().endswith(".tar"):
            parts.append(load_dataset(full))
        elif density_kind(full) is not None:
            loose.append((_stem(full), full, None))
        else:
            raise CdpError(f"{path}: listed file {ln} is not a tar, directory, CHGCAR or cube file")
    if loose:
        parts.append(FileDataset(loose, source=path))
    return parts[0] if len(parts) == 1 else Concat(parts, source=path)


def load_dataset(path: Optional[str] = None) -> Dataset:
    """Open a dataset: None → the embedded one; a directory, ``.tar``, ``.txt`` list or single density file."""
    if path is None:
        path = embedded_path()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CdpError(f"{path}: no such dataset")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "filelist.txt")):
            return Charge3NetDataset(path)
        return directory_dataset(path)
    low = path.lower()
    if low.endswith(".tar"):
        return TarDataset(path)
    if low.endswith(".txt"):
        return list_dataset(path)
    if density_kind(path) is not None:
        return FileDataset([(_stem(path), path, None)], source=path)
    raise CdpError(f"{path}: not a dataset (expected a directory, .tar, .txt list or CHGCAR/cube file)")


def load_split(path: Optional[str] = None) -> Dict[str, List]:
    """``{train, validation, test}`` lists from a split JSON (None → the embedded dataset's split)."""
    if path is None:
        path = os.path.join(embedded_path(), SPLIT_FILE)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise CdpError(f"{path}: not a readable split JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CdpError(f"{path}: a split must be a JSON object with train/validation/test lists")
    unknown = [k for k in data if k not in SPLIT_KEYS]
    if unknown:
        raise CdpError(f"{path}: unknown split key '{unknown[0]}' (use train, validation, test)")
    out: Dict[str, List] = {}
    for key in SPLIT_KEYS:
        items = data.get(key, [])
        if not isinstance(items, list):
            raise CdpError(f"{path}: '{key}' must be a list")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise CdpError(f"{path}: '{key}' entries must be item names or indices, got {_short(item)}")
        out[key] = items
    seen: Dict[object, str] = {}
    for key in SPLIT_KEYS:
        for item in out[key]:
            if item in seen and seen[item] != key:
                raise CdpError(f"{path}: '{item}' is in both '{seen[item]}' and '{key}'")
            seen[item] = key
    return out
