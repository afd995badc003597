"""VASP CHGCAR/CHG/AECCAR/PARCHG text: ρ·V_cell on an x-fastest grid after a POSCAR header.

Reading gives ``values`` in e/Å³ (file values ÷ V_cell) with origin 0. One ionic step holds 1, 2 or 4
blocks, each announced by the grid-dimension line: the total; the collinear magnetisation (→ ``spin``);
or m_x, m_y, m_z of a non-collinear run (→ ``magnetisation`` [3, nx, ny, nz], ``spin`` stays None so a
collinear-spin model is never scored against it). Everything between the end of a block's numbers and the
next block (PAW ``augmentation occupancies`` and the per-atom moment lines VASP may put there) is kept
verbatim in ``augmentation`` / ``spin_augmentation`` / ``magnetisation_augmentation`` and written back
unchanged. A file with several ionic steps (CHG, or CHGCAR of an MD run: a header and grid per step)
yields the step chosen by ``frame`` (Python indexing, default the last). Periodicity is not stored in
the format; readers default to periodic.

The text is read through a bounded window (:class:`cdp.io._text.TextSource`): the grid is parsed chunk by
chunk into an array allocated only after its declared size passed the limits.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from cdp.core.errors import CdpError
from cdp.core.grid import DensityGrid
from cdp.io._text import (
    WINDOW,
    TextSource,
    check_finite,
    check_grid_size,
    check_room,
    numbers_in_line,
    parse_ints,
    snippet,
)
from cdp.io.compression import open_source

KIND = "CHGCAR"
MAX_BLOCKS = 4  # total, then 1 (collinear) or 3 (non-collinear) magnetisation blocks


def _species_name(token: str) -> str:
    """VASP species label ('Fe_pv', 'O/4a6b2', 'Si1') → element symbol."""
    sym = re.split(r"[_/.:\d]", token, maxsplit=1)[0]
    return sym[:1].upper() + sym[1:].lower()


def _read_structure(lines: TextSource) -> Tuple[Atoms, int]:
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
    lines.check_atoms(natoms, 6, "atom counts")

    mode = lines.next("coordinate mode")
    if mode.strip()[:1] in ("S", "s"):
        mode = lines.next("coordinate mode")
    cartesian = mode.strip()[:1] in ("C", "c", "K", "k")

    pos = np.empty((natoms, 3), dtype=np.float64)
    for i in range(natoms):
        pline = lines.next(f"position of atom {i + 1}")
        fields = pline.split()
        try:
            pos[i] = [float(f) for f in fields[:3]]
            if len(fields) < 3:
                raise ValueError
        except ValueError:
            raise CdpError(
                f"{name}: atom counts say {natoms} atoms but line {lines.lineno} is not a position "
                f"({snippet(pline)})"
            ) from None

    with np.errstate(all="ignore"):  # non-finite input is refused by validate_atoms, without warnings
        return _scaled_atoms(cell, pos, scale, cartesian, species, counts), natoms


def _scaled_atoms(cell, pos, scale, cartesian, species, counts) -> Atoms:
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
    return Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)


@dataclass
class _Step:
    """One ionic step as read: atoms, grid shape, flat blocks (ρ·V, x fastest) and the text after each."""

    atoms: Atoms
    natoms: int
    dims: Tuple[int, int, int]
    blocks: List[np.ndarray]
    tails: List[Optional[str]]


def _read_dims(src: TextSource, natoms: int) -> Tuple[int, int, int]:
    name = src.name
    blank = 0
    while True:  # blank line(s) then the grid dimensions
        dline = src.readline()
        if dline is None:
            raise CdpError(f"{name}: header only, no density grid after the positions")
        if dline.strip():
            break
        blank += len(dline) + 1
        if blank > WINDOW:
            raise CdpError(f"{name}: {WINDOW // 2**20} MiB of blank text after the positions, no grid dimensions")
    fields = dline.split()
    dims = parse_ints(fields)
    if dims is None or len(dims) != 3:
        if len(fields) >= 3 and dims is None:
            raise CdpError(
                f"{name}: line {src.lineno} is not a grid-dimensions line ({snippet(dline)}); "
                f"the atom counts ({natoms}) disagree with the position lines"
            )
        raise CdpError(f"{name}: line {src.lineno}: expected three grid dimensions, got {snippet(dline)}")
    if min(dims) <= 0:
        raise CdpError(f"{name}: grid dimensions must be positive, got {dims}")
    return tuple(dims)


def _read_tail(src: TextSource, dims, natoms: int, what: str) -> Tuple[Optional[str], str]:
    """Text after a block up to the next block / step / end: (verbatim text or None, 'block'|'step'|'end').

    Holds augmentation occupancies (counted by their headers) and per-atom moment lines (at most 3 per
    atom); more numbers mean the grid size is wrong.
    """
    name = src.name
    kept: List[str] = []
    rest = src.readline()  # the remainder of the last value line
    if rest is not None and rest.strip():
        kept.append(rest)
        moments = numbers_in_line(rest) or 0
    else:
        moments = 0
    limit = WINDOW + 65536 * natoms
    chars = blank = 0
    aug_left = 0
    nxt = "end"
    while True:
        line = src.readline()
        if line is None:
            break
        s = line.strip()
        chars += len(line) + 1
        if chars > limit:
            raise CdpError(f"{name}: over {limit // 2**20} MiB of text after the {what} (not augmentation data)")
        if not s:
            blank += len(line) + 1
            if blank > WINDOW:
                raise CdpError(f"{name}: {WINDOW // 2**20} MiB of blank text after the {what}")
            kept.append(line)
            continue
        blank = 0
        fields = s.split()
        if len(fields) == 3:
            ints = parse_ints(fields)
            if ints is not None:
                if tuple(ints) != tuple(dims):
                    raise CdpError(f"{name}: line {src.lineno}: grid dimensions {ints} differ from the step's {list(dims)}")
                nxt = "block"
                break
        if s.lower().startswith("augmentation"):
            count = parse_ints(fields[-1:])
            aug_left = count[0] if count else 1 << 62
            kept.append(line)
            continue
        k = numbers_in_line(s)
        if k is None:  # a comment line: the header of the next ionic step
            src.unread(line)
            nxt = "step"
            break
        take = min(aug_left, k)
        aug_left -= take
        moments += k - take
        if moments > 3 * natoms:
            n = int(np.prod(dims))
            raise CdpError(
                f"{name}: {what} holds more than its {n} values: {moments} more numbers follow it "
                f"(grid size or atom count wrong?)"
            )
        kept.append(line)
    text = "\n".join(kept) + "\n" if kept else ""
    return (text if text.strip() else None), nxt


def _read_step(src: TextSource, scratch: Optional[_Step], index: int) -> Tuple[_Step, str]:
    """Read one ionic step (header and its 1, 2 or 4 blocks); ``scratch`` arrays are reused when shapes match."""
    name = src.name
    start_line = src.lineno + 1
    try:
        atoms, natoms = _read_structure(src)
        dims = _read_dims(src, natoms)
    except CdpError as exc:
        if index == 0:
            raise
        raise CdpError(  # after a complete step, only a further step's header may follow
            f"{name}: text after the grid of step {index} (line {start_line}) is neither augmentation data nor "
            f"the header of a further step: {str(exc).removeprefix(name + ': ')}"
        ) from None
    nx, ny, nz = dims
    n = nx * ny * nz
    with np.errstate(all="ignore"):
        volume = abs(float(np.linalg.det(atoms.cell.array)))
    if not np.isfinite(volume) or volume < 1e-8:
        raise CdpError(f"{name}: singular cell (volume {volume:.3g} Å³)")
    if src.skip_blank():
        raise CdpError(f"{name}: header only, no density values after the grid dimensions")
    blocks: List[np.ndarray] = []
    tails: List[Optional[str]] = []
    while True:
        what = "density grid" if not blocks else f"magnetisation grid {len(blocks)}"
        if len(blocks) >= MAX_BLOCKS:
            raise CdpError(
                f"{name}: more than {MAX_BLOCKS} density blocks in one step (expected 1, 2 for collinear spin "
                f"or 4 for non-collinear)"
            )
        check_room(n, src.remaining(), name, what)
        reuse = scratch.blocks[len(blocks)] if scratch is not None and len(scratch.blocks) > len(blocks) else None
        if reuse is not None and reuse.size == n:
            flat = reuse
        else:
            check_grid_size(n, name, what, copies=2 + len(blocks))
            flat = np.empty(n, dtype=np.float64)
        src.read_numbers(flat, what)
        check_finite(flat, name, what)
        blocks.append(flat)
        tail, nxt = _read_tail(src, dims, natoms, what)
        tails.append(tail)
        if nxt != "block":
            break
    if len(blocks) == 3:
        raise CdpError(f"{name}: 3 density blocks in one step (expected 1, 2 for collinear spin or 4 for non-collinear)")
    return _Step(atoms, natoms, dims, blocks, tails), nxt


def _grid(flat: np.ndarray, dims, volume: float, out: Optional[np.ndarray] = None) -> np.ndarray:
    nx, ny, nz = dims
    if out is None:
        out = np.empty((nx, ny, nz), dtype=np.float64)
    np.divide(flat.reshape((nz, ny, nx)).transpose(2, 1, 0), volume, out=out)
    return out


def read_chgcar(source, name: str, frame: int = -1) -> Tuple[Atoms, DensityGrid, int]:
    """Read a CHGCAR from a :class:`cdp.io.compression.Source` → (atoms, grid, number of ionic steps).

    ``frame`` picks the step (Python indexing; -1, the default, is the last). Steps other than the chosen
    one are parsed into reused scratch arrays, so memory holds about two grids whatever the step count.
    """
    try:
        frame = int(frame)
    except (TypeError, ValueError):
        raise CdpError(f"{name}: frame must be an integer, got {frame!r}") from None
    src = TextSource(source, name, KIND)
    src.start()
    kept: deque = deque(maxlen=-frame if frame < 0 else 1)
    chosen: Optional[_Step] = None
    spare: Optional[_Step] = None
    index = 0
    while True:
        if frame < 0:
            scratch = kept[0] if len(kept) == kept.maxlen else None
        else:
            scratch = spare if index != frame else None
        step, nxt = _read_step(src, scratch, index)
        if frame < 0:
            kept.append(step)
        elif index == frame:
            chosen = step
        else:
            spare = step
        index += 1
        if nxt == "end":
            break
    nsteps = index
    if frame < 0:
        if -frame > nsteps:
            raise CdpError(f"{name}: step {frame} does not exist: the file holds {nsteps} step(s)")
        chosen = kept[0]
    elif chosen is None:
        raise CdpError(f"{name}: step {frame} does not exist: the file holds {nsteps} step(s)")
    return _to_grid(chosen, name) + (nsteps,)


def _to_grid(step: _Step, name: str) -> Tuple[Atoms, DensityGrid]:
    atoms, dims = step.atoms, step.dims
    volume = abs(float(np.linalg.det(atoms.cell.array)))
    blocks = step.blocks
    values = _grid(blocks[0], dims, volume)
    check_finite(values, name, "density grid")  # ρ·V ÷ V may overflow for a tiny cell
    spin = magnetisation = None
    spin_aug = None
    mag_aug = None
    if len(blocks) == 2:
        spin = _grid(blocks[1], dims, volume)
        check_finite(spin, name, "magnetisation grid")
        spin_aug = step.tails[1]
    elif len(blocks) == 4:
        magnetisation = np.empty((3,) + tuple(dims), dtype=np.float64)
        for c in range(3):
            _grid(blocks[1 + c], dims, volume, out=magnetisation[c])
        check_finite(magnetisation, name, "magnetisation grid")
        mag_aug = list(step.tails[1:])
    grid = DensityGrid(
        cell=atoms.cell.array.copy(),
        values=values,
        origin=np.zeros(3),
        spin=spin,
        augmentation=step.tails[0],
        spin_augmentation=spin_aug,
        pbc=np.ones(3, dtype=bool),
        magnetisation=magnetisation,
        magnetisation_augmentation=mag_aug,
    )
    return atoms, grid


def parse_chgcar(text: str, name: str, frame: int = -1) -> Tuple[Atoms, DensityGrid]:
    """Parse CHGCAR text into atoms and a grid (values e/Å³, origin 0, pbc True)."""
    data = text.encode("utf-8")
    with open_source(data=data, name="CHGCAR") as source:
        source.name = name
        return read_chgcar(source, name, frame)[:2]


def read_chgcar_bytes(data: bytes, name: str, frame: int = -1) -> Tuple[Atoms, DensityGrid]:
    """Parse (uncompressed) CHGCAR bytes."""
    with open_source(data=data, name="CHGCAR") as source:
        source.name = name
        return read_chgcar(source, name, frame)[:2]


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

    Blocks written: the total, then ``spin`` (collinear) or the three components of ``magnetisation``
    (non-collinear), each followed by its verbatim augmentation text.

    The lattice is the grid's cell; a non-zero grid origin is removed by shifting the atoms (the file's
    grid starts at 0). Augmentation text is written back verbatim; it cannot follow a reordering of atoms.
    """
    cell = np.asarray(grid.cell, dtype=np.float64)
    values = np.asarray(grid.values, dtype=np.float64)
    if values.ndim != 3 or min(values.shape) < 1:
        raise CdpError(f"{name}: grid values must be a non-empty 3-D array, got shape {values.shape}")
    mag_aug = list(grid.magnetisation_augmentation or [None, None, None])
    keeps = bool(grid.augmentation or grid.spin_augmentation or any(mag_aug))
    out = [chgcar_header(atoms, cell, grid.origin, values.shape, name, comment, keeps_augmentation=keeps)]
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
    if grid.magnetisation is not None:
        if grid.spin is not None:
            raise CdpError(f"{name}: a grid cannot hold both a collinear spin and a vector magnetisation")
        mag = np.asarray(grid.magnetisation, dtype=np.float64)
        if mag.shape != (3,) + values.shape or len(mag_aug) != 3:
            raise CdpError(f"{name}: magnetisation shape {mag.shape} is not [3, {', '.join(map(str, values.shape))}]")
        check_finite(mag, name, "magnetisation grid")
        for c in range(3):
            out.append(chgcar_dims_line(values.shape))
            out.append(_fortran_values(mag[c].transpose(2, 1, 0).reshape(-1) * volume))
            out.append(_verbatim(mag_aug[c]))
    return "".join(out)
