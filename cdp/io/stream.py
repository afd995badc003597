"""Write a predicted grid while it is computed: each probe batch goes to the file as it comes.

A full grid of a large cell (10⁸ points) would otherwise be held in memory twice (values, then text).
Here only one batch and a few formatted lines exist at a time: CHGCAR batches are requested in its own
order (x fastest) and the magnetisation block, which follows the whole density block, is parked in a
temporary binary file beside the output; cube and npy take C order.  The file is written to a temporary
name and renamed at the end, so an error (or Ctrl-C) mid-grid leaves no partial file.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Tuple

import lz4.frame
import numpy as np

from cdp.core.atomic import atomic_write, check_free_space
from cdp.core.errors import CdpError
from cdp.core.grid import DensityGrid, grid_frame
from cdp.core.validate import validate_atoms
from cdp.io import record_pbc
from cdp.io._text import check_finite
from cdp.io.chgcar import chgcar_dims_line, chgcar_header, format_chgcar_values, verbatim_block
from cdp.io.compression import split_compression
from cdp.io.cube import cube_header, cube_value_scale, format_cube_rows

Chunks = Callable[[str], Iterable[Tuple[int, np.ndarray]]]  # order ("C" | "F") -> (start, values) batches
_PARK_BATCH = 1 << 20  # magnetisation values read back per step


class _Sink:
    """A binary writer compressing by codec (None, gzip, zlib, lz4, bzip2, xz), like cdp.io.compression."""

    def __init__(self, path: str, codec: Optional[str]):
        self._raw = open(path, "wb")
        self._zlib = None
        self._fh = self._raw
        if codec == "gzip":
            self._fh = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0, filename="")
        elif codec == "zlib":
            self._zlib = zlib.compressobj(6)
        elif codec == "bzip2":
            self._fh = bz2.BZ2File(self._raw, mode="wb", compresslevel=9)
        elif codec == "xz":
            self._fh = lzma.LZMAFile(self._raw, mode="wb", preset=6)
        elif codec == "lz4":
            self._fh = lz4.frame.open(self._raw, mode="wb")

    def write(self, data) -> None:
        if isinstance(data, str):
            data = data.encode("ascii")
        if self._zlib is not None:
            self._raw.write(self._zlib.compress(data))
        else:
            self._fh.write(data)

    def close(self) -> None:
        if self._zlib is not None:
            self._raw.write(self._zlib.flush())
        elif self._fh is not self._raw:
            self._fh.close()
        self._raw.close()


def _values(out: np.ndarray, spin: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    out = np.asarray(out, dtype=np.float64)
    return (out[:, 0], out[:, 1]) if spin else (out.reshape(-1), None)


def _progress(progress, k: int) -> None:
    if progress is not None:
        progress(k)


def _chgcar(sink: _Sink, name: str, atoms, frame: DensityGrid, chunks: Chunks, spin: bool,
            augmentation: Optional[str], spin_augmentation: Optional[str], progress, directory: Path) -> float:
    """CHGCAR: header, ρ·V five per line (x fastest), augmentation, then the parked magnetisation; returns Σρ."""
    shape = frame.values.shape
    volume = abs(float(np.linalg.det(np.asarray(frame.cell, dtype=np.float64))))
    sink.write(chgcar_header(atoms, frame.cell, frame.origin, shape, name,
                             keeps_augmentation=bool(augmentation or spin_augmentation)))
    total = 0.0
    pending = np.zeros(0)
    park = tempfile.TemporaryFile(dir=directory) if spin else None
    try:
        for _, out in chunks("F"):
            rho, mag = _values(out, spin)
            check_finite(rho, name, "density grid")
            total += float(rho.sum())
            pending = np.concatenate((pending, rho * volume))
            whole = pending.size - pending.size % 5  # five values per line across batch boundaries
            sink.write(format_chgcar_values(pending[:whole]))
            pending = pending[whole:]
            if park is not None:
                check_finite(mag, name, "magnetisation grid")
                park.write(np.ascontiguousarray(mag * volume, dtype="<f8").tobytes())
            _progress(progress, len(rho))
        if pending.size:
            sink.write(format_chgcar_values(pending))
        sink.write(verbatim_block(augmentation))
        if park is not None:
            sink.write(chgcar_dims_line(shape))
            park.seek(0)
            n, done = int(np.prod(shape)), 0
            while done < n:  # _PARK_BATCH is a multiple of 5: lines stay whole
                block = np.frombuffer(park.read(8 * min(_PARK_BATCH, n - done)), dtype="<f8")
                if block.size == 0:
                    raise CdpError(f"{name}: magnetisation scratch file ended early")
                sink.write(format_chgcar_values(block))
                done += block.size
            sink.write(verbatim_block(spin_augmentation))
    finally:
        if park is not None:
            park.close()
    return total


def _cube(sink: _Sink, name: str, atoms, frame: DensityGrid, chunks: Chunks, units: str, progress) -> float:
    """cube: header, then whole z-rows six values per line (C order); returns Σρ."""
    shape = frame.values.shape
    nz = int(shape[2])
    scale = cube_value_scale(units)
    sink.write(cube_header(atoms, frame.cell, frame.origin, shape, name, units))
    total = 0.0
    pending = np.zeros(0)
    for _, out in chunks("C"):
        rho, _ = _values(out, out.ndim == 2)
        check_finite(rho, name, "density grid")
        total += float(rho.sum())
        pending = np.concatenate((pending, rho * scale))
        whole = pending.size - pending.size % nz  # whole z-rows: each starts a new line
        sink.write(format_cube_rows(pending[:whole], nz))
        pending = pending[whole:]
        _progress(progress, len(rho))
    return total


def _npy(sink: _Sink, name: str, frame: DensityGrid, chunks: Chunks, spin: bool, progress) -> float:
    """npy: the version 1.0 header, then little-endian float64 in C order; returns Σρ."""
    shape = tuple(frame.values.shape) + ((2,) if spin else ())
    np.lib.format.write_array_header_1_0(sink, {"descr": "<f8", "fortran_order": False, "shape": shape})
    total = 0.0
    for _, out in chunks("C"):
        out = np.asarray(out, dtype=np.float64)
        check_finite(out, name, "density grid")
        total += float((out[:, 0] if spin else out).sum())
        sink.write(np.ascontiguousarray(out, dtype="<f8").tobytes())
        _progress(progress, len(out))
    return total


# bytes per grid value as written (lower bounds): CHGCAR " 0.12345678901E+00" (plus the magnetisation
# block and its float64 scratch copy with spin), cube "%13.5e", npy float64 per channel
_BYTES_PER_VALUE = {"chgcar": 18, "cube": 13, "npy": 8}


def grid_bytes(fmt: str, points: int, spin: bool = False) -> int:
    """Uncompressed size in bytes (a lower bound) of a grid of ``points`` values written as ``fmt``."""
    per = _BYTES_PER_VALUE.get(fmt, 8)
    if spin and fmt == "chgcar":
        per = 2 * per + 8
    elif spin and fmt == "npy":
        per *= 2
    return int(points) * per


def stream_grid(path, fmt: str, atoms, frame: DensityGrid, chunks: Chunks, spin: bool = False,
                augmentation: Optional[str] = None, spin_augmentation: Optional[str] = None,
                units: str = "bohr", progress: Optional[Callable[[int], None]] = None) -> float:
    """Write the grid of ``frame``'s geometry from ``chunks(order)`` batches to ``path`` atomically.

    ``fmt`` is "chgcar", "cube" or "npy" (CHGCAR and cube compressed by a .gz/.lz4/.zz/.bz2/.xz suffix).  A cube
    holds the total density only.  Batches must cover the flat grid in order.  Returns the number of
    electrons (Σρ·dV of the total density).
    """
    path = Path(path)
    name = str(path)
    if fmt not in ("chgcar", "cube", "npy"):
        raise CdpError(f"{name}: cannot stream format '{fmt}' (chgcar, cube or npy)")
    codec = split_compression(path.name)[1] if fmt != "npy" else None
    result: list = []
    expected = int(np.prod(frame.values.shape))

    def counted(order: str) -> Iterator[Tuple[int, np.ndarray]]:
        seen = 0
        for start, out in chunks(order):
            if start != seen:
                raise CdpError(f"{name}: grid batches out of order (batch at {start}, expected {seen})")
            seen += len(out)
            yield start, out
        if seen != expected:
            raise CdpError(f"{name}: grid batches covered {seen} of {expected} points")

    def write(tmp: str) -> None:
        sink = _Sink(tmp, codec)
        try:
            if fmt == "chgcar":
                result.append(_chgcar(sink, name, atoms, frame, counted, spin, augmentation, spin_augmentation,
                                      progress, path.parent if str(path.parent) else Path(".")))
            elif fmt == "cube":
                result.append(_cube(sink, name, atoms, frame, counted, units, progress))
            else:
                result.append(_npy(sink, name, frame, counted, spin, progress))
        finally:
            sink.close()

    validate_atoms(atoms, name=name)
    check_free_space(path, grid_bytes(fmt, expected, spin), "the grid (uncompressed)")
    atomic_write(path, write)
    if fmt != "npy":  # npy grids carry their own sidecar (cdp predict writes it)
        record_pbc(path, frame.pbc if frame.pbc is not None else atoms.pbc)
    voxel = abs(float(np.linalg.det(np.asarray(frame.cell, dtype=np.float64)))) / expected
    return result[0] * voxel


def stream_predicted_grid(predictor, path, fmt: str, atoms, shape, cell=None, origin=None,
                          probe_batch: Optional[int] = None, augmentation: Optional[str] = None,
                          spin_augmentation: Optional[str] = None,
                          progress: Optional[Callable[[int], None]] = None) -> float:
    """Predict ``atoms``' density on grid ``shape`` with ``predictor`` and stream it into ``path``.

    Memory holds the atom features and one probe batch, whatever the grid size.  Returns the electrons.
    """
    frame = grid_frame(atoms, shape, cell, origin)
    spin = bool(getattr(predictor, "spin", False))

    def chunks(order: str):
        for start, out in predictor.iter_grid(atoms, frame.values.shape, frame.cell, frame.origin,
                                              probe_batch=probe_batch, order=order):
            yield start, (out[:, 0] if (spin and fmt == "cube") else out)

    return stream_grid(path, fmt, atoms, frame, chunks, spin=spin and fmt != "cube", augmentation=augmentation,
                       spin_augmentation=spin_augmentation, progress=progress)
