"""Shared fixtures: paths to the reference material and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("CDP_TEST_THREADS", "1")))

from tests.helpers.paths import FIXTURES


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"reference fixtures not found at {FIXTURES}")
        pytest.skip(f"reference fixtures not found at {FIXTURES}")
    return FIXTURES
