"""Whole-file gzip / lz4-frame / zlib (de)compression chosen by suffix, with atomic writes."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional, Tuple

from cdp.core.atomic import atomic_write_bytes  # noqa: F401  (re-exported)
from cdp.core.errors import CdpError

#: compression suffix -> codec name (DeepDFT datasets compress members individually with these)
SUFFIXES = {".gz": "gzip", ".lz4": "lz4", ".zz": "zlib"}

_MAGIC = {"gzip": b"\x1f\x8b", "lz4": b"\x04\x22\x4d\x18"}


def split_compression(name: str) -> Tuple[str, Optional[str]]:
    """Return ``(name without compression suffix, codec or None)``."""
    for suffix, codec in SUFFIXES.items():
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], codec
    return name, None


def sniff_codec(data: bytes) -> Optional[str]:
    """Guess the codec of ``data`` from its magic bytes (zlib only by its two-byte header check)."""
    for codec, magic in _MAGIC.items():
        if data.startswith(magic):
            return codec
    if len(data) >= 2 and data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and ((data[0] << 8) | data[1]) % 31 == 0:
        return "zlib"
    return None


def decompress(data: bytes, codec: Optional[str], name: str) -> bytes:
    """Decompress ``data`` with ``codec`` (None: unchanged); corrupt or mislabelled data raises CdpError."""
    if codec is None:
        return data
    if not data:
        raise CdpError(f"{name}: file is empty")
    found = sniff_codec(data)
    if found != codec:
        what = f"{found}-compressed data" if found else "uncompressed (or unrecognised) data"
        raise CdpError(f"{name}: the name says {codec} but the file holds {what}")
    try:
        if codec == "gzip":
            return gzip.decompress(data)
        if codec == "zlib":
            return zlib.decompress(data)
        import lz4.frame

        return lz4.frame.decompress(data)
    except (OSError, EOFError, zlib.error, RuntimeError, ValueError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise CdpError(f"{name}: corrupt {codec} data ({msg})") from None


def compress(data: bytes, codec: Optional[str]) -> bytes:
    """Compress ``data`` with ``codec`` (None: unchanged)."""
    if codec is None:
        return data
    if codec == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if codec == "zlib":
        return zlib.compress(data, 6)
    import lz4.frame

    return lz4.frame.compress(data)


def read_file_bytes(path) -> bytes:
    """Read a file's bytes, decompressing by suffix; missing or unreadable files raise CdpError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CdpError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CdpError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise CdpError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decompress(data, split_compression(path.name)[1], str(path))


def write_file_bytes(path, data: bytes) -> None:
    """Compress by suffix and write atomically."""
    atomic_write_bytes(path, compress(data, split_compression(Path(path).name)[1]))
