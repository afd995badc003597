"""Built-in graph builder: atom–atom and atom–probe neighbour lists under (mixed) periodic boundaries.

Positions are wrapped into the cell along periodic axes, the atoms are replicated over every
periodic image that can reach the cell within the cutoff (several images per axis when the cell is
thinner than the cutoff), and a KD-tree over those replicas is matched against the query points
(atoms or probes, in chunks) with vectorised scipy calls.  Offsets are mapped back so that they
refer to the caller's unwrapped positions: ``vec = r_recv - (r_send + n @ cell)``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from cdp.core.components import GraphBuilder
from cdp.core.hookspec import hookimpl
from cdp.core.types import CdpError

_MAX_REPLICAS = 5_000_000  # atoms × images kept in the KD-tree; beyond this the cell is absurdly thin
_SLAB_ELEMENTS = 500_000  # (atom, image) candidates filtered at once: ~40 MB of temporaries at most
_FRAC_SLACK = 1e-6  # fractional-coordinate margin when pruning replicas (pruning only, never filtering)


def _empty() -> Tuple[np.ndarray, np.ndarray]:
    return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)


def _check_inputs(positions, cell, pbc, cutoff) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Coerce and validate one structure's arrays (CdpError on malformed input)."""
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    if pbc.shape == ():
        pbc = np.full(3, bool(pbc))
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise CdpError(f"graph: positions must have shape [N, 3], got {positions.shape}")
    if cell.shape != (3, 3):
        raise CdpError(f"graph: cell must have shape [3, 3], got {cell.shape}")
    if pbc.shape != (3,):
        raise CdpError(f"graph: pbc must have shape [3], got {pbc.shape}")
    if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(cell))):
        raise CdpError("graph: positions and cell must be finite")
    cutoff = float(cutoff)
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise CdpError(f"graph: cutoff must be a positive finite number, got {cutoff}")
    return positions, cell, pbc, cutoff


