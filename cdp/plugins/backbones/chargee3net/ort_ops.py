"""onnxruntime operator library of the ChargE3Net kernel (kernels/ort_ops.cc): ``ai.cdp.UvuConvTable``.

An ONNX decoder exported with cdp's operator (``cdp export --format onnx --ops cdp``) computes each probe
convolution's aggregate with the same fused kernel as the PyTorch fast backend, instead of the dense form
that writes every edge's tensor-product output.  The library holds the kernel compiled once per vector path
(AVX-512, AVX2, plain C: kernels/ort_isa.c renames each copy) and picks one at load from the CPU, so one
file serves every x86-64 machine.  It is compiled from the package's sources with the system C and C++
compilers against the vendored onnxruntime headers (``cdp/export/third_party/onnxruntime``), cached like
the kernel library (``$CDP_CACHE_DIR``, atomic writes, SHA-256 recorded beside it and checked before every
load).  cdp registers only libraries it built itself; an export directory's copy is for C++ deployments.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import List

from cdp.core.atomic import atomic_write, atomic_write_text
from cdp.core.operators import ort_library_builder
from cdp.plugins.backbones.chargee3net import native

DOMAIN = "ai.cdp"
OP = "UvuConvTable"
KERNELS = native.SOURCE.parent
SOURCES = (KERNELS / "ort_ops.cc", KERNELS / "ort_isa.c", native.SOURCE)
# the onnxruntime headers vendored with cdp (also the C++ example's): cdp/export/third_party, found by path
HEADERS = Path(__file__).resolve().parents[3] / "export" / "third_party" / "onnxruntime" / "include"
# the kernel copies the library holds: (name in ort_isa.c, compiler flags); non-x86 machines build all
# three as plain C (the dispatcher then always picks the plain copy)
X86_COPIES = (("avx512", native.X86_ISAS["avx512"]), ("avx2", native.X86_ISAS["avx2"]), ("generic", ("-DCDP_PLAIN",)))
_lock = threading.Lock()


def find_cxx() -> str:
    import os  # noqa: PLC0415  (only here: the environment's CXX)

    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (set CXX)")
    return compiler


def _copies() -> tuple:
    if native.machine() == "x86_64":
        return X86_COPIES
    return tuple((name, ("-DCDP_PLAIN",)) for name, _ in X86_COPIES)


def _commands(cc: str, cxx: str, work: Path, output: str) -> List[List[str]]:
    cmds, objects = [], []
    for name, flags in _copies():
        obj = str(work / f"kernel_{name}.o")
        cmds.append([cc, "-O3", *flags, f"-DCDP_ORT_ISA={name}", "-fPIC", "-std=c99", "-c", str(SOURCES[1]), "-o", obj])
        objects.append(obj)
    op_obj = str(work / "ort_ops.o")
    cmds.append([cxx, "-O2", "-std=c++17", "-fPIC", "-fvisibility=hidden", f"-I{HEADERS}", "-c", str(SOURCES[0]), "-o", op_obj])
    cmds.append([cxx, "-shared", "-fPIC", op_obj, *objects, "-o", output])
    return cmds


def library_path(cc: str, cxx: str) -> Path:
    """Cache file of the library: keyed by the sources, the headers, both compilers and their versions."""
    parts = [hashlib.sha256(p.read_bytes()).hexdigest() for p in SOURCES]
    parts += [hashlib.sha256(h.read_bytes()).hexdigest() for h in sorted(HEADERS.glob("*.h"))]
    parts += [cc, native.compiler_version(cc), cxx, native.compiler_version(cxx), native.machine()]
    parts += [" ".join(c) for c in _commands("cc", "c++", Path("w"), "out")]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return native.cache_dir() / f"cdp_ort_ops-{native.machine()}-{key}.so"


@ort_library_builder
def build() -> Path:
    """The verified cached operator library, compiled when missing or not matching its recorded hash.
    Raises RuntimeError (one line) without compilers or when a build step fails."""
    with _lock:
        cc, cxx = native.find_compiler(), find_cxx()
        target = library_path(cc, cxx)
        if native.verified(target):
            return target
        digest: list = []

        def run(tmp: str) -> None:
            with tempfile.TemporaryDirectory(prefix="cdp-ort-ops-") as work:
                for cmd in _commands(cc, cxx, Path(work), tmp):
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                    if proc.returncode != 0:
                        last = proc.stderr.strip().splitlines()[-1:] or [str(proc.returncode)]
                        raise RuntimeError(f"building the onnxruntime operator library failed: {last[0]}")
            digest.append(native._sha256(Path(tmp)))

        atomic_write(target, run)
        atomic_write_text(native._sidecar(target), f"{digest[0]}  {target.name}\n")
        if not native.verified(target):
            raise RuntimeError(f"{target}: the freshly built library does not match its recorded hash")
        return target
