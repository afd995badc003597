"""Featurizer ``embedding``: a learned vector per element (as DeepDFT), initial node features [N, size]."""

from __future__ import annotations

from torch import Tensor, nn

from cdp.core.components import Featurizer, Spec
from cdp.core.constants import NUM_ELEMENTS  # Z = 0..118, like DeepDFT's table (len(ase.data.atomic_numbers))
from cdp.core.hookspec import hookimpl
from cdp.core.types import CdpError


class EmbeddingFeaturizer(Featurizer):
    """nn.Embedding(119, size): row Z is the learned initial state of element Z."""

    def __init__(self, size: int = 128):
        super().__init__()
        if int(size) < 1:
            raise CdpError(f"embedding featurizer: size must be a positive integer, got {size}")
        self.size = int(size)
        self.out_spec = Spec(size=self.size)
        self.embedding = nn.Embedding(NUM_ELEMENTS, self.size)

    def forward(self, numbers: Tensor) -> Tensor:
        return self.embedding(numbers)


@hookimpl
def cdp_components():
    return {"featurizer": {"embedding": EmbeddingFeaturizer}}
