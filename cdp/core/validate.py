"""Checks on user-supplied structures, raising :class:`CdpError` with a one-line message."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
from ase.geometry import minkowski_reduce

from cdp.core.constants import MAX_Z  # noqa: F401  (re-exported: cdp.core.validate.MAX_Z)
from cdp.core.errors import CdpError

MIN_DISTANCE = 0.5  # Å: closer atoms (or periodic images) mean a wrong cell, a wrong pbc or a duplicated atom
_AXES = "abc"


def validate_atoms(atoms, name: str = "structure") -> None:
    """Refuse structures the models cannot handle: no atoms, unknown elements, non-finite or singular data."""
    n = len(atoms)
    if n == 0:
        raise CdpError(f"{name}: the structure has no atoms")
    numbers = np.asarray(atoms.numbers)
    bad = numbers[(numbers < 1) | (numbers > MAX_Z)]
    if bad.size:
        raise CdpError(f"{name}: unknown element with atomic number {int(bad[0])}")
    pos = np.asarray(atoms.positions, dtype=float)
    if pos.shape != (n, 3):
        raise CdpError(f"{name}: positions have shape {pos.shape}, expected ({n}, 3)")
    if not np.all(np.isfinite(pos)):
        raise CdpError(f"{name}: non-finite atomic coordinates")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not np.all(np.isfinite(cell)):
        raise CdpError(f"{name}: non-finite cell")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        lengths = np.linalg.norm(cell, axis=1)
        for k in range(3):
            if lengths[k] < 1e-8:
                kind = "periodic" if pbc[k] else "non-periodic"
                hint = ("give it a length (the slab's thickness plus vacuum) so that the cell has a volume"
                        if not pbc[k] else "a periodic axis needs a lattice vector")
                raise CdpError(f"{name}: cell vector {_AXES[k]} (axis {k}) is zero on a {kind} axis "
                               f"(pbc {[bool(v) for v in pbc]}); {hint}")
        periodic = cell[pbc]
        if np.linalg.matrix_rank(periodic, tol=1e-8) < periodic.shape[0] or abs(np.linalg.det(cell)) < 1e-8:
            raise CdpError(f"{name}: singular cell for a periodic structure")


def validate_probes(probes: np.ndarray, name: str = "probes") -> np.ndarray:
    """Return probes as float64 [M, 3] or refuse them."""
    arr = np.asarray(probes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise CdpError(f"{name}: expected an array of shape [M, 3], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise CdpError(f"{name}: non-finite probe coordinates")
    return arr


# -- atoms on top of each other ------------------------------------------------------------------------


class ClosestPair(NamedTuple):
    """The two closest atoms of a structure: indices ``i <= j``, distance (Å), and whether ``j`` is taken
    as a periodic image (``i == j``: an atom and its own image, at the shortest lattice vector)."""

    i: int
    j: int
    distance: float
    image: bool

    def describe(self, symbols) -> str:
        a = f"atom {self.i} ({symbols[self.i]})"
        if self.i == self.j:
            return f"{a} and its own periodic image are {self.distance:.3f} Å apart"
        b = f"atom {self.j} ({symbols[self.j]})"
        if self.image:
            return f"{a} and a periodic image of {b} are {self.distance:.3f} Å apart"
        return f"{a} and {b} are {self.distance:.3f} Å apart"


def closest_pair(atoms, within: float = np.inf) -> Optional[ClosestPair]:
    """The closest two atoms of ``atoms``, periodic images included along periodic axes.

    A KD-tree over the atoms (and over their images reaching within ``min(within, shortest lattice
    vector)`` of a Minkowski-reduced cell), so the cost is O(N log N).  Returns None for a single atom
    without periodicity, or when no pair is closer than ``within`` Å.
    """
    from scipy.spatial import cKDTree  # start-up: cdp.io reads files through this module without loading scipy

    pos = np.asarray(atoms.positions, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    n = len(pos)
    best: Optional[ClosestPair] = None
    if not pbc.any():
        if n < 2:
            return None
        dist, idx = cKDTree(pos, balanced_tree=False).query(pos, k=2, distance_upper_bound=within)
        return _nearest_other(dist, idx, within)

    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    reduced = np.array(minkowski_reduce(cell, pbc=pbc)[0], dtype=np.float64)
    lengths = np.linalg.norm(reduced[pbc], axis=1)
    shortest = float(lengths.min())  # a Minkowski-reduced basis starts with the shortest lattice vector
    if shortest < within:
        best = ClosestPair(0, 0, shortest, True)
    inv = np.linalg.inv(reduced)
    height = 1.0 / np.linalg.norm(inv, axis=0)
    frac = pos @ inv
    frac[:, pbc] -= np.floor(frac[:, pbc])
    wrapped = frac @ reduced
    reach = min(shortest, within)
    if n > 1:  # a pair inside the wrapped cell bounds the reach the images need
        dist, idx = cKDTree(wrapped, balanced_tree=False).query(wrapped, k=2, distance_upper_bound=reach)
        inner = _nearest_other(dist, idx, reach)
        if inner is not None:
            reach = inner.distance
    nimg = np.where(pbc, np.ceil(reach / height).astype(np.int64), 0)
    ranges = [np.arange(-m, m + 1) for m in nimg]
    images = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    slack = reach / height + 1e-9
    rep_atom, rep_image = [], []
    for img in images:  # at most a few dozen images: the reduced cell is no thinner than the reach
        f = frac + img
        keep = np.all(~pbc | ((f >= -slack) & (f <= 1.0 + slack)), axis=1)
        rep_atom.append(np.nonzero(keep)[0])
        rep_image.append(np.repeat(img[None], int(keep.sum()), axis=0))
    rep_atom = np.concatenate(rep_atom)
    rep_image = np.concatenate(rep_image)
    rep_pos = wrapped[rep_atom] + rep_image @ reduced
    dist, idx = cKDTree(rep_pos, balanced_tree=False).query(wrapped, k=2, distance_upper_bound=reach * (1 + 1e-12))
    found = idx < len(rep_atom)
    safe = np.where(found, idx, 0)
    partner = np.where(found, rep_atom[safe], -1)
    self_hit = (partner == np.arange(n)[:, None]) & ~np.any(rep_image[safe] != 0, axis=-1)
    dist = np.where(self_hit | ~found, np.inf, dist)
    col = np.argmin(dist, axis=1)
    d = dist[np.arange(n), col]
    a = int(np.argmin(d))
    if np.isfinite(d[a]) and (best is None or d[a] < best.distance):
        j = int(partner[a, col[a]])
        # an image when the user's own positions are not that close (wrapping may have moved either atom)
        direct = float(np.linalg.norm(pos[a] - pos[j]))
        image = j == a or abs(direct - float(d[a])) > 1e-9 * max(1.0, direct)
        i, j = sorted((a, j))
        best = ClosestPair(i, j, float(d[a]), image)
    return best


def _nearest_other(dist, idx, within) -> Optional[ClosestPair]:
    """The smallest non-self distance of a molecule's k=2 self-query (row a: a itself and its nearest)."""
    n = len(idx)
    other = np.where(idx[:, 0] == np.arange(n), 1, 0)  # column holding the nearest atom that is not the query itself
    d = dist[np.arange(n), other]
    a = int(np.argmin(d))
    if not np.isfinite(d[a]) or d[a] >= within:
        return None
    i, j = sorted((a, int(idx[a, other[a]])))
    return ClosestPair(i, j, float(d[a]), False)


def check_overlap(atoms, name: str = "structure", min_distance: float = MIN_DISTANCE) -> None:
    """Refuse atoms (or periodic images) closer than ``min_distance`` Å, naming the two and the distance.

    Such a structure is a wrong cell or pbc (a molecule or a region of interest read as a periodic crystal)
    or a duplicated atom; predictions on it are meaningless.
    """
    pair = closest_pair(atoms, within=min_distance)
    if pair is None or pair.distance >= min_distance:
        return
    symbols = atoms.get_chemical_symbols()
    text = f"{name}: {pair.describe(symbols)} (closer than {min_distance} Å)"
    if np.any(atoms.pbc):
        text += ("; if this is a molecule or a region cut from a larger system, declare it non-periodic "
                 "(a sidecar <file>.json holding {\"pbc\": false}, or --no-pbc)")
    raise CdpError(text)
