"""Gaussian cube text: Bohr lengths and e/Bohr³ values (z fastest); e/Å³ and Å inside cdp.

Grid point (i, j, k) sits at ``origin + i·v1 + j·v2 + k·v3`` and the grid's cell is ``n_i·v_i``. A
negative voxel count means that axis is given in Å (Gaussian convention). ``units="angstrom"`` reads
values already in e/Å³ (DeepDFT's streaming predictor writes such cubes). Orbital cubes (negative atom
count) and multi-value cubes are refused. Periodicity is not stored: readers default to periodic.
castep2cube cubes (named in a comment line) repeat the first plane as the last on every axis: the
reader drops those end planes, so the cell and grid are the periodic ones.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from ase import Atoms
from ase.units import Bohr

from cdp.core.errors import CdpError
from cdp.core.grid import DensityGrid
from cdp.core.validate import MAX_Z
from cdp.io._text import TextSource, check_finite, check_grid_size, check_room, snippet
from cdp.io.compression import open_source

KIND = "cube"
UNITS = ("bohr", "angstrom")


def _check_units(units: str, name: str) -> str:
    u = str(units).lower()
    if u not in UNITS:
        raise CdpError(f"{name}: units must be 'bohr' (e/Bohr³, the cube standard) or 'angstrom' (e/Å³), got {units!r}")
    return u


def _is_castep(first: str, second: str) -> bool:
    """castep2cube writes the periodic end points (the last plane repeats the first on every axis).

    Recognised by the producer named in the comment lines (as ase.io.cube does), never by the values.
    """
    return "castep2cube" in (first + " " + second).lower()


def read_cube(source, name: str, units: str = "bohr") -> Tuple[Atoms, DensityGrid]:
    """Read a cube from a :class:`cdp.io.compression.Source` into atoms (pbc True) and a grid in e/Å³.

    A castep2cube file (named in a comment line) repeats the first plane as the last on each axis; those
    end planes are dropped and the cell spans n−1 voxels per axis.
    """
    units = _check_units(units, name)
    lines = TextSource(source, name, KIND)
    lines.start()
    first = lines.next("first comment line")
    second = lines.next("second comment line")
    if "OUTER LOOP" in second.upper():
        order = [w[0] for w in second.upper().replace(",", " ").split()[2::3]][:3]
        if order and order != ["X", "Y", "Z"]:
            raise CdpError(f"{name}: loop order {second.strip()!r} is not supported (expected X outer, Z inner)")
    castep = _is_castep(first, second)
    head = lines.next("atom count and origin")
    fields = head.split()
    try:
        natoms = int(fields[0])
        origin = np.array([float(f) for f in fields[1:4]])
        nval = int(fields[4]) if len(fields) > 4 else 1
        if origin.size != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise CdpError(f"{name}: line 3 is not 'natoms x0 y0 z0': {snippet(head)}") from None
    if natoms < 0:
        raise CdpError(f"{name}: negative atom count: orbital cube files are not supported")
    if natoms == 0:
        raise CdpError(f"{name}: the structure has no atoms")
    if nval != 1:
        raise CdpError(f"{name}: {nval} values per grid point; only single-valued density cubes are supported")

    dims, axes, angstrom_axes = [], [], []
    for ax in range(3):
        line = lines.next(f"grid axis {ax + 1}")
        f = line.split()
        try:
            count = int(f[0])
            vec = [float(v) for v in f[1:4]]
            if len(vec) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise CdpError(f"{name}: line {lines.lineno} is not 'n vx vy vz': {snippet(line)}") from None
        if count == 0:
            raise CdpError(f"{name}: grid axis {ax + 1} has zero points")
        dims.append(abs(count))
        axes.append(vec)
        angstrom_axes.append(count < 0)
    length = 1.0 if all(angstrom_axes) else Bohr
    if any(angstrom_axes) and not all(angstrom_axes):
        raise CdpError(f"{name}: mixed Bohr/Å axis units (some voxel counts negative)")
    if castep and min(dims) < 2:
        raise CdpError(f"{name}: castep2cube grid {dims} repeats its end points, so each axis needs 2 or more")
    voxels = np.array(axes) * length
    origin = origin * length
    nx, ny, nz = dims
    n = nx * ny * nz
    lines.check_atoms(natoms, 10, "atom count")

    z = np.empty(natoms, dtype=np.int64)
    pos = np.empty((natoms, 3), dtype=np.float64)
    for i in range(natoms):
        line = lines.next(f"line of atom {i + 1}")
        f = line.split()
        try:
            if len(f) != 5:
                raise ValueError
            zf = float(f[0])
            pos[i] = [float(v) for v in f[2:5]]
        except ValueError:
            raise CdpError(
                f"{name}: line {lines.lineno} is not 'Z charge x y z' for atom {i + 1} of {natoms} "
                f"(atom count disagrees with the atom lines?): {snippet(line)}"
            ) from None
        if not np.isfinite(zf) or zf != int(zf):
            raise CdpError(f"{name}: line {lines.lineno}: atomic number {f[0]!r} is not an integer")
        if not 0 < zf <= MAX_Z:
            raise CdpError(f"{name}: line {lines.lineno}: unknown element (atomic number {f[0]})")
        z[i] = int(zf)
    positions = pos * length
    periodic_dims = np.array(dims, dtype=np.float64) - (1.0 if castep else 0.0)
    cell = voxels * periodic_dims[:, None]

    if lines.skip_blank():
        raise CdpError(f"{name}: header only, no density values after the atom lines")
    check_room(n, lines.remaining(), name, "density grid")
    check_grid_size(n, name, "density grid", copies=2 if castep else 1)
    vals = np.empty(n, dtype=np.float64)
    lines.read_numbers(vals, "density grid")
    if not lines.skip_blank():
        raise CdpError(
            f"{name}: density grid holds more than the header's {nx}x{ny}x{nz} grid of {n} values "
            f"(grid size or atom count wrong?)"
        )
    values = vals.reshape(nx, ny, nz)
    if castep:
        values = np.ascontiguousarray(values[:-1, :-1, :-1])
    if units == "bohr":
        values /= Bohr**3
    check_finite(values, name, "density grid")
    atoms = Atoms(numbers=z, positions=positions, cell=cell, pbc=True)
    grid = DensityGrid(cell=cell, values=values, origin=origin, pbc=np.ones(3, dtype=bool))
    return atoms, grid


def parse_cube(text: str, name: str, units: str = "bohr") -> Tuple[Atoms, DensityGrid]:
    """Parse cube text into atoms (pbc True) and a grid in e/Å³."""
    return read_cube_bytes(text.encode("utf-8"), name, units=units)


def read_cube_bytes(data: bytes, name: str, units: str = "bohr") -> Tuple[Atoms, DensityGrid]:
    """Parse (uncompressed) cube bytes."""
    with open_source(data=data, name="x.cube") as source:
        source.name = name
        return read_cube(source, name, units=units)


def cube_header(atoms: Atoms, cell, origin, shape, name: str = "cube", units: str = "bohr",
                comment: Optional[str] = None) -> str:
    """Cube text before the values: comment lines, origin, voxel vectors (Bohr) and atoms."""
    units = _check_units(units, name)
    nx, ny, nz = (int(n) for n in shape)
    voxels = np.asarray(cell, dtype=np.float64) / np.array([nx, ny, nz], dtype=np.float64)[:, None] / Bohr
    origin = np.asarray(origin, dtype=np.float64) / Bohr
    unit_text = "e/Bohr^3" if units == "bohr" else "e/Angstrom^3"
    out = [
        (comment or f"cdp density {atoms.get_chemical_formula(mode='hill')}, values in {unit_text}")
        .replace("\n", " ") + "\n",
        "OUTER LOOP: X, MIDDLE LOOP: Y, INNER LOOP: Z\n",
        "%5d %20.12f %20.12f %20.12f\n" % (len(atoms), *origin),
    ]
    for count, vec in zip((nx, ny, nz), voxels):
        out.append("%5d %20.12f %20.12f %20.12f\n" % (count, *vec))
    for zz, p in zip(atoms.numbers, np.asarray(atoms.positions, dtype=np.float64) / Bohr):
        out.append("%5d %20.12f %20.12f %20.12f %20.12f\n" % (zz, float(zz), *p))
    return "".join(out)


def cube_value_scale(units: str) -> float:
    """Factor from e/Å³ to the file's value unit."""
    return Bohr**3 if units == "bohr" else 1.0


