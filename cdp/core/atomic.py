"""Atomic file writes: a temporary file beside the target, then ``os.replace`` — never a half-written file.

The one implementation every writer in cdp uses (density files, checkpoints, reports, exports).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from cdp.core.errors import CdpError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; the temp file is removed on any failure.

    The result gets the permissions of a normally created file (temp files are created owner-only).
    An OSError from ``write`` (a full disk: ENOSPC) is re-raised naming ``path``, not the temp file; a
    torch/C++ writer's "write failed" error on a full disk becomes the same OSError.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    os.close(fd)
    try:
        try:
            write(tmp)
            os.chmod(tmp, _umask_mode())
            os.replace(tmp, path)
        except OSError as exc:
            if exc.filename not in (None, tmp):  # about another file: keep its name
                raise
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        except RuntimeError as exc:  # torch.save reports a full disk as "... file write failed"
            if "write failed" in str(exc) or "failed writing" in str(exc):
                free = _free_bytes(directory)
                if free is not None and free < 1 << 20:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _free_bytes(directory) -> "int | None":
    try:
        return int(shutil.disk_usage(directory).free)
    except OSError:
        return None


def check_free_space(path, need: int, what: str = "the file") -> None:
    """Refuse (CdpError naming ``path``) when ``need`` bytes cannot fit in the free space beside ``path``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    free = _free_bytes(directory)
    if free is not None and need > free:
        raise CdpError(f"{path}: {what} needs about {_human(need)} but only {_human(free)} is free on {directory}")


def _human(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
