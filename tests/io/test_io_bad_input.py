"""Bad density files: one-line CdpError naming the file, CLI exit code 2 without traceback, no big allocation."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.vasp import VaspChargeDensity
from ase.io.cube import write_cube
from ase.units import Bohr
from click.testing import CliRunner

import cdp.io as cio
from cdp.cli.inspect import command
from cdp.core.types import CdpError


def _atoms():
    rng = np.random.default_rng(3)
    cell = np.array([[3.9, 0.1, 0.0], [0.3, 4.2, 0.2], [0.0, -0.4, 4.6]])
    return Atoms(["Si", "Si", "O"], scaled_positions=rng.random((3, 3)), cell=cell, pbc=True)


def _chgcar_text(tmp_path) -> str:
    """A valid CHGCAR written by ase (an independent writer), 4x3x5 grid."""
    v = VaspChargeDensity(None)
    v.atoms, v.chg = [_atoms()], [np.random.default_rng(0).random((4, 3, 5)) + 0.1]
    v.write(str(tmp_path / "base_CHGCAR"), format="chgcar")
    return (tmp_path / "base_CHGCAR").read_text()


def _cube_text(tmp_path) -> str:
    """A valid cube written by ase, 4x3x5 grid."""
    with open(tmp_path / "base.cube", "w") as fh:
        write_cube(fh, _atoms(), data=(np.random.default_rng(0).random((4, 3, 5)) + 0.1) * Bohr**3)
    return (tmp_path / "base.cube").read_text()


def _replace_line(text: str, index: int, new: str) -> str:
    lines = text.split("\n")
    lines[index] = new
    return "\n".join(lines)


def _chgcar_values_start(text: str) -> int:
    return text.index("\n    4    3    5\n") + len("\n    4    3    5\n")


def _cube_values_start(text: str) -> int:
    lines = text.split("\n")
    return len("\n".join(lines[:9])) + 1  # 2 comments, origin, 3 axes, 3 atoms


# each case: file name, bytes builder(tmp_path) -> bytes, expected fragment of the message
CASES = {
    "chgcar_empty": ("CHGCAR", lambda t: b"", "empty"),
    "chgcar_blank": ("CHGCAR", lambda t: b"  \n\n", "empty"),
    "cube_empty": ("e.cube", lambda t: b"", "empty"),
    "chgcar_header_only": ("CHGCAR", lambda t: _chgcar_text(t)[: _chgcar_text(t).index("\n\n") + 1].encode(), "header only"),
    "chgcar_dims_without_values": ("CHGCAR", lambda t: _chgcar_text(t)[: _chgcar_values_start(_chgcar_text(t))].encode(), "header only"),
    "chgcar_header_cut_in_lattice": ("CHGCAR", lambda t: "\n".join(_chgcar_text(t).split("\n")[:3]).encode(), "header ends"),
    "cube_header_only": ("h.cube", lambda t: _cube_text(t)[: _cube_values_start(_cube_text(t))].encode(), "header only"),
    "chgcar_truncated": ("CHGCAR", lambda t: _chgcar_text(t)[: _chgcar_values_start(_chgcar_text(t)) + 200].encode(), "truncated"),
    "cube_truncated": ("t.cube", lambda t: _cube_text(t)[: _cube_values_start(_cube_text(t)) + 200].encode(), "truncated"),
    "chgcar_binary": ("CHGCAR", lambda t: bytes(range(256)) * 8, "binary"),
    "cube_binary": ("b.cube", lambda t: b"\x00\x01\x02" * 100, "binary"),
    "chgcar_zlib_without_suffix": ("CHGCAR", lambda t: zlib.compress(_chgcar_text(t).encode()), "binary"),
    "chgcar_no_atoms": ("CHGCAR", lambda t: _replace_line(_chgcar_text(t), 6, "   0   0").encode(), "no atoms"),
    "cube_no_atoms": ("n.cube", lambda t: _replace_line(_cube_text(t), 2, "    0    0.0 0.0 0.0").encode(), "no atoms"),
    "chgcar_unknown_element": ("CHGCAR", lambda t: _replace_line(_chgcar_text(t), 5, " Si Xq").encode(), "unknown element"),
    "cube_unknown_element": ("u.cube", lambda t: _replace_line(_cube_text(t), 6, "  150 0.0 1.0 1.0 1.0").encode(), "unknown element"),
    "cube_element_zero": ("z.cube", lambda t: _replace_line(_cube_text(t), 6, "  0 0.0 1.0 1.0 1.0").encode(), "unknown element"),
    "chgcar_nan_position": ("CHGCAR", lambda t: _replace_line(_chgcar_text(t), 9, "  nan 0.1 0.2").encode(), "non-finite"),
    "cube_inf_position": ("p.cube", lambda t: _replace_line(_cube_text(t), 7, " 14 14.0 inf 1.0 1.0").encode(), "non-finite"),
    "chgcar_singular_cell": ("CHGCAR", lambda t: _replace_line(_chgcar_text(t), 4, " 3.9 0.1 0.0").encode(), "singular"),
    "cube_singular_cell": ("s.cube", lambda t: _replace_line(_cube_text(t), 5, "    5 0.0 0.0 0.0").encode(), "singular"),
    "chgcar_nan_density": ("CHGCAR", lambda t: (lambda s: s[: _chgcar_values_start(s)] + " NaN" + s[_chgcar_values_start(s) + 18:])(_chgcar_text(t)).encode(), "non-finite"),
    "cube_nan_density": ("v.cube", lambda t: (lambda s: s[: _cube_values_start(s)] + " nan " + s[_cube_values_start(s):].split(None, 1)[1])(_cube_text(t)).encode(), "non-finite"),
    "chgcar_garbage_density": ("CHGCAR", lambda t: (lambda s: s[: _chgcar_values_start(s)] + " *****" + s[_chgcar_values_start(s) + 18:])(_chgcar_text(t)).encode(), "non-numeric"),
    "chgcar_count_more_than_positions": ("CHGCAR", lambda t: _replace_line(_chgcar_text(t), 6, "   2   2").encode(), "atom counts"),
    "chgcar_count_fewer_than_positions": ("CHGCAR", lambda t: _replace_line(_chgcar_text(t), 6, "   2   0").encode(), "atom counts"),
    "cube_count_more_than_atom_lines": ("c.cube", lambda t: _replace_line(_cube_text(t), 2, "    4 0.0 0.0 0.0").encode(), "atom count"),
    "cube_count_fewer_than_atom_lines": ("f.cube", lambda t: _replace_line(_cube_text(t), 2, "    2 0.0 0.0 0.0").encode(), "atom count"),
    "cube_orbital": ("o.cube", lambda t: _replace_line(_cube_text(t), 2, "   -3 0.0 0.0 0.0").encode(), "orbital"),
    "chgcar_huge_grid": ("CHGCAR", lambda t: _chgcar_text(t).replace("\n    4    3    5\n", "\n 10000 10000 10000\n").encode(), "header claims"),
    "cube_huge_grid": ("g.cube", lambda t: _replace_line(_replace_line(_cube_text(t), 3, " 100000 0.1 0.0 0.0"), 4, " 100000 0.0 0.1 0.0").encode(), "header claims"),
    "chgcar_three_blocks": ("CHGCAR", lambda t: (lambda s, d: s + d + s[_chgcar_values_start(s):] + d + s[_chgcar_values_start(s):])(_chgcar_text(t), "    4    3    5\n").encode(), "3 density blocks"),
    "gz_plain_text": ("CHGCAR.gz", lambda t: _chgcar_text(t).encode(), "gzip"),
    "gz_truncated": ("CHGCAR.gz", lambda t: gzip.compress(_chgcar_text(t).encode())[:300], "corrupt gzip"),
    "lz4_holding_gzip": ("x.cube.lz4", lambda t: gzip.compress(_cube_text(t).encode()), "gzip"),
    "lz4_truncated": ("x.cube.lz4", lambda t: __import__("lz4.frame").frame.compress(_cube_text(t).encode())[:100], "corrupt lz4"),
    "zz_plain_text": ("x.cube.zz", lambda t: _cube_text(t).encode(), "zlib"),
    "zz_corrupt": ("x.cube.zz", lambda t: (lambda b: b[:40] + bytes(40) + b[80:])(zlib.compress(_cube_text(t).encode())), "corrupt zlib"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_gives_one_line_error(tmp_path, case):
    fname, build, fragment = CASES[case]
    path = tmp_path / fname
    path.write_bytes(build(tmp_path))
    with pytest.raises(CdpError) as info:
        cio.read(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert fragment.lower() in msg.lower(), msg

    res = CliRunner().invoke(command, [str(path)])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and str(path) in err


def test_missing_file(tmp_path):
    with pytest.raises(CdpError, match="no such file"):
        cio.read(tmp_path / "CHGCAR")
    res = CliRunner().invoke(command, [str(tmp_path / "nothing.cube")])
    assert res.exit_code == 2 and "no such file" in res.output and "Traceback" not in res.output


def test_huge_header_fails_fast_without_allocation(tmp_path):
    """A header claiming 10^12 points over a few hundred bytes of data is refused before any array exists."""
    text = _chgcar_text(tmp_path).replace("\n    4    3    5\n", "\n 10000 10000 10000\n")
    path = tmp_path / "CHGCAR"
    path.write_text(text)
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(CdpError, match="header claims"):
        cio.read(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * len(text) + 2_000_000  # far below the 8 TB the header claims: nothing was allocated


def test_bad_structure_refused_on_write(tmp_path):
    from cdp.core.types import DensityGrid

    rho = np.ones((2, 2, 2))
    with pytest.raises(CdpError, match="no atoms"):
        cio.write(tmp_path / "CHGCAR", Atoms(cell=np.eye(3) * 3, pbc=True), DensityGrid(cell=np.eye(3) * 3, values=rho))
    atoms = _atoms()
    with pytest.raises(CdpError, match="singular"):
        cio.write(tmp_path / "CHGCAR", atoms, DensityGrid(cell=np.zeros((3, 3)), values=rho))
    assert not any(tmp_path.iterdir())


def test_unsupported_format_name(tmp_path):
    (tmp_path / "rho.npy").write_bytes(b"x")
    res = CliRunner().invoke(command, [str(tmp_path / "rho.npy")])
    assert res.exit_code == 2 and "format" in res.output
