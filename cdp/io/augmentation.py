"""PAW augmentation occupancies of a CHGCAR carried over to another listing of the same atoms.

A CHGCAR keeps, after each density block, one ``augmentation occupancies <atom> <count>`` block per atom
in the file's atom order (and, after the first block of a spin file, a line of per-atom moments).  When a
predicted CHGCAR takes them from a reference (``cdp predict --grid-like``) but lists its atoms in another
order, the blocks must follow the atoms: :func:`match_atoms` pairs each atom with the reference atom of
the same species at the same position (modulo the reference's periodic lattice), and
:func:`reorder_augmentation` moves and renumbers the blocks.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

import numpy as np
from scipy.spatial import cKDTree

from cdp.core.errors import CdpError

MATCH_TOLERANCE = 0.01  # Å between an atom and the reference atom whose occupancies it takes
_HEADER = re.compile(r"^(\s*augmentation occupancies\s+)(\d+)(\s+)(\d+)(.*)$")


def grouped_by_species(numbers: np.ndarray) -> np.ndarray:
    """The stable permutation grouping atoms by species in first-appearance order (CHGCAR's atom order)."""
    numbers = np.asarray(numbers)
    _, first = np.unique(numbers, return_index=True)
    rank = {int(numbers[i]): r for r, i in enumerate(sorted(first))}
    return np.argsort(np.array([rank[int(z)] for z in numbers]), kind="stable")


def match_atoms(atoms, reference, name: str = "structure", tolerance: float = MATCH_TOLERANCE) -> np.ndarray:
    """``m`` [N] with ``atoms[k]`` the same atom as ``reference[m[k]]``: same element, positions within
    ``tolerance`` Å modulo the reference's lattice along its periodic axes.  One-to-one, else a CdpError
    naming the first atom that has no partner.
    """
    n = len(atoms)
    if n != len(reference):
        raise CdpError(f"{name}: {n} atoms, the reference has {len(reference)}; its augmentation cannot be carried over")
    pos = np.asarray(atoms.positions, dtype=np.float64)
    ref = np.asarray(reference.positions, dtype=np.float64)
    cell = np.asarray(reference.cell.array, dtype=np.float64)
    pbc = np.asarray(reference.pbc, dtype=bool)
    images = np.zeros((1, 3))
    if pbc.any():
        inv = np.linalg.inv(cell)
        # wrap both sides into the reference cell; the 27 neighbouring images catch atoms on its faces
        pos = pos - np.where(pbc, np.floor(pos @ inv), 0.0) @ cell
        ref = ref - np.where(pbc, np.floor(ref @ inv), 0.0) @ cell
        ranges = [np.arange(-1, 2) if p else np.zeros(1) for p in pbc]
        images = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    replicas = (ref[None, :, :] + (images @ cell)[:, None, :]).reshape(-1, 3)
    owner = np.tile(np.arange(n), len(images))
    ref_numbers = np.asarray(reference.numbers)
    numbers = np.asarray(atoms.numbers)
    tree = cKDTree(replicas)
    found = tree.query_ball_point(pos, r=tolerance)
    match = np.full(n, -1, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    for k in range(n):
        cands = sorted({int(owner[c]) for c in found[k] if ref_numbers[owner[c]] == numbers[k] and not taken[owner[c]]})
        if not cands:
            sym = atoms.get_chemical_symbols()[k]
            raise CdpError(f"{name}: atom {k} ({sym}) has no {sym} atom of the --grid-like reference within "
                           f"{tolerance} Å: the reference's grid (and any PAW occupancies) belong to another "
                           f"structure; predict the reference's own structure, or use --spacing")
        match[k] = cands[0]
        taken[cands[0]] = True
    return match


def _split(text: str) -> Optional[Tuple[str, List[Tuple[re.Match, List[str]]], List[str]]]:
    """(text before the first block, [(header match, value lines)], trailing lines) or None if unparsable."""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if _HEADER.match(line)), None)
    if start is None:
        return None
    lead = "\n".join(lines[:start])
    blocks: List[Tuple[re.Match, List[str]]] = []
    i = start
    while i < len(lines) and _HEADER.match(lines[i]):
        head = _HEADER.match(lines[i])
        want, got, body = int(head.group(4)), 0, []
        i += 1
        while got < want and i < len(lines) and not _HEADER.match(lines[i]):
            got += len(lines[i].split())
            body.append(lines[i])
            i += 1
        if got != want:
            return None
        blocks.append((head, body))
    return lead, blocks, lines[i:]


def reorder_augmentation(text: Optional[str], order: np.ndarray, name: str = "CHGCAR") -> Optional[str]:
    """``text`` with the per-atom blocks in ``order`` (block k of the result is block ``order[k]`` of
    ``text``, renumbered k + 1), and a trailing line of one number per atom reordered alike.

    The identity order returns ``text`` unchanged; text that is not one block per atom is a CdpError.
    """
    order = np.asarray(order, dtype=np.int64)
    if not text or np.array_equal(order, np.arange(len(order))):
        return text
    parts = _split(text)
    n = len(order)
    if parts is None or len(parts[1]) != n:
        found = 0 if parts is None else len(parts[1])
        raise CdpError(f"{name}: the reference's augmentation text holds {found} per-atom blocks for {n} atoms, "
                       f"so it cannot follow the atoms' new order")
    lead, blocks, tail = parts
    out = [lead] if lead else []
    for k, old in enumerate(order):
        head, body = blocks[int(old)]
        index = str(k + 1).rjust(len(head.group(2)))
        out.append(f"{head.group(1)}{index}{head.group(3)}{head.group(4)}{head.group(5)}")
        out.extend(body)
    words = " ".join(tail).split()
    if len(words) == n:  # VASP's per-atom moments after the first block of a spin file
        out.append("  " + "  ".join(words[int(i)] for i in order))
        out.append("")
    elif words:
        raise CdpError(f"{name}: unexpected text after the reference's augmentation blocks "
                       f"({' '.join(words)[:60]}), so it cannot follow the atoms' new order")
    else:
        out.extend(tail)
    return "\n".join(out)
