"""Where the repository and the reference material are (``$CDP_SHARED`` first, then ``../shared``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _find_shared() -> Path:
    env = os.environ.get("CDP_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared", REPO / "shared"]
    for c in candidates:
        if (c / "fixtures" / "reference").is_dir():
            return c
    return candidates[-1]


SHARED = _find_shared()
FIXTURES = SHARED / "fixtures" / "reference"
