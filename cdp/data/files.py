"""Dataset-side helpers over :mod:`cdp.io`: which names are density files, parsing members, CHGCAR writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from cdp.core.types import CdpError, DensityGrid
from cdp.io import detect_format
import cdp.io
from cdp.io.compression import split_compression

def density_kind(name: str) -> Optional[str]:
    """``'chgcar'``, ``'cube'`` or None from a file name (compression suffix ignored)."""
    base = split_compression(Path(str(name)).name)[0]
    if base.lower().endswith((".json", ".txt", ".npy", ".pkl", ".csv", ".md", ".tar")):
        return None
    try:
        return detect_format(name)
    except CdpError:
        return None


def parse_density(data: bytes, name: str, pbc=None):
    """(ase.Atoms, DensityGrid) from the bytes of a possibly compressed CHGCAR/cube file called ``name``."""
    try:
        return cdp.io.read_bytes(data, name, pbc=pbc)
    except CdpError:
        raise
    except Exception as exc:  # malformed text the parser did not anticipate
        raise CdpError(f"{name}: cannot read density: {type(exc).__name__}: {exc}") from exc


def write_chgcar(path: str, atoms, grid: DensityGrid) -> None:
    """Atomically write a CHGCAR compressed by the suffix of ``path``; pbc lives in the dataset manifest."""
    cdp.io.write(path, atoms, grid, format="chgcar", sidecar=False)


def clean_temporaries(directory: str) -> int:
    """Remove temporary files left by an interrupted atomic write (``.<name>.XXXX.tmp``); returns the count."""
    n = 0
    if os.path.isdir(directory):
        for f in os.listdir(directory):
            if f.startswith(".") and f.endswith(".tmp"):
                os.unlink(os.path.join(directory, f))
                n += 1
    return n
