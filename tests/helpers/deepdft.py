"""Test helpers for the DeepDFT backbones: graphs, and a featurizer→backbone→readout forward pass."""

from __future__ import annotations

import itertools

import numpy as np
import torch

try:
    from cdp.plugins.graphs.periodic import PeriodicGraphBuilder
except ImportError:  # pragma: no cover - fallback while the builder is absent
    PeriodicGraphBuilder = None


def _brute_edges(senders, receivers, cell, pbc, cutoff, skip_self):
    cell = np.asarray(cell, float)
    ranges = []
    for ax in range(3):
        if pbc[ax]:
            other = np.cross(cell[(ax + 1) % 3], cell[(ax + 2) % 3])
            height = abs(np.dot(cell[ax], other)) / np.linalg.norm(other)
            k = int(np.ceil(cutoff / height)) + 1
            ranges.append(range(-k, k + 1))
        else:
            ranges.append(range(0, 1))
    ei, offs = [], []
    for n in itertools.product(*ranges):
        shift = np.asarray(n, float) @ cell
        d = np.linalg.norm(receivers[None, :, :] - (senders[:, None, :] + shift), axis=2)
        s, r = np.nonzero(d <= cutoff)
        if skip_self and not any(n):
            keep = s != r
            s, r = s[keep], r[keep]
        ei.append(np.stack([s, r]))
        offs.append(np.tile(np.asarray(n, np.int64), (s.size, 1)))
    return np.concatenate(ei, axis=1).astype(np.int64), np.concatenate(offs).astype(np.int64)


def graphs(positions, cell, pbc, probes, cutoff):
    """(atom edge_index, atom offsets, probe edge_index, probe offsets) as numpy int64."""
    pbc = np.asarray(pbc, bool)
    if PeriodicGraphBuilder is not None:
        g = PeriodicGraphBuilder()
        a = g.atom_edges(positions, cell, pbc, cutoff)
        p = g.probe_edges(positions, cell, pbc, probes, cutoff)
        return a[0], a[1], p[0], p[1]
    a = _brute_edges(positions, positions, cell, pbc, cutoff, True)
    p = _brute_edges(positions, probes, cell, pbc, cutoff, False)
    return a[0], a[1], p[0], p[1]


def _np(a):
    return a.detach().cpu().numpy().astype(np.float64) if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)


def predict(featurizer, backbone, readout, numbers, positions, cell, pbc, probes, dtype=torch.float64, graph=None):
    """Density at probes through featurizer → encode → decode → readout (vectors built in ``dtype``).

    ``positions``/``probes`` may be tensors with ``requires_grad`` (gradients flow through the edge vectors).
    """
    if graph is None:
        graph = graphs(_np(positions), _np(cell), np.asarray(pbc, bool), _np(probes), backbone.cutoff)
    aei, aoff, pei, poff = graph
    pos = torch.as_tensor(positions, dtype=dtype) if isinstance(positions, torch.Tensor) else torch.as_tensor(np.asarray(positions), dtype=dtype)
    prb = torch.as_tensor(probes, dtype=dtype) if isinstance(probes, torch.Tensor) else torch.as_tensor(np.asarray(probes), dtype=dtype)
    cel = torch.as_tensor(_np(cell), dtype=dtype)
    aei_t, pei_t = torch.as_tensor(aei), torch.as_tensor(pei)
    avec = pos[aei_t[1]] - (pos[aei_t[0]] + torch.as_tensor(aoff, dtype=dtype) @ cel)
    pvec = prb[pei_t[1]] - (pos[pei_t[0]] + torch.as_tensor(poff, dtype=dtype) @ cel)
    x = featurizer(torch.as_tensor(np.asarray(numbers), dtype=torch.long))
    layers = backbone.encode(x, aei_t, avec)
    return readout(backbone.decode(layers, pei_t, pvec, int(prb.shape[0])))
