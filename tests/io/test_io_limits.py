"""Memory bombs and oversized declarations: refused with bounded memory (peak RSS of `cdp inspect`, measured)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

import cdp.io as cio
import cdp.io._text as text_mod
from cdp.core.types import CdpError, DensityGrid

MIB = 1 << 20
from tests.helpers.paths import REPO


def _header(dims=(64, 64, 64)) -> str:
    return ("bomb\n 1.0\n 5.0 0.0 0.0\n 0.0 5.0 0.0\n 0.0 0.0 5.0\n Si\n 1\nDirect\n 0.0 0.0 0.0\n\n"
            + " %d %d %d\n" % dims)


def _cube_header(dims=(64, 64, 64)) -> str:
    return ("bomb\nbomb\n    1 0.0 0.0 0.0\n" + "".join(
        f"{n:5d} {0.2 * (i == 0):.3f} {0.2 * (i == 1):.3f} {0.2 * (i == 2):.3f}\n" for i, n in enumerate(dims))
        + "   14 14.0 0.0 0.0 0.0\n")


def _gzip_bomb(path: Path, head: bytes, fill: bytes = b" ", mib: int = 512) -> Path:
    """``head`` then ``mib`` MiB of ``fill`` as one gzip member (~1 kB per MiB), built without compressing it all.

    After a full flush deflate starts afresh, so every MiB of ``fill`` compresses to the same bytes:
    they are compressed once and repeated; the trailer's CRC is computed over the whole text.
    """
    import struct
    import zlib

    chunk = fill * MIB
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH) == block
    end = c.flush()
    crc = zlib.crc32(head)
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    with open(path, "wb") as fh:
        fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first)
        for _ in range(mib):
            fh.write(block)
        fh.write(end + struct.pack("<II", crc, (len(head) + mib * MIB) & 0xFFFFFFFF))
    return path


def test_gzip_bomb_is_valid_gzip(tmp_path):
    path = _gzip_bomb(tmp_path / "b.gz", b"head\n", mib=3)
    assert gzip.decompress(path.read_bytes()) == b"head\n" + b" " * (3 * MIB)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    return {
        "bare": (_gzip_bomb(d / "bare.CHGCAR.gz", b""), "no CHGCAR header in the first 1 MiB"),
        "after_header": (_gzip_bomb(d / "head.CHGCAR.gz", _header().encode()), "1 MiB of blank text"),
        "after_values": (_gzip_bomb(d / "vals.CHGCAR.gz", (_header() + " 0.1E+01" * 1000 + "\n").encode(), mib=64),
                         "1 MiB of blank text"),
        "cube_after_header": (_gzip_bomb(d / "head.cube.gz", _cube_header().encode(), mib=64), "1 MiB of blank text"),
        "long_line": (_gzip_bomb(d / "line.CHGCAR.gz", b"", fill=b"x", mib=64), "longer than 1 MiB"),
        "long_field": (_gzip_bomb(d / "field.CHGCAR.gz", _header().encode(), fill=b"1", mib=64), "field of over 1 MiB"),
    }


def test_bombs_refused_with_bounded_peak_rss(bombs):
    """All bombs in one `cdp inspect` process: its peak RSS (getrusage) stays under 400 MB."""
    paths = {k: str(v[0]) for k, v in bombs.items()}
    code = (
        "import json, resource, sys\n"
        "from cdp.cli.main import main\n"
        "def run(p):\n"
        "    try:\n"
        "        return main(['inspect', p])\n"
        "    except SystemExit as exc:\n"
        "        return exc.code\n"
        "codes = {k: run(p) for k, p in json.loads(sys.argv[1]).items()}\n"
        "print(json.dumps({'codes': codes, 'peak_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # started from a small launcher: on Linux a child's ru_maxrss starts at its parent's at fork (pytest's)
    launch = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"
    res = subprocess.run([sys.executable, "-c", launch, sys.executable, "-c", code, json.dumps(paths)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["codes"] == {k: 2 for k in paths}, res.stderr
    errors = res.stderr.strip().splitlines()
    assert len(errors) == len(paths) and all(e.startswith("error: ") for e in errors)
    for (key, (path, fragment)), line in zip(bombs.items(), errors):
        assert str(path) in line and fragment in line, (key, line)
    peak_mb = out["peak_kib"] * 1024 / 1e6
    print(f"peak RSS of cdp inspect over {len(paths)} bombs: {peak_mb:.0f} MB")
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"


def test_decompressed_window_is_bounded(bombs):
    """In-process: at most CHUNK + WINDOW characters of text are held while a bomb is refused."""
    seen = []
    real_more = text_mod.TextSource.more

    def more(self):
        r = real_more(self)
        seen.append(len(self.buf))
        return r

    text_mod.TextSource.more = more
    try:
        for path, fragment in bombs.values():
            with pytest.raises(CdpError, match=fragment):
                cio.read(path)
    finally:
        text_mod.TextSource.more = real_more
    assert max(seen) <= text_mod.CHUNK + text_mod.WINDOW <= 16 * MIB


def test_declared_grid_checked_before_allocation(tmp_path, monkeypatch):
    path = tmp_path / "big.CHGCAR.gz"  # compressed: the text size is unknown, so the declaration is checked
    path.write_bytes(gzip.compress((_header((3000, 3000, 3000)) + " 0.1E+01\n").encode()))
    with pytest.raises(CdpError, match="27000000000 points, more than the limit"):
        cio.read(path)
    path.write_bytes(gzip.compress((_header((1000, 1000, 100)) + " 0.1E+01\n").encode()))
    monkeypatch.setattr(text_mod, "available_memory", lambda: 200 * MIB)
    with pytest.raises(CdpError, match=r"needs 1\.5 GiB; only 0\.2 GiB of memory are available"):
        cio.read(path)
    cube = tmp_path / "big.cube.xz"
    import lzma

    cube.write_bytes(lzma.compress((_cube_header((1000, 1000, 100)) + " 0.1E+01\n").encode()))
    with pytest.raises(CdpError, match="GiB of memory are available"):
        cio.read(cube)
    with pytest.raises(CdpError, match="atoms, more than the limit"):
        cio.read_bytes(gzip.compress(_header().replace(" Si\n 1\n", " Si\n 5000000\n").encode()), "x.CHGCAR.gz")


def test_legit_large_grid_reads_with_small_overhead(tmp_path):
    """A real 64³ CHGCAR.gz: the reader's extra memory is the two grid copies plus a bounded window."""
    import tracemalloc

    atoms = Atoms("Si", cell=np.eye(3) * 5.0, pbc=True)
    rho = np.random.default_rng(0).random((64, 64, 64))
    cio.write(tmp_path / "x.CHGCAR.gz", atoms, DensityGrid(cell=atoms.cell.array, values=rho))
    tracemalloc.start()
    _, grid = cio.read(tmp_path / "x.CHGCAR.gz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_allclose(grid.values, rho, rtol=1e-10)
    assert peak < 2 * rho.nbytes + 16 * MIB


@pytest.mark.parametrize("suffix", [".gz", ".zz", ".bz2", ".xz", ".lz4"])
def test_every_codec_is_read_through_a_bounded_window(suffix):
    """8 MiB of blanks after a valid header, in each codec: refused holding under 16 MiB (tracemalloc)."""
    import tracemalloc

    from cdp.io.compression import SUFFIXES, compress

    data = compress(_header().encode() + b" " * (8 * MIB), SUFFIXES[suffix])
    tracemalloc.start()
    with pytest.raises(CdpError, match="1 MiB of blank text"):
        cio.read_bytes(data, "x.CHGCAR" + suffix)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * MIB
