"""QM9 geometries by gdb index, read straight from the CSV files inside the ``qm9pack`` wheel.

``qm9pack`` itself imports ``pkg_resources`` and pandas, so we never import it: its package
directory is located with ``importlib.util.find_spec`` and the CSVs are parsed with :mod:`csv`.
cdp's own datasets draw from indices 1–100,000 only (the rest is kept out for later held-out use).
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import os
import re
import sys
from typing import Dict, Iterable, List, Sequence

from ase import Atoms

from cdp.core.types import CdpError

CDP_MAX_INDEX = 100_000
QM9_MAX_INDEX = 133_885
_INSTALL_HINT = "QM9 geometries need the qm9pack wheel: pip install qm9pack (or pip install 'cdp[data]')"


def qm9_data_dir() -> str:
    """Directory holding qm9pack's ``qm9_part*.csv`` files."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise CdpError(_INSTALL_HINT)
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    if not os.path.isdir(data):
        raise CdpError(f"qm9pack at {data} has no data directory; reinstall it ({_INSTALL_HINT})")
    return data


def parse_range(text: str) -> List[int]:
    """Indices from ``'1-500'``, ``'7'`` or ``'1-10,20,30-32'`` (inclusive ranges)."""
    out: List[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise CdpError(f"--qm9: cannot read range {part!r} (expected e.g. 1-500 or 1-10,20)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise CdpError(f"--qm9: range {part!r} is empty")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))


def check_indices(indices: Iterable[int], allow_reserved: bool = False) -> List[int]:
    """Refuse indices outside QM9, and by default those above cdp's 1–100,000 range."""
    idx = sorted(set(int(i) for i in indices))
    if not idx:
        raise CdpError("no QM9 indices given")
    limit = QM9_MAX_INDEX if allow_reserved else CDP_MAX_INDEX
    if idx[0] < 1 or idx[-1] > limit:
        what = "QM9" if allow_reserved else "cdp's datasets (1-100000; higher ones are held out)"
        raise CdpError(f"QM9 index {idx[0] if idx[0] < 1 else idx[-1]} is outside the range of {what}")
    return idx


def _row_atoms(row: dict):
    symbols = ast.literal_eval(row["Elements"])
    positions = ast.literal_eval(row["XYZ_Ang"])
    return Atoms(symbols=symbols, positions=positions)


def load_qm9(indices: Sequence[int], allow_reserved: bool = False, strict: bool = True) -> Dict[int, object]:
    """``{index: ase.Atoms}`` for the requested QM9 gdb indices (missing ones raise CdpError if strict)."""
    wanted = set(check_indices(indices, allow_reserved))
    data = qm9_data_dir()
    files = sorted(f for f in os.listdir(data) if re.fullmatch(r"qm9_part\d+\.csv", f))
    if not files:
        raise CdpError(f"no qm9_part*.csv files in {data}; reinstall qm9pack")
    found: Dict[int, object] = {}
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    for fname in files:
        with open(os.path.join(data, fname), newline="") as fh:
            for row in csv.DictReader(fh):
                i = int(row["Index"])
                if i in wanted:
                    found[i] = _row_atoms(row)
                    if len(found) == len(wanted):
                        return found
    missing = sorted(wanted - set(found))
    if not strict:
        return found
    raise CdpError(
        f"QM9 indices not in qm9pack (removed by the QM9 consistency check): "
        f"{', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}"
    )


def qm9_name(index: int) -> str:
    """File stem of a QM9 molecule in cdp datasets."""
    return f"qm9_{int(index):06d}"
