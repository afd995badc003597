"""Fuzzing the CHGCAR and cube readers: truncation, byte flips, random header numbers.

Whatever the damage, a read either succeeds or raises CdpError (no other exception), and memory stays
within what the text present can hold (tracemalloc peak; a declared grid larger than the text is
refused before allocation).
"""

from __future__ import annotations

import gzip
import re
import tracemalloc

import numpy as np
import pytest
from ase import Atoms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cdp.io as cio
from cdp.core.types import CdpError, DensityGrid

AUG = "augmentation occupancies   1   2\n  0.1000000E+00 -0.2000000E-01\naugmentation occupancies   2   1\n" \
      "  0.3000000E+00\n"


def _base_files():
    atoms = Atoms(["Si", "O"], scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.5, 0.4]],
                  cell=[[3.1, 0.1, 0.0], [0.2, 3.3, 0.1], [0.0, -0.2, 3.6]], pbc=True)
    rng = np.random.default_rng(4)
    rho = rng.random((3, 2, 4)) + 0.1
    spin = rng.random((3, 2, 4)) - 0.5
    mag = rng.random((3, 3, 2, 4)) - 0.5
    files = {
        "CHGCAR": cio.format_chgcar(atoms, DensityGrid(cell=atoms.cell.array, values=rho, augmentation=AUG)),
        "spin_CHGCAR": cio.format_chgcar(atoms, DensityGrid(cell=atoms.cell.array, values=rho, spin=spin,
                                                            augmentation=AUG, spin_augmentation=AUG)),
        "nc_CHGCAR": cio.format_chgcar(atoms, DensityGrid(cell=atoms.cell.array, values=rho, magnetisation=mag)),
        "x.cube": cio.format_cube(atoms, DensityGrid(cell=atoms.cell.array, values=rho)),
    }
    files["steps_CHG"] = files["CHGCAR"] + files["CHGCAR"].replace("0.1000000E+00", "0.2000000E+00")
    return {k: v.encode() for k, v in files.items()}


BASE = _base_files()
NAMES = sorted(BASE)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _read_checked(data: bytes, name: str, frame: int = -1) -> None:
    """Read; only CdpError may escape; the allocation peak stays bounded by the text size."""
    tracemalloc.start()
    try:
        cio.read_bytes(data, name, frame=frame)
    except CdpError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(name)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # a grid needs >= 2 characters per value: whatever the header claims, at most a few float64 copies of
    # len(data)/2 values (plus Python objects of a few small lines) may be allocated
    assert peak < 1_000_000 + 200 * len(data), peak


@FUZZ
@given(name=st.sampled_from(NAMES), cut=st.floats(0.0, 1.0))
def test_truncation(name, cut):
    data = BASE[name]
    _read_checked(data[: int(len(data) * cut)], name)


@FUZZ
@given(name=st.sampled_from(NAMES), flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True),
                                                             st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_flips(name, flips):
    data = bytearray(BASE[name])
    for where, byte in flips:
        data[int(where * len(data))] = byte
    _read_checked(bytes(data), name)


_HEADER_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:E[+-]\d+)?")
_NUMBERS = st.one_of(
    st.integers(-10, 10), st.integers(-2**40, 2**62),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "-0.0", "0", "99999999999999999999", "1E-320"]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@FUZZ
@given(name=st.sampled_from(NAMES), picks=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), _NUMBERS),
                                                  min_size=1, max_size=4), frame=st.integers(-3, 2))
def test_random_header_numbers(name, picks, frame):
    data = BASE[name]
    head_end = data.index(b"\n", data.index(b" 3    2    4" if b"CHG" in name.encode() else b"   14 ")) + 1
    head = data[:head_end]
    spans = [m.span() for m in _HEADER_NUMBER.finditer(head)]
    for where, number in picks:
        start, end = spans[int(where * len(spans))]
        new = str(number).encode()
        head = head[:start] + new + head[end:]
        spans = [m.span() for m in _HEADER_NUMBER.finditer(head)]
    _read_checked(head + data[head_end:], name, frame=frame)


@FUZZ
@given(name=st.sampled_from(NAMES), cut=st.floats(0.0, 1.0), flip=st.tuples(st.floats(0.0, 1.0, exclude_max=True),
                                                                           st.integers(0, 255)))
def test_compressed_damage_only_cdp_errors(name, cut, flip):
    data = bytearray(BASE[name])
    data[int(flip[0] * len(data))] = flip[1]
    packed = gzip.compress(bytes(data), mtime=0)
    truncated = packed[: max(1, int(len(packed) * cut))]
    if len(truncated) < len(packed):  # a gzip stream cut short is refused, whatever the text would have been
        with pytest.raises(CdpError) as err:
            cio.read_bytes(truncated, name + ".gz")
        assert "\n" not in str(err.value) and str(err.value).startswith(name + ".gz")
    try:
        cio.read_bytes(packed, name + ".gz")
    except CdpError as exc:  # the damaged text inside an intact stream: read or refused in one line
        assert "\n" not in str(exc) and str(exc).startswith(name + ".gz")


def test_base_files_read():
    for name in NAMES:
        atoms, grid = cio.read_bytes(BASE[name], name)
        assert grid.shape == (3, 2, 4)
    assert cio.read_bytes(BASE["nc_CHGCAR"], "nc_CHGCAR")[1].magnetisation.shape == (3, 3, 2, 4)
