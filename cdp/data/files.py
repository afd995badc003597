"""Density files for datasets: CHGCAR / cube, optionally compressed, read from paths or bytes, written atomically.

Uses ``cdp.io.read`` / ``cdp.io.write`` when that module provides them; otherwise (and for in-memory
members of tar archives) ASE's CHGCAR and cube code with cdp's compression suffixes
(``.gz`` gzip, ``.lz4`` lz4-frame, ``.zz`` zlib).
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
import zlib
from typing import Optional, Tuple

import numpy as np

from cdp.core.types import CdpError, DensityGrid

BOHR = 0.52917721092
COMPRESSIONS = (".gz", ".lz4", ".zz")


def split_compression(name: str) -> Tuple[str, Optional[str]]:
    """(``name`` without a compression suffix, the suffix or None)."""
    low = name.lower()
    for suf in COMPRESSIONS:
        if low.endswith(suf):
            return name[: -len(suf)], suf
    return name, None


def density_kind(name: str) -> Optional[str]:
    """``'chgcar'``, ``'cube'`` or None, from a file name (compression suffix ignored)."""
    base = os.path.basename(split_compression(name)[0]).lower()
    if base.endswith(".cube"):
        return "cube"
    if "chgcar" in base or base.endswith(".vasp") or base.startswith("chg") or base.endswith(".chg"):
        return "chgcar"
    return None


def decompress(data: bytes, suffix: Optional[str], name: str = "file") -> bytes:
    """Undo one layer of compression named by ``suffix``."""
    try:
        if suffix == ".gz":
            return gzip.decompress(data)
        if suffix == ".zz":
            return zlib.decompress(data)
        if suffix == ".lz4":
            import lz4.frame

            return lz4.frame.decompress(data)
    except Exception as exc:  # corrupt stream: zlib.error, OSError, RuntimeError (lz4), EOFError
        raise CdpError(f"{name}: cannot decompress ({suffix[1:]}): {exc}") from exc
    return data


def compress(data: bytes, suffix: Optional[str]) -> bytes:
    """Apply the compression named by ``suffix`` (None: unchanged).  gzip mtime is 0 for reproducible files."""
    if suffix == ".gz":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if suffix == ".zz":
        return zlib.compress(data, 9)
    if suffix == ".lz4":
        import lz4.frame

        return lz4.frame.compress(data)
    return data


def _parse_chgcar(text: bytes, name: str):
    from ase.calculators.vasp import VaspChargeDensity

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "CHGCAR")
        with open(path, "wb") as fh:
            fh.write(text)
        vcd = VaspChargeDensity(path)
    if not vcd.chg:
        raise CdpError(f"{name}: no density data found in the CHGCAR")
    atoms = vcd.atoms[-1]
    values = np.asarray(vcd.chg[-1], dtype=np.float64)
    spin = np.asarray(vcd.chgdiff[-1], dtype=np.float64) if vcd.chgdiff else None
    grid = DensityGrid(cell=np.array(atoms.cell.array, dtype=np.float64), values=values, spin=spin)
    return atoms, grid


def _parse_cube(text: bytes, name: str):
    from ase.io.cube import read_cube

    data = read_cube(io.StringIO(text.decode("ascii", errors="strict")))
    atoms = data["atoms"]
    values = np.asarray(data["data"], dtype=np.float64) / BOHR**3  # e/Bohr³ → e/Å³
    shape = np.array(values.shape)
    spacing = np.asarray(data["spacing"], dtype=np.float64)
    cell = spacing * shape[:, None]
    grid = DensityGrid(cell=cell, values=values, origin=np.asarray(data["origin"], dtype=np.float64))
    return atoms, grid


def parse_density(data: bytes, name: str):
    """(ase.Atoms, DensityGrid) from the bytes of a possibly compressed CHGCAR or cube file named ``name``."""
    base, suffix = split_compression(name)
    kind = density_kind(name)
    if kind is None:
        raise CdpError(f"{name}: not a CHGCAR or .cube file name")
    raw = decompress(data, suffix, name)
    try:
        atoms, grid = _parse_chgcar(raw, name) if kind == "chgcar" else _parse_cube(raw, name)
    except CdpError:
        raise
    except Exception as exc:  # malformed text: ValueError, IndexError, UnicodeDecodeError, ...
        raise CdpError(f"{name}: cannot read {kind} data: {type(exc).__name__}: {exc}") from exc
    if grid.values.ndim != 3 or grid.values.size == 0 or not np.all(np.isfinite(grid.values)):
        raise CdpError(f"{name}: density grid is empty or not finite")
    return atoms, grid


def read_density(path: str):
    """(ase.Atoms, DensityGrid) of a CHGCAR/cube file on disk (compression from the suffix)."""
    try:
        import cdp.io as cio

        reader = getattr(cio, "read", None)
    except ImportError:  # pragma: no cover
        reader = None
    if reader is not None:
        try:
            out = reader(path)
        except CdpError:
            raise
        except Exception as exc:
            raise CdpError(f"{path}: cannot read density: {type(exc).__name__}: {exc}") from exc
        if isinstance(out, tuple) and len(out) == 2:
            return out
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CdpError(f"{path}: cannot open: {exc.strerror}") from exc
    return parse_density(data, path)


def chgcar_bytes(atoms, grid: DensityGrid) -> bytes:
    """CHGCAR text (values ρ·V, x fastest) of a density in e/Å³, via ASE."""
    from ase.calculators.vasp import VaspChargeDensity

    vcd = VaspChargeDensity(None)
    at = atoms.copy()
    at.set_cell(grid.cell)
    vcd.atoms = [at]
    vcd.chg = [np.asarray(grid.values, dtype=np.float64)]
    if grid.spin is not None:
        vcd.chgdiff = [np.asarray(grid.spin, dtype=np.float64)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "CHGCAR")
        vcd.write(path, format="chgcar")
        with open(path, "rb") as fh:
            return fh.read()


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".cdp-tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_chgcar(path: str, atoms, grid: DensityGrid) -> None:
    """Atomically write a CHGCAR, compressed by the suffix of ``path`` (``.gz``, ``.lz4``, ``.zz``)."""
    _, suffix = split_compression(path)
    atomic_write_bytes(path, compress(chgcar_bytes(atoms, grid), suffix))


def clean_temporaries(directory: str) -> int:
    """Remove temporary files left by an interrupted atomic write; returns how many were removed."""
    n = 0
    if os.path.isdir(directory):
        for f in os.listdir(directory):
            if f.startswith(".") and f.endswith(".cdp-tmp"):
                os.unlink(os.path.join(directory, f))
                n += 1
    return n