def _shift(offsets: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """``offsets @ cell`` as explicit element-wise sums (same rounding whatever the array shape)."""
    n = offsets.astype(np.float64)
    return n[..., 0:1] * cell[0] + n[..., 1:2] * cell[1] + n[..., 2:3] * cell[2]


class _Lattice:
    """Periodic frame of one structure: completed basis, wrapping, and the replicated atoms."""

    def __init__(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
        self.pbc = pbc
        self.cutoff = cutoff
        self.basis = self._completed_basis(cell, pbc)
        self.inv = np.linalg.inv(self.basis)
        # height of the cell along each axis: distance between the lattice planes it crosses
        recip_norm = np.linalg.norm(self.inv, axis=0)  # |b_k| with b_k the columns of inv(basis)
        self.height = 1.0 / recip_norm
        self.nimg = np.where(pbc, np.ceil(cutoff / self.height).astype(np.int64) + 1, 0)
        self.wrapped, self.shift = self.wrap(positions)
        self._build_replicas()

    @staticmethod
    def _completed_basis(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
        """The periodic lattice vectors plus orthonormal vectors spanning the remaining directions.

        Non-periodic cell rows (often zero, as in ase molecules) play no role in the graph; replacing
        them with an orthonormal complement keeps the fractional frame well defined.
        """
        periodic = [k for k in range(3) if pbc[k]]
        basis = np.eye(3)
        if not periodic:
            return basis
        rows = cell[periodic]
        # singular values of the periodic rows flag degenerate (zero or coplanar) lattice vectors
        sv = np.linalg.svd(rows, compute_uv=False)
        scale = max(float(np.max(np.linalg.norm(rows, axis=1))), 1e-300)
        if sv.min() <= 1e-10 * scale:
            raise CdpError(
                f"graph: periodic lattice vectors {periodic} are zero or linearly dependent (cell={cell.tolist()})"
            )
        if len(periodic) < 3:
            # orthonormal complement of the periodic span from the full SVD
            _, _, vt = np.linalg.svd(rows)
            complement = vt[len(periodic):]
            free = [k for k in range(3) if not pbc[k]]
            basis[free] = complement
        basis[periodic] = rows
        return basis

    def wrap(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Wrap ``points`` into [0, 1) along periodic axes; returns (wrapped, integer shift) with
        ``points = wrapped + shift @ basis`` (up to rounding)."""
        frac = points @ self.inv
        shift = np.where(self.pbc, np.floor(frac), 0.0).astype(np.int64)
        wrapped = points - _shift(shift, self.basis)
        return wrapped, shift

    def _build_replicas(self) -> None:
        """Images of the wrapped atoms that can lie within the cutoff of the unit cell."""
        ranges = [np.arange(-m, m + 1, dtype=np.int64) for m in self.nimg]
        images = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
        n_atoms = self.wrapped.shape[0]
        frac_atoms = self.wrapped @ self.inv  # [N, 3], in ~[0, 1) on periodic axes
        reach = self.cutoff / self.height + _FRAC_SLACK
        limit = max(_MAX_REPLICAS, 27 * n_atoms)  # a large cell keeps ~N(1 + 6·cutoff/height) replicas
        if images.shape[0] > limit:
            self._too_thin(n_atoms * images.shape[0])
        # keep (atom, image) pairs whose fractional coordinate lies in [-reach, 1 + reach] on periodic axes,
        # a slab of images at a time so that memory stays O(N) for large cells
        step = max(1, _SLAB_ELEMENTS // max(n_atoms, 1))
        atoms_kept, images_kept, kept = [], [], 0
        for s0 in range(0, images.shape[0], step):
            frac = frac_atoms[:, None, :] + images[None, s0 : s0 + step, :]  # [N, I', 3]
            keep = np.all(~self.pbc | ((frac >= -reach) & (frac <= 1.0 + reach)), axis=-1)
            a, i = np.nonzero(keep)
            kept += a.size
            if kept > limit:
                self._too_thin(kept)
            atoms_kept.append(a)
            images_kept.append(i + s0)
        atom_idx, img_idx = np.concatenate(atoms_kept), np.concatenate(images_kept)  # ≥ 1 image, ≥ 1 slab
        order = np.argsort(atom_idx.astype(np.int64) * images.shape[0] + img_idx, kind="stable")  # (atom, image)
        atom_idx, img_idx = atom_idx[order], img_idx[order]
        self.rep_atom = atom_idx.astype(np.int64)
        self.rep_image = images[img_idx]
        rep_pos = self.wrapped[atom_idx] + _shift(self.rep_image, self.basis)
        from scipy.spatial import cKDTree  # start-up: scipy.spatial loads when a graph is built (cdp export never does)

        self.tree = cKDTree(rep_pos) if rep_pos.shape[0] else None

    def _too_thin(self, replicas: int) -> None:
        raise CdpError(
            f"graph: cell heights {np.round(self.height, 4).tolist()} Å are too thin for cutoff "
            f"{self.cutoff} Å ({replicas} periodic replicas)"
        )

    def pairs(self, queries: np.ndarray, tol: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate (query index, replica index, tree distance) within ``cutoff + tol``, ordered by
        (query, replica); replicas are ordered by (atom, image), hence edges by (receiver, sender, offset)."""
        if self.tree is None or queries.shape[0] == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
        from scipy.spatial import cKDTree  # start-up: as above

        found = cKDTree(queries).sparse_distance_matrix(self.tree, self.cutoff + tol, output_type="ndarray")
        qi, rj = found["i"].astype(np.int64), found["j"].astype(np.int64)
        order = np.argsort(qi * self.rep_atom.shape[0] + rj)
        return qi[order], rj[order], found["v"][order]


def _tolerance(cutoff: float, *arrays: np.ndarray) -> float:
    """Rounding margin between tree distances (wrapped frame) and exact ones (caller's frame)."""
    scale = max([cutoff] + [float(np.max(np.abs(a))) for a in arrays if a.size])
    return 1e-9 * (cutoff + scale)


def _finish(
    sender: np.ndarray,
    receiver: np.ndarray,
    offsets: np.ndarray,
    tree_dist: np.ndarray,
    sender_pos: np.ndarray,
    receiver_pos: np.ndarray,
    cell: np.ndarray,
    cutoff: float,
    tol: float,
    drop_self: bool,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep ``d <= cutoff`` with d computed exactly in the caller's frame near the boundary
    (candidates clearly inside need no recomputation); optionally drop zero-offset self edges."""
    keep = tree_dist <= cutoff - tol
    near = np.nonzero(~keep)[0]
    if near.size:
        s, r = sender[near], receiver[near]
        vec = receiver_pos[r] - (sender_pos[s] + _shift(offsets[near], cell))
        keep[near] = np.sqrt(np.sum(vec * vec, axis=1)) <= cutoff
    if drop_self:
        keep &= ~((sender == receiver) & np.all(offsets == 0, axis=1))
    return sender[keep], receiver[keep], offsets[keep]


def _edges(sender: np.ndarray, receiver: np.ndarray, offsets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Pack already ordered edges into the builder's output arrays."""
    edge_index = np.stack([sender, receiver]).astype(np.int64, copy=False)
    return edge_index, np.ascontiguousarray(offsets, dtype=np.int64)


class PeriodicGraphBuilder(GraphBuilder):
    """Neighbour lists within the cutoff for molecules, periodic, thin and mixed-PBC cells.

    The replica KD-tree of the last structure is kept, so that streaming probe batches through one
    structure builds it once instead of once per batch (O(N log N) each, seconds at 10⁵ atoms).
    """

    def __init__(self, probe_chunk: int = 200_000):
        self.probe_chunk = int(probe_chunk)
        self._cached: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, float, _Lattice]] = None

    def _lattice(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> _Lattice:
        """The lattice of this exact structure: reused when positions, cell, pbc and cutoff all match."""
        cached = self._cached
        if cached is not None:
            pos0, cell0, pbc0, cut0, lat = cached
            if (cut0 == cutoff and np.array_equal(pbc0, pbc) and np.array_equal(cell0, cell)
                    and np.array_equal(pos0, positions)):
                return lat
        lat = _Lattice(positions, cell, pbc, cutoff)
        # copies: a caller mutating its arrays in place must not be served a stale tree
        self._cached = (positions.copy(), cell.copy(), pbc.copy(), cutoff, lat)
        return lat

    def atom_edges(
        self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Directed atom→atom edges ``[sender j, receiver i]`` with sender image offsets."""
        positions, cell, pbc, cutoff = _check_inputs(positions, cell, pbc, cutoff)
        if positions.shape[0] == 0:
            return _empty()
        lat = self._lattice(positions, cell, pbc, cutoff)
        tol = _tolerance(cutoff, positions, cell)
        recv, rep, dist = lat.pairs(lat.wrapped, tol)
        send = lat.rep_atom[rep]
        # wrapped frame: vec = w_i - (w_j + n_w·cell); caller's frame: n = n_w - s_j + s_i
        offsets = lat.rep_image[rep] - lat.shift[send] + lat.shift[recv]
        return _edges(*_finish(send, recv, offsets, dist, positions, positions, cell, cutoff, tol, True))

    def probe_edges(
        self,
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: np.ndarray,
        probes: np.ndarray,
        cutoff: float,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Atom→probe edges ``[atom, probe]`` with atom image offsets."""
        positions, cell, pbc, cutoff = _check_inputs(positions, cell, pbc, cutoff)
        probes = np.asarray(probes, dtype=np.float64)
        if probes.ndim != 2 or probes.shape[1] != 3:
            raise CdpError(f"graph: probes must have shape [M, 3], got {probes.shape}")
        if not np.all(np.isfinite(probes)):
            raise CdpError("graph: probe positions must be finite")
        if positions.shape[0] == 0 or probes.shape[0] == 0:
            return _empty()
        lat = self._lattice(positions, cell, pbc, cutoff)
        senders, receivers, offs = [], [], []
        for start in range(0, probes.shape[0], self.probe_chunk):
            chunk = probes[start : start + self.probe_chunk]
            tol = _tolerance(cutoff, positions, cell, chunk)
            wrapped, probe_shift = lat.wrap(chunk)
            local, rep, dist = lat.pairs(wrapped, tol)
            send = lat.rep_atom[rep]
            offsets = lat.rep_image[rep] - lat.shift[send] + probe_shift[local]
            send, local, offsets = _finish(send, local, offsets, dist, positions, chunk, cell, cutoff, tol, False)
            senders.append(send)
            receivers.append(local + start)
            offs.append(offsets)
        # chunks cover increasing probe ranges and are sorted inside, so the concatenation is sorted
        return _edges(np.concatenate(senders), np.concatenate(receivers), np.concatenate(offs))


@hookimpl
def cdp_components():
    """Register the periodic graph builder as ``graph: periodic``."""
    return {"graph": {"periodic": PeriodicGraphBuilder}}
