"""Two components: a readout head that reads only the invariant (0e) channels of any backbone through a
small MLP, and a brute-force graph builder (every periodic image checked, a reference for small systems).

Registered with cdp's ``cdp_components`` hook; the package's entry point (group ``cdp``) names this module.
Their tests (``tests/``) run cdp's contract kit, :mod:`cdp.testing`.
"""

from __future__ import annotations

import itertools
from typing import Tuple

import numpy as np
import torch
from torch import Tensor, nn

from cdp.core.components import GraphBuilder, Readout, Spec
from cdp.core.hookspec import hookimpl


def scalar_indices(spec: Spec) -> list:
    """Indices of the even scalar (0e) channels of ``spec`` (all channels for plain features)."""
    if spec.size is not None:
        return list(range(spec.size))
    from e3nn import o3

    idx = []
    for (mul, ir), sl in zip(o3.Irreps(spec.irreps), o3.Irreps(spec.irreps).slices()):
        if ir.l == 0 and ir.p == 1:
            idx.extend(range(sl.start, sl.stop))
    return idx


class ScalarMLPReadout(Readout):
    """ρ = MLP(scalar channels): Linear(d, hidden) – SiLU – Linear(hidden, 1). Invariant by construction."""

    def __init__(self, in_spec: Spec, hidden: int = 32, spin: bool = False):
        super().__init__()
        self.in_spec = in_spec
        self.spin = bool(spin)
        idx = scalar_indices(in_spec)
        if not idx:
            raise ValueError(f"example-scalar-mlp needs scalar (0e) channels; got {in_spec}")
        self.register_buffer("index", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(len(idx), hidden), nn.SiLU(), nn.Linear(hidden, 2 if spin else 1))

    def forward(self, features: Tensor) -> Tensor:
        out = self.mlp(features.index_select(1, self.index))
        return out if self.spin else out[:, 0]


class BruteForceGraph(GraphBuilder):
    """All pairs within the cutoff over every periodic image that can reach: O(N·M·images), for small systems.

    cdp's conventions: edges ``[sender, receiver]``, offsets [E, 3] int64 = the sender's periodic image
    (vector = r_receiver − (r_sender + offsets @ cell)), zero on non-periodic axes (whose cell rows may
    be zero), no atom paired with itself at offset 0.
    """

    def atom_edges(self, positions, cell, pbc, cutoff) -> Tuple[np.ndarray, np.ndarray]:
        return _edges(positions, cell, pbc, positions, cutoff, drop_self=True)

    def probe_edges(self, positions, cell, pbc, probes, cutoff) -> Tuple[np.ndarray, np.ndarray]:
        return _edges(positions, cell, pbc, probes, cutoff, drop_self=False)


def _edges(positions, cell, pbc, queries, cutoff: float, drop_self: bool) -> Tuple[np.ndarray, np.ndarray]:
    positions, queries = np.asarray(positions, np.float64), np.asarray(queries, np.float64)
    cell, pbc = np.asarray(cell, np.float64), np.asarray(pbc, bool)
    periodic = np.nonzero(pbc)[0]
    reach = np.zeros(3, dtype=np.int64)
    if periodic.size:
        inv = np.linalg.pinv(cell[periodic])  # fractional coordinates along the periodic axes
        frac = np.concatenate([positions, queries]) @ inv
        height = 1.0 / np.linalg.norm(inv, axis=0)  # distance between lattice planes
        reach[periodic] = np.ceil(cutoff / height + np.ptp(frac, axis=0)).astype(np.int64)
    senders, receivers, offsets = [], [], []
    for image in itertools.product(*(range(-r, r + 1) for r in reach)):
        shift = np.asarray(image, np.float64) @ cell
        dist = np.linalg.norm(queries[None, :, :] - (positions[:, None, :] + shift), axis=-1)
        s, r = np.nonzero(dist <= cutoff)
        if drop_self and not any(image):
            s, r = s[s != r], r[s != r]
        senders.append(s)
        receivers.append(r)
        offsets.append(np.tile(np.asarray(image, np.int64), (s.size, 1)))
    edge_index = np.stack([np.concatenate(senders), np.concatenate(receivers)]).astype(np.int64)
    return edge_index, np.concatenate(offsets).astype(np.int64).reshape(-1, 3)


@hookimpl
def cdp_components():
    return {"readout": {"example-scalar-mlp": ScalarMLPReadout}, "graph": {"example-brute-force": BruteForceGraph}}
