"""Device names → torch devices (a leaf: the PyTorch and exported predictors both use it)."""

from __future__ import annotations

from typing import Optional

import torch

from cdp.core.errors import CdpError


def resolve_device(device: Optional[str]) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or None/``auto`` (cuda when available, else cpu).

    Anything else (``meta``, a typo) and a GPU that is not there are one-line CdpErrors.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device).strip()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise CdpError(f"unknown device '{device}' (cpu, cuda, cuda:N, mps or auto)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CdpError(f"device '{device}' requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CdpError(f"device '{device}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CdpError(f"device '{device}' requested but no MPS device is available")
    return dev
