"""The fused uvu convolution kernel (kernels/uvu_conv.c): compiled once per machine, loaded with ctypes.

The C source ships with the package; :func:`load` compiles it with the system C compiler (``$CC`` or
``cc``) into ``$CDP_CACHE_DIR`` (default ``~/.cache/cdp``), once per instruction-set build, and loads it.
It is called once when a model is built or loaded; :func:`loaded` then hands the library to the forward
pass without ever compiling.  Builds: ``avx512`` (explicit ``-mavx512*`` flags: the kernel's AVX-512 path),
``avx2`` (``-mavx2 -mfma``: its AVX2 path), ``neon`` (aarch64: its NEON path) and ``generic`` (no SIMD
flags, ``-DCDP_PLAIN``: plain C), picked at run time from the CPU's flags (/proc/cpuinfo on Linux x86;
elsewhere from ``platform.machine()``) or forced by ``CDP_NATIVE_ISA``.  The cache file is keyed by the
source, the compiler and its ``--version``, the machine and the exact flags; it is written atomically and
its SHA-256 recorded beside it, and a library whose content does not match (truncated, corrupted) is
rebuilt rather than loaded.
Without a compiler, or with ``CDP_NATIVE=0``, :func:`load` returns None and the fast backend keeps its
pure-PyTorch path (a one-line warning says so).  ctypes releases the GIL, so receiver ranges run in
parallel Python threads.

The layout constants shared with the C side (``ABI_VERSION``, ``PAD_WIDTH``, ``ACC_SLACK``, ``MAX_MUL``)
are read from the source's ``#define`` lines at import (so they exist without a compiler) and checked
against the values the loaded library exports.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from cdp.core.atomic import atomic_write, atomic_write_text

SOURCE = Path(__file__).with_name("kernels") / "uvu_conv.c"


def _source_constants() -> dict:
    """``#define CDP_UVU_* / CDP_MAX_MUL`` integers of the C source: the single place they are written."""
    found = dict(re.findall(r"^#define\s+(CDP_UVU_[A-Z_]+|CDP_MAX_MUL)\s+(\d+)\b", SOURCE.read_text(), re.M))
    names = ("CDP_UVU_ABI_VERSION", "CDP_UVU_PAD_WIDTH", "CDP_UVU_SLACK", "CDP_MAX_MUL")
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"{SOURCE}: missing #define {', '.join(missing)}")
    return {n: int(found[n]) for n in names}


_CONSTANTS = _source_constants()
ABI_VERSION = _CONSTANTS["CDP_UVU_ABI_VERSION"]
PAD_WIDTH = _CONSTANTS["CDP_UVU_PAD_WIDTH"]  # sender rows: each irrep's mul rounded up to this, zero padded
ACC_SLACK = _CONSTANTS["CDP_UVU_SLACK"]  # columns after each weight and accumulator row a vector path may touch
MAX_MUL = _CONSTANTS["CDP_MAX_MUL"]  # largest multiplicity of a path
VECTOR_PATHS = {0: "generic", 1: "avx2", 2: "avx512", 3: "neon"}  # cdp_uvu_vector_path() of a build
_lock = threading.Lock()
_state: dict = {}


def round_up(n: int, k: int) -> int:
    """``n`` rounded up to a multiple of ``k``."""
    return -(-n // k) * k


def padded(mul: int) -> int:
    """Channels of one irrep in the kernel's sender layout: mul rounded up to ``PAD_WIDTH`` (zero padded)."""
    return round_up(mul, PAD_WIDTH)


def cache_dir() -> Path:
    """Where compiled kernels live: ``$CDP_CACHE_DIR`` or ``~/.cache/cdp``."""
    root = os.environ.get("CDP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cdp")
    return Path(root) / "kernels"


# per-ISA builds with explicit target flags (never -march=native: a cache shared between machines, or a
# CPU whose flags differ from the build host's, must not load code it cannot run)
X86_ISAS = {
    "avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mavx2"),
    "avx2": ("-mavx2", "-mfma"),
    "generic": ("-DCDP_PLAIN",),
}
ARM_MACHINES = ("aarch64", "arm64")
ARM_ISAS = {"neon": (), "generic": ("-DCDP_PLAIN",)}  # Advanced SIMD is part of every aarch64 CPU
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
    if machine() in ARM_MACHINES:
        return list(ARM_ISAS)
    if machine() != "x86_64":
        return ["generic"]  # no vector path for this architecture: plain C
    flags = cpu_flags()
    if flags is None:  # no flags line (macOS): only what every x86-64 runs
        return ["generic"]
    return [isa for isa in X86_ISAS if X86_REQUIRES[isa] <= flags]


