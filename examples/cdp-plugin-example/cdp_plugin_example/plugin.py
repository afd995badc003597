"""A readout head that reads only the invariant (0e) channels of any backbone through a small MLP.

Registered with cdp's ``cdp_components`` hook; the package's entry point (group ``cdp``) names this module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cdp.core.components import Readout, Spec
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


@hookimpl
def cdp_components():
    return {"readout": {"example-scalar-mlp": ScalarMLPReadout}}
