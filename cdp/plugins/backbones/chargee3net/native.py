"""The fused uvu convolution kernel (kernels/uvu_conv.c): compiled once per machine, loaded with ctypes.

The C source ships with the package; on first use it is compiled with the system C compiler (``$CC`` or
``cc``) into ``$CDP_CACHE_DIR`` (default ``~/.cache/cdp``), once per instruction-set build: ``avx512``
and ``avx2`` (explicit ``-m`` flags; the kernel's AVX2/FMA path) and ``generic`` (no SIMD flags: its
plain C path), picked at run time from the CPU's flags (/proc/cpuinfo on Linux x86; elsewhere from
``platform.machine()``) or forced by ``CDP_NATIVE_ISA``.  The cache file is keyed by the source, the
compiler and its ``--version``, the machine and the exact flags; it is written atomically and its SHA-256
recorded beside it, and a library whose content does not match (truncated, corrupted) is rebuilt
rather than loaded.
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
from typing import List, Optional, Tuple

import torch

from cdp.core.atomic import atomic_write, atomic_write_text

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


# per-ISA builds with explicit target flags (never -march=native: a cache shared between machines, or a
# CPU whose flags differ from the build host's, must not load code it cannot run)
X86_ISAS = {
    "avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mavx2"),
    "avx2": ("-mavx2", "-mfma"),
    "generic": (),
}
X86_REQUIRES = {
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "avx2"},
    "avx2": {"avx2", "fma"},
    "generic": set(),
}
ISA_ENV = "CDP_NATIVE_ISA"


def machine() -> str:
    """The CPU architecture as the cache keys it: x86_64, aarch64, arm64, ... (``platform.machine()``)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64"}.get(m, m or "unknown")


def cpu_flags() -> Optional[set]:
    """The CPU feature flags of /proc/cpuinfo (Linux x86), or None where there is no such line."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def available_isas() -> List[str]:
    """Builds this CPU can run, best first; always ends with ``generic`` (plain C, no SIMD flags)."""
    if machine() != "x86_64":
        return ["generic"]  # the kernel's vector path is AVX2; elsewhere the plain C path
    flags = cpu_flags()
    if flags is None:  # no flags line (macOS): only what every x86-64 runs
        return ["generic"]
    return [isa for isa in X86_ISAS if X86_REQUIRES[isa] <= flags]


def isa_flags(isa: str) -> Tuple[str, ...]:
    """Compiler flags of the build ``isa``."""
    if machine() == "x86_64":
        return X86_ISAS[isa]
    return ()


def select_isa() -> str:
    """``$CDP_NATIVE_ISA`` when set (refused when this CPU cannot run it), else the best available build."""
    have = available_isas()
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if forced:
        known = X86_ISAS if machine() == "x86_64" else {"generic": ()}
        if forced not in known:
            raise RuntimeError(f"{ISA_ENV}={forced} is not a build for {machine()} (one of {', '.join(known)})")
        if forced not in have:
            raise RuntimeError(f"{ISA_ENV}={forced}: this CPU lacks its instructions (it runs {', '.join(have)})")
        return forced
    return have[0]


def compiler_version(compiler: str) -> str:
    """First line of ``compiler --version`` (part of the cache key: a new compiler rebuilds)."""
    try:
        proc = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot run {compiler} --version ({exc})") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{compiler} --version failed")
    return proc.stdout.strip()


def compile_command(compiler: str, isa: str, output: str) -> List[str]:
    """The compiler command line of build ``isa``."""
    return [compiler, "-O3", *isa_flags(isa), "-fPIC", "-shared", "-std=c99", str(SOURCE), "-o", output]


def library_path(compiler: str, isa: str) -> Path:
    """Cache file of build ``isa``: keyed by the source, ABI, compiler and its version, machine and flags."""
    key = hashlib.sha256(
        "\0".join([
            hashlib.sha256(SOURCE.read_bytes()).hexdigest(), str(ABI_VERSION), compiler,
            compiler_version(compiler), machine(), " ".join(compile_command("cc", isa, "out")),
        ]).encode()
    ).hexdigest()[:16]
    return cache_dir() / f"uvu_conv-{machine()}-{isa}-{key}.so"


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified(target: Path) -> bool:
    """True when ``target`` exists and its SHA-256 equals the one recorded beside it at build time."""
    try:
        recorded = _sidecar(target).read_text().split()[0]
        return target.is_file() and _sha256(target) == recorded
    except (OSError, IndexError):
        return False


def _compile(compiler: str, isa: str, target: Path) -> None:
    """Build into a temp file beside ``target``; rename it, then record its SHA-256 in the sidecar.

    A reader that finds the library but not (yet) a matching sidecar rebuilds rather than loading it.
    """
    digest: list = []

    def build(tmp: str) -> None:
        cmd = compile_command(compiler, isa, tmp)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
        digest.append(_sha256(Path(tmp)))

    atomic_write(target, build)
    atomic_write_text(_sidecar(target), f"{digest[0]}  {target.name}\n")


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


def find_compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler found (set CC)")
    return compiler


def build(isa: Optional[str] = None) -> Path:
    """The verified cached library of build ``isa`` (default: :func:`select_isa`), compiled when missing,
    truncated or not matching its recorded hash."""
    isa = isa or select_isa()
    compiler = find_compiler()
    target = library_path(compiler, isa)
    if not verified(target):
        _compile(compiler, isa, target)
        if not verified(target):
            raise RuntimeError(f"{target}: the freshly built library does not match its recorded hash")
    return target


def load() -> Optional[ctypes.CDLL]:
    """The compiled kernel library, or None when it cannot be built here (reason warned once).

    The cached library is loaded only when its content hash matches the sidecar written when it was
    built; otherwise it is rebuilt (atomically) first.  Call it when a model is loaded, so that the
    first forward pass does not pay for compilation.
    """
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib = None
        if os.environ.get("CDP_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            _state["lib"] = None
            return None
        try:
            isa = select_isa()
            lib = _bind(ctypes.CDLL(str(build(isa))))
            _state["isa"] = isa
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
