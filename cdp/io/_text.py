"""Text helpers shared by the CHGCAR and cube parsers: a bounded text window, line walking, number blocks.

A :class:`TextSource` holds at most a few megabytes of decompressed text (``CHUNK`` plus one partial
line), whatever the file size: headers are read line by line and grids are parsed chunk by chunk straight
into a preallocated array. Numbers are parsed with one vectorised call per chunk; only when that fails
(Fortran fields run together, ``-3.7E-02-6.8E-02``, or a dropped ``E`` in ``0.1-100``) is the chunk
split with a regular expression.
"""

from __future__ import annotations

import codecs
import re
from typing import List, Optional, Tuple

import numpy as np

from cdp.core.errors import CdpError
from cdp.core.system import available_memory
from cdp.io.compression import sniff_codec

CHUNK = 1 << 20  #: characters of text parsed per step (1 MiB)
WINDOW = 1 << 20  #: a header must start within this much text; no line, value or blank run may exceed it
MAX_ATOMS = 1_000_000  #: atoms a density file may declare
MAX_GRID_POINTS = 1 << 33  #: grid points a density file may declare (64 GiB of float64)

# one Fortran real: mantissa, then an exponent with E/D, or a sign and three digits without the letter
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][+-]?\d+|[+-]\d{3})?"
_NUMBER_RE = re.compile(_NUMBER)
_NUMBERS_RE = re.compile(rf"(?:{_NUMBER})+")
_SPECIAL = re.compile(r"[+-]?(?:nan|inf|infinity)", re.I)
_MISSING_E = re.compile(r"(?<=[0-9.])([+-][0-9]{3})$")


def snippet(line: str, width: int = 50) -> str:
    """A short single-line quote of ``line`` for error messages."""
    line = " ".join(line.split())
    return repr(line if len(line) <= width else line[:width] + "...")


def parse_ints(fields: List[str]) -> List[int] | None:
    """Fields as ints, or None when any is not an integer literal."""
    try:
        return [int(f) for f in fields]
    except ValueError:
        return None


def check_grid_size(n: int, name: str, what: str, copies: int = 2) -> None:
    """Refuse a declared grid of ``n`` points above :data:`MAX_GRID_POINTS` or beyond the available memory.

    ``copies`` float64 arrays of ``n`` values are assumed to exist at once (the parsed values and the
    reordered grid). Called before anything of that size is allocated.
    """
    if n > MAX_GRID_POINTS:
        raise CdpError(f"{name}: header claims a {what} of {n} points, more than the limit of {MAX_GRID_POINTS}")
    need = 8 * n * copies
    free = available_memory()
    if free is not None and need > free:
        raise CdpError(
            f"{name}: header claims a {what} of {n} points, which needs {need / 2**30:.1f} GiB; only "
            f"{free / 2**30:.1f} GiB of memory are available"
        )


def check_room(n: int, region_chars: Optional[int], name: str, what: str) -> None:
    """Refuse a grid whose value count cannot fit in the text present (known size only), before allocating."""
    if region_chars is not None and n > (region_chars + 1) // 2:
        raise CdpError(
            f"{name}: header claims a {what} of {n} values but only {region_chars} characters of data follow "
            f"(truncated file or wrong grid size)"
        )


def _fortran_float(piece: str) -> float:
    piece = piece.replace("D", "E").replace("d", "e")
    return float(_MISSING_E.sub(r"E\1", piece))


def split_fortran(token: str) -> Optional[List[Tuple[int, float]]]:
    """Split one whitespace-free token into Fortran numbers as (end offset, value), or None if it is not numbers."""
    if _SPECIAL.fullmatch(token):
        return [(len(token), float(token))]
    if not _NUMBERS_RE.fullmatch(token):
        return None
    return [(m.end(), _fortran_float(m.group())) for m in _NUMBER_RE.finditer(token)]


def numbers_in_line(line: str) -> Optional[int]:
    """How many numbers a line holds (Fortran fields run together count separately), or None if not all numbers."""
    fields = line.split()
    try:
        for f in fields:
            float(f)
        return len(fields)
    except ValueError:
        pass
    count = 0
    for f in fields:
        parts = split_fortran(f)
        if parts is None:
            return None
        count += len(parts)
    return count


