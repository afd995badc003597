"""keep_freed_memory: set once, reports whether glibc accepted the thresholds, never raises."""

from __future__ import annotations

import subprocess
import sys


def test_keep_freed_memory_is_idempotent_and_boolean():
    code = (
        "from cdp.core import malloc\n"
        "a = malloc.keep_freed_memory(); b = malloc.keep_freed_memory()\n"
        "assert a is b and isinstance(a, bool)\n"
        "print(a)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if sys.platform.startswith("linux"):
        import ctypes.util

        if ctypes.util.find_library("c"):
            assert out.stdout.strip() == "True"  # glibc accepts the 32 MiB mmap threshold
