"""CHGCAR / cube I/O: parity with ase's readers, round trips, compression, pbc sidecars, inspect CLI."""

from __future__ import annotations

import gzip
import json
import os
import zlib

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.vasp import VaspChargeDensity
from ase.io import read as ase_read
from ase.io.cube import read_cube_data, write_cube
from ase.units import Bohr
from click.testing import CliRunner

import cdp.io as cio
from cdp.cli.inspect import command
from cdp.core.types import CdpError, DensityGrid

AUG = (
    "augmentation occupancies   1   3\n  0.1234567E+00  -0.2000000E-01  0.3000000E+00\n"
    "augmentation occupancies   2   2\n  0.4000000E+00  0.5000000E+00\n"
    "augmentation occupancies   3   1\n  0.6000000E+00\n"
    "augmentation occupancies   4   1\n  0.7000000E+00\n"
)
AUG_SPIN = "augmentation occupancies   1   1\n -0.1000000E-02\naugmentation occupancies   2   1\n  0.2000000E-02\n"


def triclinic_atoms(order=("Si", "Si", "O", "H")) -> Atoms:
    rng = np.random.default_rng(1)
    cell = np.array([[4.1, 0.2, -0.3], [0.7, 4.9, 0.4], [-0.5, 0.6, 5.7]])
    return Atoms(list(order), scaled_positions=rng.random((len(order), 3)), cell=cell, pbc=True)


def grids(shape=(6, 5, 7), seed=0):
    rng = np.random.default_rng(seed)
    rho = rng.random(shape) * 2.0 + 0.01
    mag = rng.random(shape) - 0.5
    return rho, mag


def ase_chgcar(path, atoms, rho, mag=None, aug="", augdiff=""):
    """Write a CHGCAR with ase (independent writer) and return the path."""
    v = VaspChargeDensity(None)
    v.atoms, v.chg = [atoms], [rho]
    if mag is not None:
        v.chgdiff = [mag]
    v.aug, v.augdiff = aug, augdiff
    v.write(str(path), format="chgcar")
    return path


def ase_atoms(path) -> Atoms:
    """Atoms as ase's CHGCAR reader sees them (``ase.io.read(format="vasp")`` trips over the grid line)."""
    return VaspChargeDensity(str(path)).atoms[-1]


# ------------------------------------------------------------------------------------------ CHGCAR


def test_chgcar_read_matches_ase(tmp_path):
    atoms = triclinic_atoms()
    rho, mag = grids()
    path = ase_chgcar(tmp_path / "CHGCAR", atoms, rho, mag, AUG, AUG_SPIN)
    got_atoms, grid = cio.read(path)
    ref = VaspChargeDensity(str(path))
    ref_atoms = ase_atoms(path)
    np.testing.assert_allclose(grid.values, ref.chg[-1], rtol=1e-13, atol=0)
    np.testing.assert_allclose(grid.spin, ref.chgdiff[-1], rtol=1e-13, atol=1e-300)
    assert grid.augmentation == ref.aug == AUG
    assert grid.spin_augmentation == ref.augdiff == AUG_SPIN
    assert got_atoms.get_chemical_symbols() == ref_atoms.get_chemical_symbols()
    np.testing.assert_allclose(got_atoms.positions, ref_atoms.positions, atol=1e-12)
    np.testing.assert_allclose(grid.cell, ref_atoms.cell.array, atol=1e-12)
    np.testing.assert_array_equal(grid.origin, 0.0)
    assert got_atoms.pbc.all() and grid.pbc.all()
    # values are ρ·V in the file: their mean is the electron count
    np.testing.assert_allclose(grid.electrons, rho.mean() * atoms.get_volume(), rtol=1e-9)


