"""Gaussian cube text: Bohr lengths and e/Bohr³ values (z fastest); e/Å³ and Å inside cdp.

Grid point (i, j, k) sits at ``origin + i·v1 + j·v2 + k·v3`` and the grid's cell is ``n_i·v_i``. A
negative voxel count means that axis is given in Å (Gaussian convention). ``units="angstrom"`` reads
values already in e/Å³ (DeepDFT's streaming predictor writes such cubes). Orbital cubes (negative atom
count) and multi-value cubes are refused. Periodicity is not stored: readers default to periodic.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from ase import Atoms
from ase.units import Bohr

from cdp.core.errors import CdpError
from cdp.core.grid import DensityGrid
from cdp.io._text import Lines, check_finite, check_room, decode_text, parse_numbers, snippet

KIND = "cube"
UNITS = ("bohr", "angstrom")


def _check_units(units: str, name: str) -> str:
    u = str(units).lower()
    if u not in UNITS:
        raise CdpError(f"{name}: units must be 'bohr' (e/Bohr³, the cube standard) or 'angstrom' (e/Å³), got {units!r}")
    return u


def parse_cube(text: str, name: str, units: str = "bohr") -> Tuple[Atoms, DensityGrid]:
    """Parse cube text into atoms (pbc True) and a grid in e/Å³."""
    units = _check_units(units, name)
    lines = Lines(text, name, KIND)
    lines.next("first comment line")
    second = lines.next("second comment line")
    if "OUTER LOOP" in second.upper():
        order = [w[0] for w in second.upper().replace(",", " ").split()[2::3]][:3]
        if order and order != ["X", "Y", "Z"]:
            raise CdpError(f"{name}: loop order {second.strip()!r} is not supported (expected X outer, Z inner)")
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
    voxels = np.array(axes) * length
    origin = origin * length
    nx, ny, nz = dims
    n = nx * ny * nz
    if natoms > (len(text) - lines.pos) // 10:
        raise CdpError(f"{name}: atom count says {natoms} atoms but the file is too short to hold them")

    z, pos = [], []
    for i in range(natoms):
        line = lines.next(f"line of atom {i + 1}")
        f = line.split()
        try:
            if len(f) != 5:
                raise ValueError
            zf = float(f[0])
            xyz = [float(v) for v in f[2:5]]
        except ValueError:
            raise CdpError(
                f"{name}: line {lines.lineno} is not 'Z charge x y z' for atom {i + 1} of {natoms} "
                f"(atom count disagrees with the atom lines?): {snippet(line)}"
            ) from None
        if not np.isfinite(zf) or zf != int(zf):
            raise CdpError(f"{name}: line {lines.lineno}: atomic number {f[0]!r} is not an integer")
        z.append(int(zf))
        pos.append(xyz)
    positions = np.array(pos, dtype=np.float64) * length
    cell = voxels * np.array(dims, dtype=np.float64)[:, None]

    start = lines.line_start()
    if not text[start:].strip():
        raise CdpError(f"{name}: header only, no density values after the atom lines")
    check_room(n, len(text) - start, name, "density grid")
    vals, _ = parse_numbers(text[start:], name, "density grid")
    if vals.size != n:
        raise CdpError(
            f"{name}: density grid holds {vals.size} values but the header's {nx}x{ny}x{nz} grid needs {n} "
            f"({'truncated file' if vals.size < n else 'grid size or atom count wrong?'})"
        )
    check_finite(vals, name, "density grid")
    values = vals.reshape(nx, ny, nz)
    if units == "bohr":
        values /= Bohr**3
    atoms = Atoms(numbers=z, positions=positions, cell=cell, pbc=True)
    grid = DensityGrid(cell=cell, values=values, origin=origin, pbc=np.ones(3, dtype=bool))
    return atoms, grid


def read_cube_bytes(data: bytes, name: str, units: str = "bohr") -> Tuple[Atoms, DensityGrid]:
    """Decode and parse cube bytes."""
    return parse_cube(decode_text(data, name, KIND), name, units=units)


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
