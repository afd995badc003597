"""The fused uvu convolution kernel (kernels/uvu_conv.c): compiled once per machine, loaded with ctypes.

The C source ships with the package; on first use it is compiled with the system C compiler (``$CC`` or
``cc``, ``-O3 -march=native``) into ``$CDP_CACHE_DIR`` (default ``~/.cache/cdp``), keyed by the source,
the compiler and the CPU, and written atomically so concurrent processes never load half a library.
Without a compiler, or with ``CDP_NATIVE=0``, :func:`load` returns None and the fast backend keeps its
pure-PyTorch path (a one-line warning says so).  ctypes releases the GIL, so receiver ranges run in
parallel Python threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

from cdp.core.atomic import atomic_write

SOURCE = Path(__file__).with_name("kernels") / "uvu_conv.c"
ABI_VERSION = 4
ACC_SLACK = 8  # columns after each weight and accumulator row that the vector kernel may touch


MAX_MUL = 1024  # CDP_MAX_MUL of the C source: the per-path channel buffer
_lock = threading.Lock()
_state: dict = {}


def round_up(n: int, k: int) -> int:
    """``n`` rounded up to a multiple of ``k``."""
    return -(-n // k) * k


def padded(mul: int) -> int:
    """Channels of one irrep in the kernel's sender layout: mul rounded up to whole 8-float vectors."""
    return round_up(mul, 8)


def cache_dir() -> Path:
    """Where compiled kernels live: ``$CDP_CACHE_DIR`` or ``~/.cache/cdp``."""
    root = os.environ.get("CDP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cdp")
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compile(compiler: str, target: Path) -> None:
    """Build the library into a temporary file beside ``target``, renamed only when the compiler succeeded."""

    def build(tmp: str) -> None:
        cmd = [compiler, "-O3", "-march=native", "-fPIC", "-shared", "-std=c99", str(SOURCE), "-o", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")

    atomic_write(target, build)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, p = ctypes.c_int64, ctypes.c_void_p
    for name in ("cdp_uvu_conv_f32", "cdp_uvu_conv_f64"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [i64, i64, p, p, p, i64, p, i64, p, i64, p, i64, i64, p, p, p, p]
    lib.cdp_uvu_abi_version.restype = ctypes.c_int
    lib.cdp_uvu_acc_slack.restype = ctypes.c_int
    if lib.cdp_uvu_abi_version() != ABI_VERSION or lib.cdp_uvu_acc_slack() > ACC_SLACK:
        raise RuntimeError("stale kernel library (ABI version)")
    return lib


def load() -> Optional[ctypes.CDLL]:
    """The compiled kernel library, or None when it cannot be built here (reason warned once)."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib = None
        if os.environ.get("CDP_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            _state["lib"] = None
            return None
        try:
            compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
            if not compiler:
                raise RuntimeError("no C compiler found (set CC)")
            key = hashlib.sha256(
                SOURCE.read_bytes() + compiler.encode() + _cpu_signature().encode() + platform.machine().encode()
            ).hexdigest()[:16]
            target = cache_dir() / f"uvu_conv-{key}.so"
            if not target.exists():
                _compile(compiler, target)
            lib = _bind(ctypes.CDLL(str(target)))
        except Exception as exc:  # any failure: keep the PyTorch path, say why once
            warnings.warn(f"cdp: fused ChargE3Net kernel unavailable ({exc}); using the PyTorch fast path", stacklevel=2)
            lib = None
        _state["lib"] = lib
        return lib


def entry(lib: ctypes.CDLL, dtype: torch.dtype):
    """The kernel entry point for ``dtype`` (float32/float64), or None."""
    return {torch.float32: lib.cdp_uvu_conv_f32, torch.float64: lib.cdp_uvu_conv_f64}.get(dtype)


def entry_backward(lib: ctypes.CDLL, dtype: torch.dtype):
    """The backward kernel entry point for ``dtype`` (float32/float64), or None (argument types bound on first use)."""
    name = {torch.float32: "cdp_uvu_conv_backward_f32", torch.float64: "cdp_uvu_conv_backward_f64"}.get(dtype)
    if name is None:
        return None
    fn = getattr(lib, name)
    if fn.argtypes is None:
        i64, p = ctypes.c_int64, ctypes.c_void_p
        fn.restype = ctypes.c_int
        fn.argtypes = [i64, i64, p, p, p, i64, p, i64, p, i64, p, i64, p, p, p, i64, p, p, p, p]
    return fn
