"""VASP CHGCAR/CHG/AECCAR/PARCHG text: ρ·V_cell on an x-fastest grid after a POSCAR header.

Reading gives ``values`` in e/Å³ (file values ÷ V_cell) with origin 0. A collinear spin file's second
block (magnetisation) goes into ``spin``. Everything between the end of a block's numbers and the next
block (PAW ``augmentation occupancies`` and the per-atom moment line VASP may put there) is kept verbatim
in ``augmentation`` / ``spin_augmentation`` and written back unchanged. Non-collinear files (four blocks)
are refused. Periodicity is not stored in the format; readers default to periodic.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from cdp.core.errors import CdpError
from cdp.core.grid import DensityGrid
from cdp.io._text import Lines, check_finite, check_room, decode_text, parse_ints, parse_numbers, snippet

KIND = "CHGCAR"


def _species_name(token: str) -> str:
    """VASP species label ('Fe_pv', 'O/4a6b2', 'Si1') → element symbol."""
    sym = re.split(r"[_/.:\d]", token, maxsplit=1)[0]
    return sym[:1].upper() + sym[1:].lower()


def _read_structure(lines: Lines) -> Tuple[Atoms, int]:
    """Parse the POSCAR part; returns atoms (pbc True) and the number of atoms."""
    name = lines.name
    comment = lines.next("comment line")
    scale_line = lines.next("scale factor")
    scale_fields = scale_line.split()
    try:
        scale = [float(f) for f in scale_fields[:3]]
        if len(scale) != 3:
            raise ValueError
    except ValueError:
        try:
            scale = [float(scale_fields[0])]
        except (ValueError, IndexError):
            raise CdpError(f"{name}: line {lines.lineno}: bad scale factor {snippet(scale_line)}") from None
    cell = np.array([lines.floats("lattice vectors", 3, at_least=True) for _ in range(3)])

    line = lines.next("species or atom counts")
    fields = line.split()
    counts = parse_ints(fields)
    if counts is None:
        species = [_species_name(f) for f in fields]
        line = lines.next("atom counts")
        counts = parse_ints(line.split())
        if counts is None or not counts:
            raise CdpError(f"{name}: line {lines.lineno}: atom counts must be integers, got {snippet(line)}")
    else:  # VASP 4: species names only in the comment line
        species = [_species_name(f) for f in comment.split()[: len(counts)]]
        if len(species) != len(counts):
            raise CdpError(f"{name}: VASP-4 header without species names (none in the comment line)")
    if len(species) != len(counts):
        raise CdpError(f"{name}: {len(species)} species names but {len(counts)} atom counts")
    for sym in species:
        if sym not in atomic_numbers or atomic_numbers[sym] == 0:
            raise CdpError(f"{name}: unknown element {sym!r} in the species line")
    if any(c < 0 for c in counts):
        raise CdpError(f"{name}: negative atom count in {counts}")
    natoms = int(sum(counts))
    if natoms == 0:
        raise CdpError(f"{name}: the structure has no atoms")
    if natoms > (len(lines.text) - lines.pos) // 6:
        raise CdpError(f"{name}: atom counts say {natoms} atoms but the file is too short to hold them")

    mode = lines.next("coordinate mode")
    if mode.strip()[:1] in ("S", "s"):
        mode = lines.next("coordinate mode")
    cartesian = mode.strip()[:1] in ("C", "c", "K", "k")

    rows = []
    for i in range(natoms):
        pline = lines.next(f"position of atom {i + 1}")
        fields = pline.split()
        try:
            rows.append([float(f) for f in fields[:3]])
            if len(fields) < 3:
                raise ValueError
        except ValueError:
            raise CdpError(
                f"{name}: atom counts say {natoms} atoms but line {lines.lineno} is not a position "
                f"({snippet(pline)})"
            ) from None
    pos = np.array(rows, dtype=np.float64)

    if len(scale) == 3:
        factor = np.array(scale)
    elif scale[0] < 0:  # negative scale: the target cell volume
        vol = abs(np.linalg.det(cell))
        factor = np.full(3, (abs(scale[0]) / vol) ** (1.0 / 3.0) if vol > 0 else 1.0)
    else:
        factor = np.full(3, scale[0])
    cell = cell * factor[None, :]
    pos = pos * factor[None, :] if cartesian else pos @ cell
    numbers = np.repeat([atomic_numbers[s] for s in species], counts)
    atoms = Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)
    return atoms, natoms


def _dims_regex(dims) -> re.Pattern:
    nx, ny, nz = dims
    return re.compile(rf"^[ \t]*{nx}[ \t]+{ny}[ \t]+{nz}[ \t]*\r?$", re.M)


def _line_start(text: str, idx: int) -> int:
    return text.rfind("\n", 0, idx) + 1


def _read_block(text: str, start: int, stop: int, n: int, name: str, what: str, extra_ok: int):
    """Parse ``n`` numbers from text[start:stop]; returns (values, index where trailing text begins)."""
    region = text[start:stop]
    check_room(n, len(region), name, what)
    vals, tokens = parse_numbers(region, name, what)
    if vals.size < n:
        raise CdpError(f"{name}: truncated {what}: expected {n} values, found {vals.size}")
    extra = vals.size - n
    if extra > extra_ok:
        raise CdpError(
            f"{name}: {what} holds {vals.size} values but the grid has {n} (grid size or atom count wrong?)"
        )
    if extra == 0:
        return vals, stop
    p = len(region)  # locate the first extra token (a per-atom moment line) from the end
    for tok in reversed(tokens[n:]):
        p = region.rfind(tok, 0, p)
    return vals[:n], start + _line_start(region, p)


def parse_chgcar(text: str, name: str) -> Tuple[Atoms, DensityGrid]:
    """Parse CHGCAR text into atoms and a grid (values e/Å³, origin 0, pbc True)."""
    lines = Lines(text, name, KIND)
    atoms, natoms = _read_structure(lines)

    while True:  # blank line(s) then the grid dimensions
        if lines.at_end():
            raise CdpError(f"{name}: header only, no density grid after the positions")
        dline = lines.next("grid dimensions")
        if dline.strip():
            break
    fields = dline.split()
    dims = parse_ints(fields)
    if dims is None or len(dims) != 3:
        if len(fields) >= 3 and parse_ints(fields) is None:
            raise CdpError(
                f"{name}: line {lines.lineno} is not a grid-dimensions line ({snippet(dline)}); "
                f"the atom counts ({natoms}) disagree with the position lines"
            )
        raise CdpError(f"{name}: line {lines.lineno}: expected three grid dimensions, got {snippet(dline)}")
    if min(dims) <= 0:
        raise CdpError(f"{name}: grid dimensions must be positive, got {dims}")
    nx, ny, nz = dims
    n = nx * ny * nz

    volume = abs(float(np.linalg.det(atoms.cell.array)))
    if not np.isfinite(volume) or volume < 1e-8:
        raise CdpError(f"{name}: singular cell (volume {volume:.3g} Å³)")

    start = lines.line_start()
    if not text[start:start + 4096].strip():
        raise CdpError(f"{name}: header only, no density values after the grid dimensions")
    check_room(n, len(text) - start, name, "density grid")
    dims_re = _dims_regex(dims)
    later = dims_re.search(text, start)
    aug_at = text.find("augmentation", start)
    stop1 = min(later.start() if later else len(text), _line_start(text, aug_at) if aug_at >= 0 else len(text))
    vals, tail = _read_block(text, start, stop1, n, name, "density grid", extra_ok=natoms)

    block2 = later.start() if later else len(text)
    if later is not None and dims_re.search(text, later.end()) is not None:
        nblocks = 2 + sum(1 for _ in dims_re.finditer(text, later.end()))
        raise CdpError(
            f"{name}: {nblocks} density blocks (non-collinear spin CHGCAR or multi-step CHG); "
            f"only total density and collinear magnetisation are supported"
        )
    aug1 = text[tail:block2]
    augmentation = aug1 if aug1.strip() else None
    if augmentation is not None and "augmentation" not in aug1 and later is None:
        raise CdpError(f"{name}: unexpected text after the density grid: {snippet(aug1)}")

    spin = None
    spin_aug = None
    if later is not None:
        s2 = later.end() + 1
        aug2_at = text.find("augmentation", s2)
        stop2 = _line_start(text, aug2_at) if aug2_at >= 0 else len(text)
        svals, tail2 = _read_block(text, s2, stop2, n, name, "magnetisation grid", extra_ok=0)
        check_finite(svals, name, "magnetisation grid")
        spin = np.ascontiguousarray(svals.reshape((nz, ny, nx)).transpose(2, 1, 0)) / volume
        a2 = text[tail2:]
        spin_aug = a2 if a2.strip() else None

    check_finite(vals, name, "density grid")
    values = np.ascontiguousarray(vals.reshape((nz, ny, nx)).transpose(2, 1, 0))
    values /= volume
    grid = DensityGrid(
        cell=atoms.cell.array.copy(),
        values=values,
        origin=np.zeros(3),
        spin=spin,
        augmentation=augmentation,
        spin_augmentation=spin_aug,
        pbc=np.ones(3, dtype=bool),
    )
    return atoms, grid


def read_chgcar_bytes(data: bytes, name: str) -> Tuple[Atoms, DensityGrid]:
    """Decode and parse CHGCAR bytes."""
    return parse_chgcar(decode_text(data, name, KIND), name)


# ----------------------------------------------------------------------------------------------- write


def _species_order(numbers: np.ndarray) -> Tuple[np.ndarray, List[int], List[int]]:
    """Stable permutation grouping atoms by species in first-appearance order, species list, counts."""
    _, first = np.unique(numbers, return_index=True)
    species = [int(numbers[i]) for i in sorted(first)]
    rank = {z: r for r, z in enumerate(species)}
    order = np.argsort(np.array([rank[int(z)] for z in numbers]), kind="stable")
    counts = [int(np.count_nonzero(numbers == z)) for z in species]
    return order, species, counts


def _fortran_values(flat: np.ndarray) -> str:
    """Format numbers in VASP style (`` 0.12345678901E+01``, five per line, always space-separated)."""
    a = np.abs(flat)
    e = np.zeros(flat.shape, dtype=np.int64)
    nzm = a > 0
    e[nzm] = np.floor(np.log10(a[nzm])).astype(np.int64) + 1
    e = np.clip(e, -300, 300)
    m = np.round(flat / np.power(10.0, e), 11)
    fix = np.abs(m) >= 1.0
    if fix.any():
        e[fix] += 1
        m[fix] = np.round(flat[fix] / np.power(10.0, e[fix]), 11)
    inter = np.empty(2 * flat.size, dtype=object)
    inter[0::2] = m.tolist()
    inter[1::2] = e.tolist()
    one = " %13.11fE%+03d"  # one space always separates values (also before a minus sign)
    nfull, rest = divmod(flat.size, 5)
    out = ((one * 5 + "\n") * nfull) % tuple(inter[: 10 * nfull].tolist())
    if rest:
        out += (one * rest + "\n") % tuple(inter[10 * nfull:].tolist())
    return out


def _verbatim(text: Optional[str]) -> str:
    if not text:
        return ""
    return text if text.endswith("\n") else text + "\n"


def chgcar_header(atoms: Atoms, cell, origin, shape, name: str = "CHGCAR", comment: Optional[str] = None,
                  keeps_augmentation: bool = False) -> str:
    """The CHGCAR text up to and including the grid-dimension line (atoms grouped by species).

    A non-zero grid origin is removed by shifting the atoms (the file's grid starts at 0).
    """
    cell = np.asarray(cell, dtype=np.float64)
    volume = abs(float(np.linalg.det(cell)))
    if not np.isfinite(volume) or volume < 1e-8:
        raise CdpError(f"{name}: singular grid cell (volume {volume:.3g} Å³)")
    numbers = np.asarray(atoms.numbers)
    order, species, counts = _species_order(numbers)
    if keeps_augmentation and not np.array_equal(order, np.arange(len(order))):
        raise CdpError(f"{name}: atoms are not grouped by species, so the per-atom augmentation text cannot be kept")
    pos = np.asarray(atoms.positions, dtype=np.float64)[order] - np.asarray(origin, dtype=np.float64)
    frac = np.linalg.solve(cell.T, pos.T).T
    out = [(comment or atoms.get_chemical_formula(mode="hill") or "cdp").replace("\n", " ") + "\n"]
    out.append("   1.00000000000000\n")
    out.extend(" %22.16f %22.16f %22.16f\n" % tuple(row) for row in cell)
    out.append("".join(" %4s" % chemical_symbols[z] for z in species) + "\n")
    out.append("".join(" %5d" % c for c in counts) + "\n")
    out.append("Direct\n")
    out.extend(" %20.16f %20.16f %20.16f\n" % tuple(row) for row in frac)
    out.append("\n")
    out.append(chgcar_dims_line(shape))
    return "".join(out)


def chgcar_dims_line(shape) -> str:
    """The line announcing a grid block (also repeated before the magnetisation block)."""
    return " %4d %4d %4d\n" % tuple(shape)


def format_chgcar_values(flat: np.ndarray) -> str:
    """Values (already ρ·V, x fastest) in VASP's layout, five per line."""
    return _fortran_values(flat)


def verbatim_block(text: Optional[str]) -> str:
    """Augmentation text as written after a grid block (newline-terminated, or nothing)."""
    return _verbatim(text)


def format_chgcar(atoms: Atoms, grid: DensityGrid, name: str = "CHGCAR", comment: Optional[str] = None) -> str:
    """CHGCAR text for ``atoms`` and ``grid``; atoms are grouped by species (first-appearance order).

    The lattice is the grid's cell; a non-zero grid origin is removed by shifting the atoms (the file's
    grid starts at 0). Augmentation text is written back verbatim; it cannot follow a reordering of atoms.
    """
    cell = np.asarray(grid.cell, dtype=np.float64)
    values = np.asarray(grid.values, dtype=np.float64)
    if values.ndim != 3 or min(values.shape) < 1:
        raise CdpError(f"{name}: grid values must be a non-empty 3-D array, got shape {values.shape}")
    out = [chgcar_header(atoms, cell, grid.origin, values.shape, name, comment,
                         keeps_augmentation=bool(grid.augmentation or grid.spin_augmentation))]
    volume = abs(float(np.linalg.det(cell)))
    check_finite(values, name, "density grid")
    out.append(_fortran_values(values.transpose(2, 1, 0).reshape(-1) * volume))
    out.append(_verbatim(grid.augmentation))
    if grid.spin is not None:
        spin = np.asarray(grid.spin, dtype=np.float64)
        if spin.shape != values.shape:
            raise CdpError(f"{name}: spin grid shape {spin.shape} differs from the density's {values.shape}")
        check_finite(spin, name, "magnetisation grid")
        out.append(chgcar_dims_line(values.shape))
        out.append(_fortran_values(spin.transpose(2, 1, 0).reshape(-1) * volume))
        out.append(_verbatim(grid.spin_augmentation))
    return "".join(out)