def test_chgcar_round_trip_spin_augmentation_and_ase_reads_it(tmp_path):
    atoms = triclinic_atoms()
    rho, mag = grids()
    grid = DensityGrid(cell=atoms.cell.array.copy(), values=rho, spin=mag, augmentation=AUG, spin_augmentation=AUG_SPIN)
    path = tmp_path / "out.chgcar"
    cio.write(path, atoms, grid)
    a2, g2 = cio.read(path)
    np.testing.assert_allclose(g2.values, rho, rtol=1e-10)
    np.testing.assert_allclose(g2.spin, mag, rtol=1e-10, atol=1e-12)
    assert g2.augmentation == AUG and g2.spin_augmentation == AUG_SPIN
    np.testing.assert_allclose(a2.positions, atoms.positions, atol=1e-12)
    # ase reads the cdp-written file to the same values (same text, same precision)
    ref = VaspChargeDensity(str(path))
    np.testing.assert_allclose(ref.chg[-1], g2.values, rtol=1e-13)
    np.testing.assert_allclose(ref.chgdiff[-1], g2.spin, rtol=1e-13, atol=1e-300)
    assert ref.aug == AUG and ref.augdiff == AUG_SPIN
    np.testing.assert_allclose(ase_atoms(path).positions, atoms.positions, atol=1e-12)


def test_chgcar_values_in_vasp_style(tmp_path):
    atoms = triclinic_atoms()
    rho, _ = grids((2, 3, 4))
    rho[0, 0, 0] = -rho[0, 0, 0]
    path = tmp_path / "CHGCAR"
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho))
    lines = path.read_text().splitlines()
    i = lines.index(" %4d %4d %4d" % rho.shape)
    data = lines[i + 1:]
    assert len(data) == 24 // 5 + 1 and all(len(l.split()) == 5 for l in data[:-1])
    first = data[0].split()
    assert first[0].startswith("-0.") and first[1].startswith("0.") and "E" in first[1]
    # x fastest: second file value is values[1, 0, 0] · V
    np.testing.assert_allclose(float(first[1]), rho[1, 0, 0] * atoms.get_volume(), rtol=1e-10)


def test_chgcar_write_groups_species_in_first_appearance_order(tmp_path):
    atoms = triclinic_atoms(("O", "Si", "H", "Si", "O"))
    rho, _ = grids()
    path = tmp_path / "CHGCAR"
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho))
    lines = path.read_text().splitlines()
    assert lines[5].split() == ["O", "Si", "H"] and lines[6].split() == ["2", "2", "1"]
    a2, g2 = cio.read(path)
    order = [0, 4, 1, 3, 2]
    assert a2.get_chemical_symbols() == [atoms.get_chemical_symbols()[i] for i in order]
    np.testing.assert_allclose(a2.positions, atoms.positions[order], atol=1e-12)
    np.testing.assert_allclose(g2.values, rho, rtol=1e-10)


def test_chgcar_augmentation_cannot_follow_reordered_atoms(tmp_path):
    atoms = triclinic_atoms(("O", "Si", "O"))
    rho, _ = grids()
    grid = DensityGrid(cell=atoms.cell.array, values=rho, augmentation=AUG)
    with pytest.raises(CdpError, match="augmentation"):
        cio.write(tmp_path / "CHGCAR", atoms, grid)


def test_chgcar_magmom_line_before_spin_block_is_tolerated(tmp_path):
    atoms = triclinic_atoms()
    rho, mag = grids()
    src = ase_chgcar(tmp_path / "src_CHGCAR", atoms, rho, mag, AUG, AUG_SPIN).read_text()
    moments = "  0.100E+01 -0.500E+00  0.000E+00  0.000E+00\n"
    dims = " %4d %4d %4d\n" % rho.shape
    head, sep, tail = src.partition(AUG)
    text = head + AUG + moments + tail
    (tmp_path / "CHGCAR").write_text(text)
    _, grid = cio.read(tmp_path / "CHGCAR")
    np.testing.assert_allclose(grid.spin, mag, rtol=1e-10, atol=1e-12)
    assert grid.augmentation == AUG + moments
    out = tmp_path / "again_CHGCAR"
    cio.write(out, *cio.read(tmp_path / "CHGCAR"))
    assert AUG + moments + dims in out.read_text()

    # the same line without augmentation text between the blocks
    bare = ase_chgcar(tmp_path / "bare_CHGCAR", atoms, rho, mag).read_text()
    first, _, second = bare.partition(dims)
    idx = second.index(dims)
    (tmp_path / "moments_CHGCAR").write_text(first + dims + second[:idx] + moments + second[idx:])
    _, g3 = cio.read(tmp_path / "moments_CHGCAR")
    np.testing.assert_allclose(g3.values, rho, rtol=1e-10)
    np.testing.assert_allclose(g3.spin, mag, rtol=1e-10, atol=1e-12)


