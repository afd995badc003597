"""Readout ``mlp``: Linear(d, d)–activation–Linear(d, 1) on plain probe features (DeepDFT's readout).

``activation`` is ``ssp`` (shifted softplus, invDeepDFT) or ``silu`` (equiDeepDFT).  With ``spin`` the
last layer has two outputs: (total density, magnetisation density).
"""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from cdp.core.components import Readout, Spec
from cdp.core.hookspec import hookimpl
from cdp.core.types import CdpError
from cdp.nn.blocks import ShiftedSoftplus

ACTIVATIONS = {"ssp": ShiftedSoftplus, "silu": nn.SiLU}


class MLPReadout(Readout):
    """Probe features [M, d] → density [M] (or [M, 2] with spin)."""

    def __init__(self, in_spec: Union[Spec, int], activation: Optional[str] = None, spin: bool = False):
        super().__init__()
        if isinstance(in_spec, int):
            in_spec = Spec(size=in_spec)
        if not isinstance(in_spec, Spec) or in_spec.size is None:
            raise CdpError(
                f"mlp readout: needs plain (invariant) features of a given size, got {in_spec}; "
                "use an equivariant readout for irreps"
            )
        if activation not in ACTIVATIONS:
            raise CdpError(f"mlp readout: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        d = int(in_spec.size)
        self.in_spec = Spec(size=d)
        self.activation = activation
        self.spin = bool(spin)
        self.net = nn.Sequential(nn.Linear(d, d), ACTIVATIONS[activation](), nn.Linear(d, 2 if self.spin else 1))

    def forward(self, features: Tensor) -> Tensor:
        out = self.net(features)
        return out if self.spin else out[:, 0]


@hookimpl
def cdp_components():
    return {"readout": {"mlp": MLPReadout}}
