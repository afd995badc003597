"""One-hot species featurizer: Z → 119x0e indicator (index = Z), the input of ChargE3Net."""

from __future__ import annotations

import torch
from torch import Tensor

from cdp.core.components import Featurizer, Spec
from cdp.core.constants import NUM_ELEMENTS
from cdp.core.hookspec import hookimpl


class OneHot(Featurizer):
    """numbers [N] → one-hot [N, num_elements] as even scalars; no learned table."""

    def __init__(self, num_elements: int = NUM_ELEMENTS):
        super().__init__()
        self.num_elements = int(num_elements)
        self.out_spec = Spec(irreps=f"{self.num_elements}x0e")
        self.register_buffer("_dtype_probe", torch.zeros(0), persistent=False)

    def forward(self, numbers: Tensor) -> Tensor:
        out = torch.nn.functional.one_hot(numbers.long(), self.num_elements)
        return out.to(self._dtype_probe.dtype)

    def extra_repr(self) -> str:
        return f"num_elements={self.num_elements}"


@hookimpl
def cdp_components():
    return {"featurizer": {"onehot": OneHot}}
