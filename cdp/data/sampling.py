"""Training samples: random probe points drawn from a structure's grid with their target densities.

Probes are grid points drawn uniformly **with replacement** (the published recipe), re-drawn every
epoch from a generator seeded by ``(seed, epoch, item)`` so that runs are reproducible and each epoch
sees new points.  Grids are kept as float32 in a :class:`GridCache` (memory, optionally an on-disk
``.npz`` cache written atomically) so text CHGCARs are parsed once.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Optional

from ase import Atoms
import numpy as np

from cdp.core.atomic import atomic_write_bytes
from cdp.core.types import DensityGrid


@dataclass
class CachedGrid:
    """A dataset item in compact form: the structure and a float32 density (and spin) grid."""

    name: str
    atoms: object
    cell: np.ndarray
    origin: np.ndarray
    values: np.ndarray
    spin: Optional[np.ndarray]
    pbc: np.ndarray

    def grid(self) -> DensityGrid:
        return DensityGrid(cell=self.cell, values=self.values, origin=self.origin, spin=self.spin, pbc=self.pbc)

    def points(self, flat: np.ndarray) -> np.ndarray:
        """Cartesian positions [K, 3] (float64) of flat C-order grid indices."""
        nx, ny, nz = self.values.shape
        ix, rem = np.divmod(flat, ny * nz)
        iy, iz = np.divmod(rem, nz)
        frac = np.stack([ix / nx, iy / ny, iz / nz], axis=1)
        return self.origin + frac @ self.cell


def _signature(dataset, i: int) -> str:
    paths = getattr(dataset, "paths", None)
    extra = ""
    if paths is not None:
        try:
            st = os.stat(paths[i])
            extra = f"|{os.path.abspath(paths[i])}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            pass
    return f"{dataset.source}|{dataset.names[i]}{extra}"


class GridCache:
    """float32 grids by item index: in memory (up to ``max_items``, LRU) and optionally in ``cache_dir``."""

    def __init__(self, dataset, cache_dir: Optional[str] = None, max_items: Optional[int] = None):
        self.dataset = dataset
        self.cache_dir = cache_dir
        self.max_items = max_items
        self._mem: "OrderedDict[int, CachedGrid]" = OrderedDict()
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)

    def __len__(self) -> int:
        return len(self.dataset)

    def _disk_path(self, i: int) -> str:
        key = hashlib.sha1(_signature(self.dataset, i).encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.dataset.names[i])
        return os.path.join(self.cache_dir, f"{safe}-{key}.npz")

    def _from_disk(self, path: str, name: str) -> Optional[CachedGrid]:
        try:
            with np.load(path, allow_pickle=False) as z:
                spin = z["spin"] if "spin" in z.files else None
                atoms = Atoms(numbers=z["numbers"], positions=z["positions"], cell=z["atoms_cell"], pbc=z["pbc"])
                return CachedGrid(name, atoms, z["cell"], z["origin"], z["values"], spin, z["pbc"])
        except (OSError, ValueError, KeyError):
            return None  # unreadable cache entry: rebuilt from the source

    def _to_disk(self, path: str, item: CachedGrid) -> None:
        arrays = dict(
            values=item.values, cell=item.cell, origin=item.origin, pbc=item.pbc,
            numbers=np.asarray(item.atoms.numbers), positions=np.asarray(item.atoms.positions),
            atoms_cell=np.asarray(item.atoms.cell.array),
        )
        if item.spin is not None:
            arrays["spin"] = item.spin
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    def get(self, i: int) -> CachedGrid:
        """The float32 item ``i`` (raises CdpError if the source cannot be read)."""
        if i in self._mem:
            self._mem.move_to_end(i)
            return self._mem[i]
        name = self.dataset.names[i]
        item = None
        path = self._disk_path(i) if self.cache_dir else None
        if path and os.path.exists(path):
            item = self._from_disk(path, name)
        if item is None:
            sample = self.dataset[i]
            g = sample.grid
            pbc = np.asarray(g.pbc if g.pbc is not None else sample.atoms.pbc, dtype=bool).reshape(3)
            item = CachedGrid(
                name, sample.atoms, np.asarray(g.cell, dtype=np.float64),
                np.asarray(g.origin, dtype=np.float64), np.ascontiguousarray(g.values, dtype=np.float32),
                None if g.spin is None else np.ascontiguousarray(g.spin, dtype=np.float32), pbc,
            )
            if path:
                self._to_disk(path, item)
        self._mem[i] = item
        if self.max_items is not None and len(self._mem) > self.max_items:
            self._mem.popitem(last=False)
        return item


@dataclass
class ProbeSample:
    """Probe points of one structure and their targets: probes [M, 3] Å, targets [M] or [M, 2] (total, spin)."""

    name: str
    atoms: object
    probes: np.ndarray
    targets: np.ndarray
    index: np.ndarray


class ProbeSampler:
    """Map-style dataset of probe samples; call :meth:`set_epoch` to re-draw the probes."""

    def __init__(self, dataset, num_probes: int = 1000, seed: int = 0, cache: Optional[GridCache] = None):
        if num_probes < 1:
            raise ValueError("num_probes must be positive")
        self.cache = cache if cache is not None else GridCache(dataset)
        self.num_probes = int(num_probes)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.cache)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def sample(self, i: int, epoch: Optional[int] = None, num_probes: Optional[int] = None) -> ProbeSample:
        """Probes for item ``i`` at ``epoch`` (default: the current one)."""
        item = self.cache.get(i)
        ep = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, ep, int(i)])
        flat = rng.integers(0, item.values.size, size=num_probes or self.num_probes, dtype=np.int64)
        targets = item.values.reshape(-1)[flat]
        if item.spin is not None:
            targets = np.stack([targets, item.spin.reshape(-1)[flat]], axis=1)
        return ProbeSample(item.name, item.atoms, item.points(flat), targets, flat)

    def __getitem__(self, i: int) -> ProbeSample:
        return self.sample(i)

    def iter_epoch(self, epoch: int, shuffle: bool = True) -> Iterator[ProbeSample]:
        """All items of an epoch (order shuffled by ``(seed, epoch)`` when ``shuffle``)."""
        order = np.arange(len(self))
        if shuffle:
            np.random.default_rng([self.seed, int(epoch), 2**31 - 1]).shuffle(order)
        for i in order:
            yield self.sample(int(i), epoch)
