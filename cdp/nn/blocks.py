"""Small math shared by the DeepDFT plugins (backbones and the mlp readout): activations, distance bases, cutoffs,
zero-safe norms.

A helper module, not a plugin: it registers nothing.  Every guard leaves non-degenerate values
bit-for-bit as the published DeepDFT code computes them, and gives finite values and gradients for
zero-length edges (a probe sitting on an atom).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LN2 = math.log(2.0)


def shifted_softplus(x: Tensor) -> Tensor:
    """ssp(x) = softplus(x) − ln 2 (zero at x = 0)."""
    return nn.functional.softplus(x) - LN2


class ShiftedSoftplus(nn.Module):
    """Module form of :func:`shifted_softplus`."""

    def forward(self, x: Tensor) -> Tensor:
        return shifted_softplus(x)


def two_layer_mlp(n_in: int, n_hidden: int, n_out: int, activation: nn.Module) -> nn.Sequential:
    """Linear–activation–Linear, parameters at indices 0 and 2 (the published layout)."""
    return nn.Sequential(nn.Linear(n_in, n_hidden), activation, nn.Linear(n_hidden, n_out))


def edge_length(vec: Tensor) -> Tensor:
    """|vec| [E] as sqrt(Σ vec²); exactly 0 (with zero gradient) for a zero vector instead of NaN gradients."""
    return safe_norm(vec, dim=1)


def safe_norm(x: Tensor, dim: int) -> Tensor:
    """sqrt(Σ x²) over ``dim``: exactly 0 with zero gradient at a zero vector; a contiguous reduction
    (torch.linalg.norm over a strided middle dimension is several times slower on CPU)."""
    sq = torch.sum(x * x, dim=dim)
    nonzero = sq > 0
    return torch.where(nonzero, torch.sqrt(torch.where(nonzero, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def unit_vector(vec: Tensor, length: Tensor) -> Tensor:
    """vec / max(|vec|, 1e-12) as published; 0 with zero gradient for an exactly zero vector."""
    denom = torch.clamp(length, min=1e-12).unsqueeze(1)
    return torch.where((length > 0).unsqueeze(1), vec / denom, torch.zeros_like(vec))


def gaussian_centres(cutoff: float, step: float) -> Tensor:
    """Gaussian centres 0, step, … < cutoff (float64), ceil(cutoff/step) of them."""
    n = int(math.ceil(cutoff / step))
    mu = torch.arange(0.0, cutoff, step, dtype=torch.float64)
    if mu.numel() != n:  # arange rounding at the end point; keep the published count
        mu = torch.arange(n, dtype=torch.float64) * step
    return mu


def gaussian_basis(dist: Tensor, centres: Tensor, sigma: float) -> Tensor:
    """exp(−(d − μ)² / (2σ²)) [E, K]."""
    mu = centres.to(dist.dtype)
    return torch.exp(-((dist.unsqueeze(1) - mu) ** 2) / (2.0 * sigma**2))


def soft_cutoff(dist: Tensor, cutoff: float) -> Tensor:
    """SchNet-DeepDFT soft cutoff 1 − sigmoid(5 (d − (rc − 1.5))) [E]."""
    return 1.0 - torch.sigmoid(5 * (dist - (cutoff - 1.5)))


def sinc_basis(dist: Tensor, size: int, cutoff: float) -> Tensor:
    """sin(nπd/rc)/d for n = 1..size [E, size], written as sinc(n d / rc)·πn/rc (finite at d = 0)."""
    n = torch.arange(size, dtype=dist.dtype, device=dist.device) + 1
    return torch.sinc(n / cutoff * dist.unsqueeze(1)) * math.pi * n / cutoff


def cosine_cutoff(dist: Tensor, cutoff: float) -> Tensor:
    """½(cos(πd/rc) + 1) for d < rc, else 0 [E]."""
    return torch.where(dist < cutoff, 0.5 * (torch.cos(math.pi * dist / cutoff) + 1), torch.zeros_like(dist))


def scatter_sum(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Σ of ``values`` rows into ``size`` rows at ``index`` (out of place; empty index gives zeros)."""
    out = torch.zeros((size,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add(0, index, values)