def test_chgcar_hand_written_header_variants(tmp_path):
    """Scale factor, Selective dynamics, Cartesian positions, VASP-6 species suffixes, 3-digit exponents."""
    text = (
        "test\n 2.0\n 2.0 0.0 0.0\n 0.0 2.0 0.0\n 0.5 0.0 2.5\n Fe_pv/abc O\n 1 1\nSelective dynamics\n"
        "Cartesian\n 0.1 0.2 0.3 T T F\n 1.0 1.5 2.0 F F F\n\n 2 1 2\n"
        " 0.10000000000E+01 0.20000000000E+01 0.30000000000E+01 0.40000000000E+01\n"
    )
    path = tmp_path / "CHGCAR"
    path.write_text(text)
    atoms, grid = cio.read(path)
    (tmp_path / "POSCAR").write_text(text.split("\n\n")[0] + "\n")
    ref = ase_read(str(tmp_path / "POSCAR"), format="vasp")
    assert atoms.get_chemical_symbols() == ["Fe", "O"] == ref.get_chemical_symbols()
    np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-12)
    np.testing.assert_allclose(atoms.cell.array, ref.cell.array, atol=1e-12)
    vol = ref.get_volume()
    np.testing.assert_allclose(grid.values[:, 0, :], np.array([[1.0, 3.0], [2.0, 4.0]]) / vol, rtol=1e-14)
    # Fortran drops the E of three-digit exponents
    path.write_text(text.replace("0.40000000000E+01", "0.40000000000-100"))
    _, g2 = cio.read(path)
    np.testing.assert_allclose(g2.values[1, 0, 1], 0.4e-100 / vol, rtol=1e-12)


def test_pymatgen_reads_cdp_chgcar(tmp_path):
    pmg = pytest.importorskip("pymatgen.io.vasp.outputs")
    atoms = triclinic_atoms()
    rho, mag = grids()
    path = tmp_path / "CHGCAR"
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho, spin=mag))
    chg = pmg.Chgcar.from_file(str(path))
    np.testing.assert_allclose(chg.data["total"] / atoms.get_volume(), rho, rtol=1e-10)
    np.testing.assert_allclose(chg.data["diff"] / atoms.get_volume(), mag, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------ cube


def test_cube_read_matches_ase(tmp_path):
    atoms = triclinic_atoms()
    rho, _ = grids((5, 6, 7))
    origin = np.array([0.3, -0.2, 0.1])
    path = tmp_path / "x.cube"
    with open(path, "w") as fh:
        write_cube(fh, atoms, data=rho * Bohr**3, origin=origin)
    got_atoms, grid = cio.read(path)
    data, ref_atoms = read_cube_data(str(path))
    np.testing.assert_allclose(grid.values, data / Bohr**3, rtol=1e-14)
    np.testing.assert_allclose(grid.values, rho, rtol=1e-5)
    np.testing.assert_allclose(got_atoms.positions, ref_atoms.positions, atol=1e-5)
    np.testing.assert_allclose(grid.cell, ref_atoms.cell.array, atol=1e-5)
    np.testing.assert_allclose(grid.origin, origin, atol=1e-5)
    assert got_atoms.numbers.tolist() == atoms.numbers.tolist()


def test_cube_round_trip_and_ase_reads_it(tmp_path):
    atoms = triclinic_atoms()
    rho, _ = grids((5, 6, 7))
    origin = np.array([0.3, -0.2, 0.1])
    grid = DensityGrid(cell=atoms.cell.array, values=rho, origin=origin)
    path = tmp_path / "x.cube"
    cio.write(path, atoms, grid)
    a2, g2 = cio.read(path)
    np.testing.assert_allclose(g2.values, rho, rtol=1e-8)
    np.testing.assert_allclose(g2.cell, atoms.cell.array, atol=1e-10)
    np.testing.assert_allclose(g2.origin, origin, atol=1e-10)
    np.testing.assert_allclose(a2.positions, atoms.positions, atol=1e-10)
    data, ref_atoms = read_cube_data(str(path))
    np.testing.assert_allclose(data / Bohr**3, g2.values, rtol=1e-14)
    np.testing.assert_allclose(ref_atoms.positions, a2.positions, atol=1e-10)
    # grid point (i, j, k) at origin + (i/n) cell: a point the voxel vectors give directly
    np.testing.assert_allclose(g2.grid_points(1, 2)[0], origin + g2.cell[2] / 7, atol=1e-10)


def test_cube_units_angstrom(tmp_path):
    atoms = triclinic_atoms()
    rho, _ = grids((3, 4, 5))
    path = tmp_path / "pred.cube"
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho), units="angstrom")
    data, _ = read_cube_data(str(path))
    np.testing.assert_allclose(data, rho, rtol=1e-8)  # raw e/Å³ in the file, as DeepDFT's predictor writes
    _, g = cio.read(path, units="angstrom")
    np.testing.assert_allclose(g.values, rho, rtol=1e-8)
    _, g_wrong = cio.read(path)
    np.testing.assert_allclose(g_wrong.values, rho / Bohr**3, rtol=1e-8)