def isa_flags(isa: str) -> Tuple[str, ...]:
    """Compiler flags of the build ``isa``."""
    return _known_isas()[isa]


def _known_isas() -> dict:
    """Builds (name → compiler flags) that exist for this machine's architecture."""
    if machine() == "x86_64":
        return X86_ISAS
    if machine() in ARM_MACHINES:
        return ARM_ISAS
    return {"generic": ("-DCDP_PLAIN",)}


def select_isa() -> str:
    """``$CDP_NATIVE_ISA`` when set (refused when this CPU cannot run it), else the best available build."""
    have = available_isas()
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if forced:
        known = _known_isas()
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


_I64, _P, _F64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double
# argument types of the entry points (see kernels/uvu_conv.c)
_SIGNATURES = {
    "forward": [_I64, _I64, _P, _P, _P, _I64, _P, _I64, _P, _I64, _P, _I64, _I64, _P, _P, _P, _P],
    "table": [_I64, _I64, _P, _P, _P, _I64, _P, _P, _I64, _F64, _I64, _P, _I64, _P, _I64, _I64, _P, _P, _P, _P],
    "backward": [_I64, _I64, _P, _P, _P, _I64, _P, _I64, _P, _I64, _P, _I64, _P, _P, _P, _I64, _P, _P, _P, _P],
    "receivers": [_I64, _I64, _P, _P, _P, _I64, _P, _P, _I64, _F64, _I64, _P, _I64, _P, _P, _I64, _P, _P, _P, _P],
}
_ENTRIES = {
    "forward": {torch.float32: "cdp_uvu_conv_f32", torch.float64: "cdp_uvu_conv_f64"},
    "table": {torch.float32: "cdp_uvu_conv_table_f32", torch.float64: "cdp_uvu_conv_table_f64"},
    "backward": {torch.float32: "cdp_uvu_conv_backward_f32", torch.float64: "cdp_uvu_conv_backward_f64"},
    "receivers": {torch.float32: "cdp_uvu_receivers_table_f32", torch.float64: "cdp_uvu_receivers_table_f64"},
}
_EXPORTED = {"cdp_uvu_abi_version": ABI_VERSION, "cdp_uvu_pad_width": PAD_WIDTH, "cdp_uvu_acc_slack": ACC_SLACK,
             "cdp_uvu_max_mul": MAX_MUL}


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Set the entry points' argument types; refuse a library whose exported constants differ from the source's."""
    for name, want in _EXPORTED.items():
        fn = getattr(lib, name, None)
        if fn is None:
            raise RuntimeError(f"stale kernel library (no {name})")
        fn.restype = ctypes.c_int
        if fn() != want:
            raise RuntimeError(f"stale kernel library ({name} {fn()} != {want})")
    lib.cdp_uvu_vector_path.restype = ctypes.c_int
    for kind, names in _ENTRIES.items():
        for name in names.values():
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = _SIGNATURES[kind]
    return lib


def vector_path(lib: ctypes.CDLL) -> str:
    """The float32 vector path compiled into ``lib``: ``avx512``, ``avx2``, ``neon`` or ``generic`` (plain C)."""
    return VECTOR_PATHS.get(lib.cdp_uvu_vector_path(), "unknown")


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


def _disabled() -> bool:
    return os.environ.get("CDP_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def load() -> Optional[ctypes.CDLL]:
    """Compile (when not cached) and load the kernel library once per process; None when it cannot be
    built here (the reason is warned once) or ``CDP_NATIVE=0``.

    Call it when a model is built or loaded: the forward pass uses :func:`loaded`, which never compiles.
    The cached library is loaded only when its content hash matches the sidecar written when it was
    built; otherwise it is rebuilt (atomically) first.  Later calls return the same library.
    """
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib = None
        if _disabled():
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


def loaded() -> Optional[ctypes.CDLL]:
    """The library :func:`load` loaded, or None (not loaded yet, unavailable or disabled); never compiles."""
    return _state.get("lib")


def load_isa(isa: str) -> ctypes.CDLL:
    """The library of build ``isa`` (compiled when missing), whatever :func:`load` chose; for tests and
    benchmarks that compare vector paths in one process.  Raises RuntimeError when this CPU cannot run it."""
    if isa not in available_isas():
        raise RuntimeError(f"build {isa}: this CPU runs {', '.join(available_isas())}")
    with _lock:
        builds = _state.setdefault("builds", {})
        if isa not in builds:
            builds[isa] = _bind(ctypes.CDLL(str(build(isa))))
        return builds[isa]


def entry(lib: ctypes.CDLL, dtype: torch.dtype):
    """The forward entry point for ``dtype`` (float32/float64) taking radial weight rows w [E, ≥ W + slack],
    or None for another dtype."""
    name = _ENTRIES["forward"].get(dtype)
    return None if name is None else getattr(lib, name)


def entry_table(lib: ctypes.CDLL, dtype: torch.dtype):
    """The forward entry point for ``dtype`` that evaluates the radial weights from a piecewise-cubic table
    (:class:`cdp.nn.radial_table.KnotTable`'s layout) per edge, or None for another dtype.

    Arguments: ``(e0, e1, src, dst, y, y_stride, r, knots, n_intervals, inv_h, n_cols, x, x_stride, acc,
    acc_stride, n_paths, paths, pairs, m_j, c)``; r [E] edge lengths (Å, the dtype), knots [n_intervals + 1,
    2, n_cols] contiguous (values and h·slopes), inv_h = n_intervals / r_max (float).  The paths table's weight offsets are columns
    of the table (:func:`table_paths`).  Returns 0, 1 (a mul above ``MAX_MUL``), 2 (out of memory) or 3
    (a path's columns beyond ``n_cols``).
    """
    name = _ENTRIES["table"].get(dtype)
    return None if name is None else getattr(lib, name)


def entry_receivers(lib: ctypes.CDLL, dtype: torch.dtype):
    """The receiver-major table entry point for ``dtype`` (float32/float64), or None for another dtype.

    Arguments: ``(r0, r1, ptr, src, y, y_stride, r, coef, n_intervals, inv_h, n_cols, x, x_stride, acc,
    path_acc, n_paths, paths, pairs, m_j, c)``: the sum of :func:`entry_table` over the edges of receivers
    [r0, r1) (``ptr`` [R + 1] int64 edge offsets, edges sorted by receiver), with path p's channel u of
    row m_k of receiver rr written at ``acc[path_acc[p, 0] + rr * path_acc[p, 1] + m_k * row_stride_p + u]``
    (``path_acc`` [P, 2] int64; the caller picks the layout).  Every path's values of those receivers are
    written, so ``acc`` need not be zeroed.  AVX-512/AVX2 builds (float32) keep each output row in
    registers across the receiver's edges; other builds and float64 run the same order in plain C.
    Returns as :func:`entry_table`.
    """
    name = _ENTRIES["receivers"].get(dtype)
    return None if name is None else getattr(lib, name)


def entry_backward(lib: ctypes.CDLL, dtype: torch.dtype):
    """The backward entry point for ``dtype`` (float32/float64), or None."""
    name = _ENTRIES["backward"].get(dtype)
    return None if name is None else getattr(lib, name)


def table_paths(paths: torch.Tensor, w_perm: torch.Tensor) -> torch.Tensor:
    """The kernel's paths table [P, 8] (int32) with each path's weight offset moved from the packed weight
    row (block order) to the radial network's output column: ``w_perm[w_off]`` (``w_perm``: packed column →
    network column; each path's mul columns are contiguous in both orders, which is checked)."""
    out = paths.clone()
    w_off, mul = paths[:, 3].long(), paths[:, 0].long()
    first = w_perm[w_off]
    for p in range(paths.shape[0]):
        cols = w_perm[w_off[p] : w_off[p] + mul[p]]
        if not torch.equal(cols, first[p] + torch.arange(int(mul[p]), dtype=cols.dtype)):
            raise ValueError(f"path {p}: its weights are not contiguous in the radial network's output")
    out[:, 3] = first.to(out.dtype)
    return out.contiguous()
