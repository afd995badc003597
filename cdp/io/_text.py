"""Text helpers shared by the CHGCAR and cube parsers: decoding, line walking, vectorised number blocks."""

from __future__ import annotations

import re
from typing import List, Tuple

import numpy as np

from cdp.core.errors import CdpError
from cdp.io.compression import sniff_codec

_FORTRAN_EXP = re.compile(r"(?<=[0-9.])([+-][0-9]{3})(?![0-9])")


def decode_text(data: bytes, name: str, kind: str) -> str:
    """Decode a text density file; empty or binary content raises CdpError."""
    if not data.strip():
        raise CdpError(f"{name}: file is empty")
    if b"\x00" in data[:65536]:
        codec = sniff_codec(data)
        hint = f" (looks {codec}-compressed; name it with the matching suffix)" if codec else ""
        raise CdpError(f"{name}: binary data, not a text {kind} file{hint}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        codec = sniff_codec(data)
        hint = f" (looks {codec}-compressed; name it with the matching suffix)" if codec else ""
        raise CdpError(f"{name}: binary data, not a text {kind} file{hint}") from None


def snippet(line: str, width: int = 50) -> str:
    """A short single-line quote of ``line`` for error messages."""
    line = " ".join(line.split())
    return repr(line if len(line) <= width else line[:width] + "...")


class Lines:
    """Walks a text line by line from a character position (headers only; data is parsed in blocks)."""

    def __init__(self, text: str, name: str, kind: str):
        self.text, self.name, self.kind = text, name, kind
        self.pos = 0
        self.lineno = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def next(self, what: str) -> str:
        """Return the next line (without newline); EOF raises a 'truncated header' CdpError."""
        if self.pos >= len(self.text):
            raise CdpError(f"{self.name}: {self.kind} header ends before the {what} (line {self.lineno + 1})")
        end = self.text.find("\n", self.pos)
        end = len(self.text) if end < 0 else end
        line = self.text[self.pos:end]
        self.pos = end + 1
        self.lineno += 1
        return line.rstrip("\r")

    def floats(self, what: str, count: int, at_least: bool = False) -> List[float]:
        """Parse the next line's first ``count`` fields as floats."""
        line = self.next(what)
        fields = line.split()
        if len(fields) < count or (not at_least and len(fields) != count):
            raise CdpError(
                f"{self.name}: line {self.lineno}: expected {count} numbers for the {what}, got {snippet(line)}"
            )
        try:
            return [float(f) for f in fields[:count]]
        except ValueError:
            raise CdpError(f"{self.name}: line {self.lineno}: bad number in the {what}: {snippet(line)}") from None

    def line_start(self) -> int:
        return self.pos


def parse_ints(fields: List[str]) -> List[int] | None:
    """Fields as ints, or None when any is not an integer literal."""
    try:
        return [int(f) for f in fields]
    except ValueError:
        return None


def check_room(n: int, region_chars: int, name: str, what: str) -> None:
    """Refuse a grid whose value count cannot fit in the text present (before anything is allocated)."""
    if n > (region_chars + 1) // 2:
        raise CdpError(
            f"{name}: header claims a {what} of {n} values but only {region_chars} characters of data follow "
            f"(truncated file or wrong grid size)"
        )


def parse_numbers(region: str, name: str, what: str) -> Tuple[np.ndarray, List[str]]:
    """Parse a whitespace-separated number block in one vectorised call; returns (values, tokens)."""
    tokens = region.split()
    try:
        return np.array(tokens, dtype=np.float64), tokens
    except ValueError:
        pass
    fixed = _FORTRAN_EXP.sub(r"E\1", region)  # Fortran drops the 'E' for 3-digit exponents: 0.1-100
    tokens2 = fixed.split()
    try:
        return np.array(tokens2, dtype=np.float64), tokens2
    except ValueError:
        for tok in tokens2:
            try:
                float(tok)
            except ValueError:
                raise CdpError(f"{name}: non-numeric value {snippet(tok, 20)} in the {what}") from None
        raise CdpError(f"{name}: unreadable numbers in the {what}") from None


def check_finite(values: np.ndarray, name: str, what: str) -> None:
    """Refuse NaN or infinite density values."""
    if not np.isfinite(values).all():
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise CdpError(f"{name}: {bad} non-finite value(s) in the {what}")