def test_cube_negative_voxel_counts_mean_angstrom(tmp_path):
    text = (
        "c\nc\n 1 0.0 0.0 0.0\n -2 1.5 0.0 0.0\n -1 0.0 2.0 0.0\n -2 0.0 0.0 2.5\n"
        " 1 1.0 0.5 0.5 0.5\n 1.0 2.0\n 3.0 4.0\n"
    )
    (tmp_path / "a.cube").write_text(text)
    atoms, grid = cio.read(tmp_path / "a.cube")
    np.testing.assert_allclose(grid.cell, np.diag([3.0, 2.0, 5.0]))
    np.testing.assert_allclose(atoms.positions, [[0.5, 0.5, 0.5]])
    np.testing.assert_allclose(grid.values.ravel(), np.array([1, 2, 3, 4]) / Bohr**3)


# ------------------------------------------------------------------------------------ compression


@pytest.mark.parametrize("suffix,magic", [(".gz", b"\x1f\x8b"), (".lz4", b"\x04\x22\x4d\x18"), (".zz", b"\x78")])
@pytest.mark.parametrize("base", ["CHGCAR", "x.cube"])
def test_compressed_round_trip(tmp_path, suffix, magic, base):
    atoms = triclinic_atoms()
    rho, mag = grids()
    spin = mag if base == "CHGCAR" else None
    path = tmp_path / (base + suffix)
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho, spin=spin))
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # atomic: no temporary left behind
    _, g = cio.read(path)
    np.testing.assert_allclose(g.values, rho, rtol=1e-8)
    if spin is not None:
        np.testing.assert_allclose(g.spin, mag, rtol=1e-10, atol=1e-12)
    # the uncompressed bytes equal a plain write
    plain = tmp_path / base
    cio.write(plain, atoms, DensityGrid(cell=atoms.cell.array, values=rho, spin=spin))
    raw = path.read_bytes()
    if suffix == ".gz":
        raw = gzip.decompress(raw)
    elif suffix == ".zz":
        raw = zlib.decompress(raw)
    else:
        import lz4.frame

        raw = lz4.frame.decompress(raw)
    assert raw == plain.read_bytes()


def test_read_bytes_for_archive_members(tmp_path):
    atoms = triclinic_atoms()
    rho, _ = grids()
    path = tmp_path / "m.cube.lz4"
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho))
    _, g = cio.read_bytes(path.read_bytes(), "member/m.cube.lz4", pbc=False)
    np.testing.assert_allclose(g.values, rho, rtol=1e-8)
    assert not g.pbc.any()


def test_failed_write_keeps_existing_file(tmp_path):
    atoms = triclinic_atoms()
    rho, _ = grids()
    path = tmp_path / "CHGCAR"
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho))
    before = path.read_bytes()
    bad = rho.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(CdpError, match="non-finite"):
        cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=bad))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CHGCAR"]


