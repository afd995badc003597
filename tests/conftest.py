"""Shared fixtures: paths to the reference material and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("CDP_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"reference fixtures not found at {FIXTURES}")
        pytest.skip(f"reference fixtures not found at {FIXTURES}")
    return FIXTURES