def _count_prefix(need: int) -> re.Pattern:
    return re.compile(r"(?:\s*\S+){%d}" % need)


class TextSource:
    """A text density file read through a bounded window (see the module docstring).

    ``source`` is a :class:`cdp.io.compression.Source` (``read(n) -> bytes``, ``size`` or None).
    Every problem raises CdpError naming the file.
    """

    def __init__(self, source, name: str, kind: str):
        self.src, self.name, self.kind = source, name, kind
        self.size = getattr(source, "size", None)
        self.buf = ""
        self.pos = 0
        self.dropped = 0  # characters before buf
        self.eof = False
        self.lineno = 0
        self._dec = codecs.getincrementaldecoder("utf-8")()
        self._first = True
        self._pending: Optional[str] = None
        self._bytes = 0

    # -- window ------------------------------------------------------------------------------------

    def _binary(self, data: bytes):
        codec = sniff_codec(data) if self._first else None
        hint = f" (looks {codec}-compressed; name it with the matching suffix)" if codec else ""
        return CdpError(f"{self.name}: binary data, not a text {self.kind} file{hint}")

    def more(self) -> bool:
        """Append the next chunk of text to the window; False at the end of the file."""
        if self.eof:
            return False
        want = CHUNK if self.size is None else max(1, min(CHUNK, self.size - self._bytes + 1))
        data = self.src.read(want)  # never ask for more than is left: the buffer is sized by the request
        self._bytes += len(data)
        try:
            if not data:
                self.eof = True
                text = self._dec.decode(b"", final=True)
            else:
                if b"\x00" in data:
                    raise self._binary(data)
                text = self._dec.decode(data)
        except UnicodeDecodeError:
            raise self._binary(data) from None
        self._first = False
        self.dropped += self.pos
        self.buf = self.buf[self.pos:] + text
        self.pos = 0
        return bool(data)

    @property
    def offset(self) -> int:
        """Characters consumed so far."""
        return self.dropped + self.pos

    def remaining(self) -> Optional[int]:
        """Characters left when the size is known (uncompressed input; bytes = characters for ASCII), else None."""
        return None if self.size is None else max(0, self.size - self.offset)

    def start(self) -> None:
        """Check the file has text and a header within the first :data:`WINDOW` characters."""
        while len(self.buf) < WINDOW and self.more():
            pass
        if not self.buf[:WINDOW].strip():
            if self.eof and len(self.buf) <= WINDOW:
                raise CdpError(f"{self.name}: file is empty")
            raise CdpError(f"{self.name}: no {self.kind} header in the first {WINDOW // 2**20} MiB (only blank text)")

    def skip_blank(self) -> bool:
        """Consume white space (at most WINDOW characters of it); True when the file ends there."""
        if self._pending is not None:
            return False
        skipped = 0
        while True:
            rest = len(self.buf) - self.pos
            stripped = self.buf[self.pos:].lstrip()
            if stripped:
                self.lineno += self.buf.count("\n", self.pos, len(self.buf) - len(stripped))
                self.pos = len(self.buf) - len(stripped)
                return False
            skipped += rest
            self.lineno += self.buf.count("\n", self.pos)
            self.pos = len(self.buf)
            if skipped > WINDOW:
                raise CdpError(f"{self.name}: {WINDOW // 2**20} MiB of blank text where values should be")
            if not self.more():
                return True

    # -- lines -------------------------------------------------------------------------------------

    def readline(self) -> Optional[str]:
        """The next line without its newline, or None at the end of the file; lines over WINDOW are refused."""
        if self._pending is not None:
            line, self._pending = self._pending, None
            self.lineno += 1
            return line
        while True:
            end = self.buf.find("\n", self.pos)
            if end >= 0:
                line = self.buf[self.pos:end]
                self.pos = end + 1
                self.lineno += 1
                return line.rstrip("\r")
            if len(self.buf) - self.pos > WINDOW:
                raise CdpError(f"{self.name}: line {self.lineno + 1} is longer than {WINDOW // 2**20} MiB")
            if not self.more():
                if self.pos >= len(self.buf):
                    return None
                line = self.buf[self.pos:]
                self.pos = len(self.buf)
                self.lineno += 1
                return line.rstrip("\r")

    def unread(self, line: str) -> None:
        """Give back the line just read (one line at most); the next readline returns it again."""
        self._pending = line
        self.lineno -= 1

    def next(self, what: str) -> str:
        """Return the next line; the end of the file raises a 'header ends before ...' CdpError."""
        line = self.readline()
        if line is None:
            raise CdpError(f"{self.name}: {self.kind} header ends before the {what} (line {self.lineno + 1})")
        return line

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

    def check_atoms(self, natoms: int, chars_per_atom: int, what: str) -> None:
        """Refuse an atom count above MAX_ATOMS or one the rest of the file (when its size is known) cannot hold."""
        left = self.remaining()
        if natoms > MAX_ATOMS or (left is not None and natoms > left // chars_per_atom):
            raise CdpError(f"{self.name}: {what} say {natoms} atoms but the file is too short to hold them"
                           if natoms <= MAX_ATOMS else
                           f"{self.name}: {what} say {natoms} atoms, more than the limit of {MAX_ATOMS}")

    # -- numbers -----------------------------------------------------------------------------------

    def read_numbers(self, out: np.ndarray, what: str) -> None:
        """Fill the 1-D float64 array ``out`` with the next ``out.size`` numbers, chunk by chunk.

        Stops right after the last number (the rest of the window stays for the caller). Raises CdpError
        for a non-number, the end of the file before ``out.size`` numbers ('truncated'), or a run of
        WINDOW characters without a number.
        """
        n = out.size
        filled = 0
        last_number = self.offset
        while filled < n:
            if self.pos >= len(self.buf) and not self.more():
                break
            if self.eof:
                end = len(self.buf)
            else:
                end = max(self.buf.rfind(" ", self.pos), self.buf.rfind("\n", self.pos), self.buf.rfind("\t", self.pos))
                if end <= self.pos:
                    if len(self.buf) - self.pos > WINDOW:
                        raise CdpError(f"{self.name}: a field of over {WINDOW // 2**20} MiB in the {what}")
                    self.more()
                    continue
            region = self.buf[self.pos:end]
            need = n - filled
            tokens = region.split()
            if not tokens:
                self.pos = end
                if self.offset - last_number > WINDOW:
                    raise CdpError(
                        f"{self.name}: {WINDOW // 2**20} MiB of blank text in the {what} without a number "
                        f"(after {filled} of {n} values)"
                    )
                continue
            if len(tokens) > need:
                tokens = tokens[:need]
                m = _count_prefix(need).match(region)
                consumed = m.end()
            else:
                consumed = len(region)
            try:
                vals = np.array(tokens, dtype=np.float64)
            except ValueError:
                vals, consumed = self._fortran(region, need, filled, n, what)
            out[filled:filled + vals.size] = vals
            filled += vals.size
            self.pos += consumed
            last_number = self.offset
        if filled < n:
            raise CdpError(f"{self.name}: truncated {what}: expected {n} values, found {filled}")

    def _fortran(self, region: str, need: int, filled: int, n: int, what: str) -> Tuple[np.ndarray, int]:
        """Slow path: split run-together Fortran fields; returns (at most ``need`` values, characters consumed)."""
        vals: List[float] = []
        consumed = 0
        for m in re.finditer(r"\S+", region):
            parts = split_fortran(m.group())
            if parts is None:
                raise CdpError(
                    f"{self.name}: non-numeric value {snippet(m.group(), 20)} in the {what} after "
                    f"{filled + len(vals)} of {n} values"
                )
            for end, v in parts:
                vals.append(v)
                consumed = m.start() + end
                if len(vals) == need:
                    return np.array(vals, dtype=np.float64), consumed
        return np.array(vals, dtype=np.float64), consumed


def check_finite(values: np.ndarray, name: str, what: str) -> None:
    """Refuse NaN or infinite density values."""
    if not np.isfinite(values).all():
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise CdpError(f"{name}: {bad} non-finite value(s) in the {what}")
