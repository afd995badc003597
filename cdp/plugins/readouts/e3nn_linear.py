"""Equivariant linear readouts: probe irreps → density scalars (only the 0e channels contribute).

``linear``: 1x0e density.  ``linear-spin-compat``: the published spin head, 1x0e+1x0o read as
(up, down) and returned as (up+down, up−down).  ``linear-spin``: cdp's spin head, 2x0e =
(total, magnetisation) — magnetisation is even under inversion, so it must not be a 0o channel.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor

from cdp.core.components import Readout, Spec
from cdp.core.hookspec import hookimpl


def _spec(in_spec) -> Spec:
    if isinstance(in_spec, Spec):
        return in_spec
    return Spec(irreps=str(o3.Irreps(in_spec)))


class LinearReadout(Readout):
    """features [M, in] → ρ [M] through an e3nn Linear to 1x0e (no bias, as published)."""

    spin = False
    irreps_head = "1x0e"

    def __init__(self, in_spec):
        super().__init__()
        self.in_spec = _spec(in_spec)
        self.linear = o3.Linear(o3.Irreps(self.in_spec.irreps), o3.Irreps(self.irreps_head))

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)[:, 0]

    def reads(self) -> str:
        """The head's irreps types: an e3nn Linear connects only equal irreps, so the others never matter."""
        return "+".join(sorted({str(ir) for _, ir in o3.Irreps(self.irreps_head)}))


class LinearSpinCompatReadout(LinearReadout):
    """Published spin head: (up, down) from 1x0e+1x0o, returned [M, 2] = (up+down, up−down)."""

    spin = True
    irreps_head = "1x0e+1x0o"

    def forward(self, features: Tensor) -> Tensor:
        out = self.linear(features)
        up, down = out[:, 0], out[:, 1]
        return torch.stack([up + down, up - down], dim=1)


class LinearSpinReadout(LinearReadout):
    """cdp spin head: 2x0e read directly as (total, magnetisation), [M, 2]."""

    spin = True
    irreps_head = "2x0e"

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)


@hookimpl
def cdp_components():
    return {
        "readout": {
            "linear": LinearReadout,
            "linear-spin-compat": LinearSpinCompatReadout,
            "linear-spin": LinearSpinReadout,
        }
    }
