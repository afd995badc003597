"""Named input structures for the generators: QM9 by index or frames of ase-readable files."""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import ase.io

from cdp.core.types import CdpError
from cdp.data.qm9 import load_qm9, parse_range, qm9_name


def structures_from_qm9(text: str, allow_reserved: bool = False) -> Tuple[List[Tuple[str, object]], List[str]]:
    """([(qm9_000001, Atoms), ...], names of requested indices that qm9pack lacks) for a range text."""
    idx = parse_range(text)
    found = load_qm9(idx, allow_reserved=allow_reserved, strict=False)
    missing = [qm9_name(i) for i in idx if i not in found]
    return [(qm9_name(i), found[i]) for i in idx if i in found], missing


def structures_from_files(paths: Sequence[str], periodic: bool = False) -> List[Tuple[str, object]]:
    """Frames of ase-readable files: ``<stem>`` for one frame, ``<stem>_<i>`` for each of several."""
    out: List[Tuple[str, object]] = []
    for path in paths:
        stem = os.path.basename(path).split(".")[0] or "structure"
        try:
            frames = ase.io.read(path, index=":")
        except Exception as exc:
            raise CdpError(f"{path}: cannot read structures: {type(exc).__name__}: {exc}") from exc
        if not isinstance(frames, list):
            frames = [frames]
        if not frames:
            raise CdpError(f"{path}: no structures in the file")
        for i, atoms in enumerate(frames):
            if len(atoms) == 0:
                raise CdpError(f"{path}: frame {i} has no atoms")
            if periodic and (not atoms.pbc.all() or atoms.cell.rank < 3):
                raise CdpError(f"{path}: frame {i} is not a 3D periodic structure (needs a cell and pbc)")
            out.append((stem if len(frames) == 1 else f"{stem}_{i}", atoms))
    return out
