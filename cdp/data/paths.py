"""Where cdp's shipped data lives (a leaf module)."""

from __future__ import annotations

import os


def embedded_path() -> str:
    """Directory of the small QM9 dataset shipped inside the package (used when no dataset is given)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded")