def format_cube_rows(flat: np.ndarray, nz: int) -> str:
    """Whole z-rows of values (len(flat) a multiple of nz), six per line, each row starting a new line."""
    one = " %15.8E"
    full, rest = divmod(nz, 6)
    row = (one * 6 + "\n") * full + ((one * rest + "\n") if rest else "")
    return (row * (flat.size // nz)) % tuple(flat.tolist())


def format_cube(
    atoms: Atoms, grid: DensityGrid, name: str = "cube", units: str = "bohr", comment: Optional[str] = None
) -> str:
    """Cube text: Bohr lengths, values in e/Bohr³ (``units="angstrom"``: e/Å³), six per line, z fastest."""
    units = _check_units(units, name)
    values = np.asarray(grid.values, dtype=np.float64)
    if values.ndim != 3 or min(values.shape) < 1:
        raise CdpError(f"{name}: grid values must be a non-empty 3-D array, got shape {values.shape}")
    check_finite(values, name, "density grid")
    if grid.spin is not None:
        raise CdpError(f"{name}: a cube file cannot hold the spin density; write a CHGCAR instead")
    header = cube_header(atoms, grid.cell, grid.origin, values.shape, name, units, comment)
    return header + format_cube_rows((values * cube_value_scale(units)).reshape(-1), values.shape[2])
