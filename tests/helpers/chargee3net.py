"""Paired e3nn/fast ChargE3Net backbones and a small periodic structure for the fast-backend tests."""

from __future__ import annotations

import numpy as np
import torch

from cdp.plugins.backbones.chargee3net import ChargE3NetBackbone
from cdp.plugins.featurizers.onehot import OneHot
from tests.helpers.deepdft import graphs


def _pair(lmax: int, mul: int = 24, layers: int = 2, num_basis: int = 6, seed: int = 0, dtype=torch.float64):
    """(e3nn backbone with perturbed weights, fast backbone holding the same state_dict)."""
    torch.manual_seed(seed)
    kw = dict(num_interactions=layers, mul=mul, lmax=lmax, num_basis=num_basis, radial_neurons=16, num_neighbors=6.0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # e3nn stores its own constants in the default dtype at build time
    try:
        ref = ChargE3NetBackbone(backend="e3nn", **kw)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.3 * torch.randn_like(p))
        fast = ChargE3NetBackbone(backend="fast", **kw)
    finally:
        torch.set_default_dtype(default)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref.to(dtype), fast.to(dtype)


def _structure(seed: int = 1, n_atoms: int = 4, n_probes: int = 30):
    rng = np.random.default_rng(seed)
    cell = np.diag([3.1, 3.4, 2.9]) + 0.2 * rng.standard_normal((3, 3))
    pos = rng.uniform(0, 1, (n_atoms, 3)) @ cell
    probes = rng.uniform(0, 1, (n_probes, 3)) @ cell
    probes[0] = pos[1]  # a zero-length probe edge
    numbers = rng.choice([1, 6, 8, 14], n_atoms)
    return numbers, pos, cell, np.array([True, True, True]), probes


def _run(backbone, numbers, pos, cell, pbc, probes, dtype, requires_grad=False):
    aei, aoff, pei, poff = graphs(pos, cell, pbc, probes, backbone.cutoff)
    p = torch.tensor(pos, dtype=dtype, requires_grad=requires_grad)
    q = torch.tensor(probes, dtype=dtype)
    c = torch.tensor(cell, dtype=dtype)
    aei_t, pei_t = torch.as_tensor(aei), torch.as_tensor(pei)
    avec = p[aei_t[1]] - (p[aei_t[0]] + torch.as_tensor(aoff, dtype=dtype) @ c)
    pvec = q[pei_t[1]] - (p[pei_t[0]] + torch.as_tensor(poff, dtype=dtype) @ c)
    x = OneHot()(torch.as_tensor(numbers)).to(dtype)
    layers = backbone.encode(x, aei_t, avec)
    return layers, backbone.decode(layers, pei_t, pvec, len(probes)), p
