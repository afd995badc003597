"""Standardised radial basis: e3nn soft one-hot functions on [0, cutoff], shifted and scaled per function."""

from __future__ import annotations

import torch
from e3nn.math import soft_one_hot_linspace
from torch import Tensor, nn


class RadialBasis(nn.Module):
    """r [E] → (f_k(r) − mean_k)·inv_std_k [E, num_basis]; no cutoff envelope (as published).

    ``mean``/``inv_std`` are buffers (loaded with a checkpoint); a fresh model estimates them on
    evenly spaced distances in (0, cutoff] so that the embedding has zero mean and unit variance.
    """

    def __init__(self, cutoff: float, num_basis: int, basis: str = "gaussian", num_samples: int = 4000):
        super().__init__()
        self.cutoff = float(cutoff)
        self.num_basis = int(num_basis)
        self.basis = str(basis)
        r = torch.arange(1, num_samples + 1, dtype=torch.float64) * (self.cutoff / num_samples)
        f = self._raw(r)
        self.register_buffer("mean", f.mean(0).to(torch.get_default_dtype()))
        self.register_buffer("inv_std", f.std(0).reciprocal().to(torch.get_default_dtype()))

    def _raw(self, r: Tensor) -> Tensor:
        return soft_one_hot_linspace(r, 0.0, self.cutoff, self.num_basis, basis=self.basis, cutoff=False)

    def forward(self, r: Tensor) -> Tensor:
        return (self._raw(r) - self.mean) * self.inv_std

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_basis={self.num_basis}, basis={self.basis!r}"