# ------------------------------------------------------------------------------------------ pbc


def test_pbc_defaults_sidecar_and_override(tmp_path):
    atoms = triclinic_atoms()
    rho, _ = grids()
    path = tmp_path / "mol.cube.gz"
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho))
    assert not (tmp_path / "mol.cube.gz.json").exists()
    a, g = cio.read(path)
    assert a.pbc.all() and g.pbc.all()  # default: periodic

    (tmp_path / "mol.cube.json").write_text(json.dumps({"pbc": False}))  # sidecar without the .gz
    a, g = cio.read(path)
    assert not a.pbc.any() and not g.pbc.any()
    (tmp_path / "mol.cube.gz.json").write_text(json.dumps({"pbc": [True, True, False]}))  # more specific
    a, g = cio.read(path)
    assert a.pbc.tolist() == [True, True, False] == g.pbc.tolist()
    a, g = cio.read(path, pbc=True)  # explicit argument wins
    assert a.pbc.all()

    (tmp_path / "bad.cube").write_bytes(path.read_bytes() and gzip.decompress(path.read_bytes()))
    (tmp_path / "bad.cube.json").write_text(json.dumps({"pbc": "no"}))
    with pytest.raises(CdpError, match="bad.cube.json"):
        cio.read(tmp_path / "bad.cube")


def test_write_records_non_periodic_pbc_in_sidecar(tmp_path):
    atoms = triclinic_atoms()
    atoms.pbc = False
    rho, _ = grids()
    path = tmp_path / "CHGCAR"
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho))
    assert json.loads((tmp_path / "CHGCAR.json").read_text()) == {"pbc": False}
    a, g = cio.read(path)
    assert not a.pbc.any() and not g.pbc.any()
    atoms.pbc = True  # rewriting as periodic must not leave a contradicting sidecar
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho))
    assert cio.read(path)[0].pbc.all()


def test_detect_format():
    assert cio.detect_format("a/b/CHGCAR") == "chgcar"
    assert cio.detect_format("Si_AECCAR2.lz4") == "chgcar"
    assert cio.detect_format("x.PARCHG.0001.gz") == "chgcar"
    assert cio.detect_format("mp-1.chgcar.zz") == "chgcar"
    for name, fmt in (("mp-1.vasp.zz", None), ("POSCAR.vasp", None), ("CHGCAR", "vasp")):
        with pytest.raises(CdpError, match="POSCAR structure"):  # ase's convention: .vasp is a POSCAR
            cio.detect_format(name, format=fmt)
    assert cio.detect_format("0001.cube.zz") == "cube"
    assert cio.detect_format("whatever", format="cube") == "cube"
    with pytest.raises(CdpError, match="format"):
        cio.detect_format("density.npy")


# --------------------------------------------------------------------------------------- inspect


def test_describe_and_inspect_cli(tmp_path):
    atoms = triclinic_atoms()
    rho, mag = grids()
    path = tmp_path / "CHGCAR.gz"
    cio.write(path, atoms, DensityGrid(cell=atoms.cell.array, values=rho, spin=mag, augmentation=AUG))
    info = cio.describe(path)
    vol = atoms.get_volume()
    assert info["grid_shape"] == list(rho.shape) and info["natoms"] == 4 and info["spin"] is True
    np.testing.assert_allclose(info["electrons"], rho.sum() * vol / rho.size, rtol=1e-9)
    np.testing.assert_allclose(info["magnetisation"], mag.sum() * vol / rho.size, rtol=1e-8)
    np.testing.assert_allclose(info["density_max"], rho.max(), rtol=1e-10)
    np.testing.assert_allclose(info["spacing"], np.linalg.norm(atoms.cell.array, axis=1) / rho.shape)

    res = CliRunner().invoke(command, [str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["grid_shape"] == list(rho.shape)
    res = CliRunner().invoke(command, [str(path)])
    assert res.exit_code == 0
    assert "6 x 5 x 7" in res.output and "spin:       yes" in res.output and "H" in res.output
