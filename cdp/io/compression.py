"""Whole-file gzip / lz4-frame / zlib / bzip2 / xz (de)compression chosen by suffix, with atomic writes.

Reading goes through :func:`open_source`, a bounded stream: a file (or in-memory bytes) is decompressed a
few megabytes at a time, so a small compressed file that inflates to gigabytes never sits in memory whole.
The codec comes from the suffix, and the magic bytes must agree; a file without a compression suffix is
sniffed by the unambiguous magic bytes of gzip, lz4, bzip2 and xz (zlib's two-byte header is too weak
to sniff: it needs its ``.zz`` suffix).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from pathlib import Path
from typing import BinaryIO, Optional, Tuple

import lz4.frame

from cdp.core.atomic import atomic_write_bytes  # noqa: F401  (re-exported)
from cdp.core.errors import CdpError

#: compression suffix -> codec name (DeepDFT datasets compress members individually with the first three)
SUFFIXES = {".gz": "gzip", ".lz4": "lz4", ".zz": "zlib", ".bz2": "bzip2", ".xz": "xz"}

_MAGIC = {
    "gzip": b"\x1f\x8b",
    "lz4": b"\x04\x22\x4d\x18",
    "xz": b"\xfd7zXZ\x00",
}
SNIFFED = ("gzip", "lz4", "xz", "bzip2")  # codecs recognised without a suffix
_BZ2_BLOCK = b"\x31\x41\x59\x26\x53\x59"  # bzip2 block magic (pi), or the end-of-stream magic of an empty stream
_BZ2_EOS = b"\x17\x72\x45\x38\x50\x90"


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
    if data[:3] == b"BZh" and data[3:4].isdigit() and data[4:10] in (_BZ2_BLOCK, _BZ2_EOS):
        return "bzip2"
    if len(data) >= 2 and data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and ((data[0] << 8) | data[1]) % 31 == 0:
        return "zlib"
    return None


class _Zlib(io.RawIOBase):
    """A bounded zlib reader: ``read(n)`` inflates at most ``n`` bytes at a time."""

    def __init__(self, raw: BinaryIO):
        self._raw, self._d, self._eof = raw, zlib.decompressobj(), False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = 1 << 20 if n is None or n < 0 else n
        out = []
        got = 0
        while got < n and not self._eof:
            src = self._d.unconsumed_tail or self._raw.read(1 << 16)
            if not src:
                if not self._d.eof:
                    raise EOFError("compressed data ended before the end-of-stream marker")
                self._eof = True
                break
            piece = self._d.decompress(src, n - got)
            out.append(piece)
            got += len(piece)
            if self._d.eof:
                self._eof = True
        return b"".join(out)


class Source:
    """A decompressed byte stream: ``read(n)`` returns at most ``n`` bytes (``b""`` at the end).

    ``size`` is the decompressed size when known (uncompressed input), else None. Corrupt compressed data
    raises CdpError naming the file and codec.
    """

    def __init__(self, raw: BinaryIO, codec: Optional[str], name: str, size: Optional[int] = None):
        self.name, self.codec, self.size = name, codec, size
        self._raw = raw
        if codec is None:
            self._fh = raw
        elif codec == "gzip":
            self._fh = gzip.GzipFile(fileobj=raw, mode="rb")
        elif codec == "bzip2":
            self._fh = bz2.BZ2File(raw, mode="rb")
        elif codec == "xz":
            self._fh = lzma.LZMAFile(raw, mode="rb")
        elif codec == "zlib":
            self._fh = _Zlib(raw)
        else:
            self._fh = lz4.frame.LZ4FrameFile(raw, mode="rb")

    def read(self, n: int) -> bytes:
        try:
            return self._fh.read(n)
        except (OSError, EOFError, zlib.error, lzma.LZMAError, RuntimeError, ValueError) as exc:
            msg = " ".join(str(exc).split()) or type(exc).__name__
            raise CdpError(f"{self.name}: corrupt {self.codec} data ({msg})") from None

    def close(self) -> None:
        try:
            if self._fh is not self._raw:
                self._fh.close()
        finally:
            self._raw.close()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_codec(head: bytes, codec: Optional[str], name: str) -> None:
    if codec is None:
        return
    if not head:
        raise CdpError(f"{name}: file is empty")
    found = sniff_codec(head)
    if found != codec:
        what = f"{found}-compressed data" if found else "uncompressed (or unrecognised) data"
        raise CdpError(f"{name}: the name says {codec} but the file holds {what}")


def _drain(src: "Source") -> bytes:
    """All remaining (decompressed) bytes of ``src``, read 4 MiB at a time."""
    out = []
    while True:
        piece = src.read(1 << 22)
        if not piece:
            return b"".join(out)
        out.append(piece)


def open_source(path=None, data: Optional[bytes] = None, name: Optional[str] = None) -> Source:
    """A bounded decompressing :class:`Source` over a file ``path`` or in-memory ``data`` (codec from ``name``'s suffix).

    Missing or unreadable files and a suffix that disagrees with the magic bytes raise CdpError.
    """
    name = str(name if name is not None else path)
    codec = split_compression(Path(name).name)[1]
    if data is not None:
        raw: BinaryIO = io.BytesIO(data)
        size = len(data)
    else:
        path = Path(path)
        try:
            raw = open(path, "rb")
            size = path.stat().st_size
        except FileNotFoundError:
            raise CdpError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise CdpError(f"{path}: is a directory, not a file") from None
        except OSError as exc:
            raise CdpError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        head = raw.read(16)
        raw.seek(0)
        if codec is None and sniff_codec(head) in SNIFFED:
            codec = sniff_codec(head)  # e.g. a gzipped CHGCAR saved without its suffix
        _check_codec(head, codec, name)
    except BaseException:
        raw.close()
        raise
    return Source(raw, codec, name, size=size if codec is None else None)


def decompress(data: bytes, codec: Optional[str], name: str) -> bytes:
    """Decompress ``data`` with ``codec`` (None: unchanged) in one piece; corrupt or mislabelled data raises CdpError.

    For small payloads only: density readers use :func:`open_source`, which never inflates a file whole.
    """
    if codec is None:
        return data
    _check_codec(data[:16], codec, name)
    return _drain(Source(io.BytesIO(data), codec, name))


def compress(data: bytes, codec: Optional[str]) -> bytes:
    """Compress ``data`` with ``codec`` (None: unchanged)."""
    if codec is None:
        return data
    if codec == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if codec == "zlib":
        return zlib.compress(data, 6)
    if codec == "bzip2":
        return bz2.compress(data, 9)
    if codec == "xz":
        return lzma.compress(data, preset=6)

    return lz4.frame.compress(data)


def read_file_bytes(path) -> bytes:
    """Read a file's bytes, decompressing by suffix; missing or unreadable files raise CdpError."""
    path = Path(path)
    with open_source(path) as src:
        return _drain(src)


def write_file_bytes(path, data: bytes) -> None:
    """Compress by suffix and write atomically."""
    atomic_write_bytes(path, compress(data, split_compression(Path(path).name)[1]))
