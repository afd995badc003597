"""Density file I/O: VASP CHGCAR and Gaussian cube, optionally gzip/lz4/zlib/bzip2/xz-compressed.

``read(path) -> (ase.Atoms, DensityGrid)`` and ``write(path, atoms, grid)``; the format comes from the
file name (``format=`` overrides) and compression from its suffix (``.gz``, ``.lz4``, ``.zz``, ``.bz2``,
``.xz``). ``.vasp`` names and ``format="vasp"`` mean a POSCAR structure (ase's convention), not a density.
Files are decompressed and parsed through a bounded window, so memory holds the grid and a few MiB.

Periodicity: neither format stores it. Both default to periodic (``pbc=True``: the grid's cell is taken
as the periodic cell, which is right for CHGCARs and harmless for molecule cubes with vacuum). A sidecar
``<file>.json`` holding ``{"pbc": false}`` or ``{"pbc": [true, true, false]}`` (or a dataset manifest
passing ``pbc=``) overrides the default, and an explicit ``pbc=`` argument overrides both. The returned
atoms and grid carry the same pbc.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from ase import Atoms

from cdp.core.errors import CdpError
from cdp.core.grid import DensityGrid
from cdp.core.validate import closest_pair, validate_atoms
from cdp.io.chgcar import format_chgcar, parse_chgcar, read_chgcar
from cdp.io.compression import open_source, split_compression, write_file_bytes
from cdp.io.cube import format_cube, parse_cube, read_cube
from cdp.io.sidecar import parse_pbc, read_sidecar, sidecar_candidates, write_sidecar_pbc

FORMATS = ("chgcar", "cube")

__all__ = [
    "FORMATS",
    "detect_format",
    "read",
    "read_bytes",
    "write",
    "describe",
    "parse_chgcar",
    "parse_cube",
    "format_chgcar",
    "format_cube",
    "read_sidecar",
]


def _poscar(name) -> CdpError:
    return CdpError(
        f"{name}: a .vasp file (format 'vasp') is a POSCAR structure, not a density; name a density file "
        f"CHGCAR/CHG/*.chgcar or give the format (--format chgcar; format='chgcar' in Python)"
    )


def detect_format(name, format: Optional[str] = None) -> str:
    """'chgcar' or 'cube' from a file name (compression suffix ignored) or an explicit ``format``.

    ``.vasp`` and ``format="vasp"`` are POSCAR structures (ase's convention) and raise CdpError.
    """
    if format is not None:
        fmt = str(format).lower()
        if fmt == "vasp":
            raise _poscar(name)
        if fmt == "chg":
            fmt = "chgcar"
        if fmt not in FORMATS:
            raise CdpError(f"{name}: unknown density format {format!r} (use 'chgcar' or 'cube')")
        return fmt
    base = split_compression(Path(str(name)).name)[0]
    low = base.lower()
    if low.endswith(".vasp"):
        raise _poscar(name)
    if low.endswith(".cube") or low.endswith(".cub"):
        return "cube"
    if low.endswith(".chgcar") or any(k in base.upper() for k in ("CHGCAR", "CHG", "AECCAR", "PARCHG")):
        return "chgcar"
    raise CdpError(f"{name}: not a density file name (*.cube, CHGCAR, CHG, *.chgcar); give the format if it is one "
                   f"(--format cube|chgcar; format='cube' in Python)")


def _finish(atoms: Atoms, grid: DensityGrid, name: str, pbc) -> Tuple[Atoms, DensityGrid]:
    if pbc is not None:
        pbc = parse_pbc(pbc if not isinstance(pbc, np.ndarray) else [bool(v) for v in pbc], name)
        atoms.pbc = pbc
        grid.pbc = pbc.copy()
    with np.errstate(all="ignore"):
        volume = abs(float(np.linalg.det(np.asarray(grid.cell, dtype=np.float64))))
    if not np.isfinite(volume) or volume < 1e-8:
        raise CdpError(f"{name}: singular grid cell (volume {volume:.3g} Å³)")
    validate_atoms(atoms, name=name)
    return atoms, grid


def _parse(source, fmt: str, name: str, units: str, frame) -> Tuple[Atoms, DensityGrid, int]:
    with np.errstate(all="ignore"):  # overflowing or NaN input is refused by explicit checks, not warnings
        return _parse_format(source, fmt, name, units, frame)


def _parse_format(source, fmt: str, name: str, units: str, frame) -> Tuple[Atoms, DensityGrid, int]:
    if fmt == "chgcar":
        return read_chgcar(source, name, frame=frame)
    if frame not in (0, -1):
        raise CdpError(f"{name}: a cube file holds one frame; frame {frame} does not exist")
    return read_cube(source, name, units=units) + (1,)


def read_bytes(
    data: bytes, name: str, format: Optional[str] = None, pbc=None, units: str = "bohr", frame: int = -1
) -> Tuple[Atoms, DensityGrid]:
    """Parse in-memory file bytes (e.g. a tar member); ``name`` gives the format and compression."""
    name = str(name)
    fmt = detect_format(name, format)
    with open_source(data=data, name=name) as source:
        atoms, grid, _ = _parse(source, fmt, name, units, frame)
    return _finish(atoms, grid, name, pbc)


def _read(path, format, pbc, units, frame) -> Tuple[Atoms, DensityGrid, int]:
    path = Path(path)
    name = str(path)
    fmt = detect_format(name, format)
    if pbc is None:
        pbc = read_sidecar(path).get("pbc")
    with open_source(path) as source:
        atoms, grid, nframes = _parse(source, fmt, name, units, frame)
    return _finish(atoms, grid, name, pbc) + (nframes,)


def read(path, format: Optional[str] = None, pbc=None, units: str = "bohr", frame: int = -1) -> Tuple[Atoms, DensityGrid]:
    """Read a CHGCAR or cube file → ``(atoms, grid)`` with the grid in e/Å³.

    ``pbc``: None uses the sidecar ``<file>.json`` if present, else periodic; a bool or three bools
    override. ``units`` (cube only): ``"bohr"`` for standard e/Bohr³ values, ``"angstrom"`` for cubes that
    hold e/Å³ (DeepDFT predictions). ``frame``: the ionic step of a multi-step CHG/CHGCAR (Python
    indexing, default the last). Bad or oversized input raises CdpError.
    """
    return _read(path, format, pbc, units, frame)[:2]


def write(
    path,
    atoms: Atoms,
    grid: DensityGrid,
    format: Optional[str] = None,
    units: str = "bohr",
    sidecar: bool = True,
) -> None:
    """Write ``atoms`` and ``grid`` (e/Å³) atomically; compression by suffix.

    CHGCAR atoms are grouped by species in first-appearance order. With ``sidecar`` (default), a
    non-periodic pbc (from ``grid.pbc`` else ``atoms.pbc``) is recorded in ``<file>.json``, and an
    existing sidecar is updated so that it never contradicts the file.
    """
    path = Path(path)
    name = str(path)
    fmt = detect_format(name, format)
    validate_atoms(atoms, name=name)
    if fmt == "chgcar":
        text = format_chgcar(atoms, grid, name=name)
    else:
        text = format_cube(atoms, grid, name=name, units=units)
    write_file_bytes(path, text.encode("utf-8"))
    if sidecar:
        record_pbc(path, grid.pbc if grid.pbc is not None else atoms.pbc)


def record_pbc(path, pbc) -> None:
    """Keep ``<file>.json`` true to a written density file: write it for a non-periodic pbc, update an existing one."""
    path = Path(path)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1)
    pbc = np.broadcast_to(pbc, (3,)) if pbc.size in (1, 3) else np.ones(3, dtype=bool)
    if not pbc.all() or any(c.is_file() for c in sidecar_candidates(path)):
        write_sidecar_pbc(path, pbc)


def describe(path, format: Optional[str] = None, pbc=None, units: str = "bohr", frame: int = -1) -> dict:
    """Summary of a density file (structure, grid, electron count, density range, spin, steps) as a JSON-able dict."""
    atoms, grid, nframes = _read(path, format, pbc, units, frame)
    cell = np.asarray(grid.cell, dtype=np.float64)
    shape = list(grid.shape)
    spacing = (np.linalg.norm(cell, axis=1) / np.array(shape)).tolist()
    info = {
        "file": str(path),
        "format": detect_format(str(path), format),
        "formula": atoms.get_chemical_formula(mode="hill"),
        "natoms": len(atoms),
        "cell": cell.tolist(),
        "pbc": [bool(v) for v in atoms.pbc],
        "volume": abs(float(np.linalg.det(cell))),
        "grid_shape": shape,
        "grid_points": int(np.prod(shape)),
        "spacing": spacing,
        "origin": np.asarray(grid.origin, dtype=np.float64).tolist(),
        "electrons": grid.electrons,
        "density_min": float(grid.values.min()),
        "density_max": float(grid.values.max()),
        "spin": grid.spin is not None,
        "augmentation": grid.augmentation is not None,
        "frames": nframes,
        "frame": int(frame) if int(frame) >= 0 else nframes + int(frame),
        "noncollinear": grid.magnetisation is not None,
    }
    pair = closest_pair(atoms)
    info["closest_pair"] = None if pair is None else {
        "atoms": [pair.i, pair.j], "symbols": [atoms.get_chemical_symbols()[k] for k in (pair.i, pair.j)],
        "distance": pair.distance, "image": pair.image, "text": pair.describe(atoms.get_chemical_symbols())}
    if grid.spin is not None:
        info["magnetisation"] = float(grid.spin.sum(dtype=np.float64) * grid.voxel_volume)
        info["spin_min"] = float(grid.spin.min())
        info["spin_max"] = float(grid.spin.max())
    if grid.magnetisation is not None:
        total = grid.magnetisation.sum(axis=(1, 2, 3), dtype=np.float64) * grid.voxel_volume
        info["magnetisation_vector"] = [float(v) for v in total]
    return info
