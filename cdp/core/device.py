"""Device names → torch devices (a leaf: the PyTorch and exported predictors both use it)."""

from __future__ import annotations

from typing import Optional

import torch

from cdp.core.errors import CdpError


def resolve_device(device: Optional[str]) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or None (cuda when available, else cpu); a missing GPU is a clear error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CdpError(f"device '{device}' requested but no CUDA device is available")
    return dev
