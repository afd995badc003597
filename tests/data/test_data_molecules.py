"""Real PySCF reference densities through ``cdp data make molecules``: electrons, grid convention, round trip, symmetry."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("pyscf")

import ase.io  # noqa: E402
from ase import Atoms  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import cdp.io  # noqa: E402
from cdp.core.types import CdpError  # noqa: E402
from cdp.data.molecules import (  # noqa: E402
    COARSE_TOLERANCE,
    FINE_TOLERANCE,
    compute_molecule,
    density_on_points,
    electron_tolerance,
    make_box,
    make_molecules,
    run_scf,
)

WATER = Atoms("OH2", positions=[[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
# A deliberately asymmetric water (no symmetry that could hide a transposed axis).
WATER_TILTED = Atoms("OH2", positions=[[0.03, -0.02, 0.11], [0.21, 0.74, -0.45], [-0.12, -0.69, -0.52]])


def _emae(a: np.ndarray, b: np.ndarray) -> float:
    return 100.0 * float(np.abs(a - b).sum() / np.abs(a).sum())


def test_cli_end_to_end_methane(tmp_path):
    from ase.build import molecule

    from cdp.cli.data import command

    ch4 = molecule("CH4")
    src = tmp_path / "ch4.xyz"
    ase.io.write(src, ch4)
    out = tmp_path / "out"
    spacing, vacuum = 0.15, 2.5
    res = CliRunner().invoke(
        command,
        ["make", "molecules", "--from", str(src), "--spacing", str(spacing), "--vacuum", str(vacuum),
         "--no-progress", "-o", str(out)],
    )
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    entry = man["structures"]["ch4"]
    assert entry["pbc"] == [False, False, False]
    assert entry["electrons_expected"] == 8.0  # GTH: C 2s2p + 4 H
    assert entry["recipe"]["basis"] == "gth-dzvp" and entry["recipe"]["pseudo"] == "gth-pbe"
    atoms, grid = cdp.io.read(out / entry["file"])

    # electron count on the grid
    assert abs(grid.electrons - 8.0) < FINE_TOLERANCE * 8.0
    assert grid.values.min() >= -1e-12  # GTH densities are sums of squares

    # grid convention: box = extent + vacuum per side, centred; n_i = ceil(L_i / spacing)
    pos = ch4.positions
    lengths = pos.max(0) - pos.min(0) + 2 * vacuum
    np.testing.assert_allclose(np.diag(grid.cell), lengths, atol=1e-9)
    assert grid.shape == tuple(math.ceil(L / spacing) for L in lengths)
    centre = 0.5 * (atoms.positions.max(0) + atoms.positions.min(0))
    np.testing.assert_allclose(centre, lengths / 2, atol=1e-9)

    # values at fractional i/n_i from the corner, checked against an independent PySCF evaluation
    boxed, _ = make_box(ch4, vacuum, spacing)
    mol, mf = run_scf(boxed)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, grid.shape, size=(40, 3))
    idx[0] = np.unravel_index(np.argmax(grid.values), grid.shape)
    pts = (idx / np.array(grid.shape)) * lengths
    direct = density_on_points(mol, mf.make_rdm1(), pts)
    np.testing.assert_allclose(grid.values[tuple(idx.T)], direct, rtol=1e-5, atol=1e-6 * grid.values.max())

    # CHGCAR round trip through cdp.io
    cdp.io.write(tmp_path / "again.CHGCAR", atoms, grid, sidecar=False)
    atoms2, grid2 = cdp.io.read(tmp_path / "again.CHGCAR")
    np.testing.assert_allclose(grid2.values, grid.values, rtol=1e-9, atol=1e-12 * grid.values.max())
    np.testing.assert_allclose(atoms2.positions, atoms.positions, atol=1e-8)

    # resumable: a second run skips the finished structure
    res2 = CliRunner().invoke(
        command, ["make", "molecules", "--from", str(src), "--spacing", str(spacing), "--vacuum", str(vacuum),
                  "--no-progress", "-o", str(out)])
    assert res2.exit_code == 0 and "0 made, 1 already present" in res2.output


def test_axis_permutation_and_rotation_permute_the_density():
    spacing, vacuum = 0.2, 2.5
    base = compute_molecule(WATER_TILTED, spacing=spacing, vacuum=vacuum).grid.values

    # cyclic axis permutation (x, y, z) -> (y, z, x): a proper rotation that maps the box grid onto itself
    perm = WATER_TILTED.copy()
    perm.positions = WATER_TILTED.positions[:, [1, 2, 0]]
    rho_p = compute_molecule(perm, spacing=spacing, vacuum=vacuum).grid.values
    assert rho_p.shape == (base.shape[1], base.shape[2], base.shape[0])
    assert _emae(base, rho_p.transpose(2, 0, 1)) < 0.05

    # 90° about z: (x, y, z) -> (-y, x, z); new index (a, b, c) sees old point (b, (n_y - a) mod n_y, c)
    rot = WATER_TILTED.copy()
    p = WATER_TILTED.positions
    rot.positions = np.stack([-p[:, 1], p[:, 0], p[:, 2]], axis=1)
    rho_r = compute_molecule(rot, spacing=spacing, vacuum=vacuum).grid.values
    nx, ny, nz = base.shape
    a = np.arange(ny)
    mapped = base[:, (ny - a) % ny, :].transpose(1, 0, 2)
    # the old index n_y - a exists for a >= 1; a = 0 would be the opposite box face (not on the grid)
    assert rho_r.shape == (ny, nx, nz)
    assert _emae(mapped[1:], rho_r[1:]) < 0.05


def test_failures_are_reported_and_the_run_continues(tmp_path):
    radical = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])  # odd electron count: refused by the RKS recipe
    big = Atoms("H2", positions=[[0, 0, 0], [0, 0, 10.0]])  # 14x14x47 points at 0.3 Å: above the limit
    messages = []
    rep = make_molecules(
        [("water", WATER), ("radical", radical), ("h2_big", big)], str(tmp_path), spacing=0.3, vacuum=2.0,
        progress=False, report=messages.append, max_grid_points=5000,
    )
    assert rep.made == ["water"]  # 14x19x16 points: below the limit
    assert set(rep.failed) == {"radical", "h2_big"}
    assert "radical" in rep.failed["radical"] and "odd electron count" in rep.failed["radical"]
    assert "points" in rep.failed["h2_big"]
    assert any("radical" in m for m in messages)
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert leftovers == []
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert set(man["failed"]) == set(rep.failed)
    for name in rep.failed:
        assert name not in man["structures"]
        assert not (tmp_path / f"{name}.CHGCAR.gz").exists()


def test_failure_does_not_stop_others(tmp_path):
    radical = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    rep = make_molecules([("radical", radical), ("water", WATER)], str(tmp_path), spacing=0.3, vacuum=2.0,
                         progress=False, report=lambda m: None)
    assert rep.made == ["water"] and list(rep.failed) == ["radical"]
    # an interrupted write leaves a temporary file; the next run removes it and skips 'water'
    (tmp_path / ".water.CHGCAR.gz.abc123.tmp").write_bytes(b"partial")
    rep2 = make_molecules([("water", WATER)], str(tmp_path), spacing=0.3, vacuum=2.0, progress=False)
    assert rep2.skipped == ["water"]
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path))
    # resuming with other settings is refused instead of mixing recipes
    with pytest.raises(CdpError, match="different recipe"):
        make_molecules([("water", WATER)], str(tmp_path), spacing=0.25, vacuum=2.0, progress=False)


def test_electron_tolerance_bounds():
    assert electron_tolerance(0.1) == FINE_TOLERANCE == 0.005
    assert electron_tolerance(0.15) == FINE_TOLERANCE
    assert electron_tolerance(0.3) == COARSE_TOLERANCE
    with pytest.raises(CdpError):
        make_box(WATER, vacuum=-1, spacing=0.2)
    with pytest.raises(CdpError):
        make_box(WATER, vacuum=2, spacing=0)


def test_qm9_ranges_and_lookup():
    from cdp.data.qm9 import check_indices, parse_range

    assert parse_range("1-3,7, 9-10") == [1, 2, 3, 7, 9, 10]
    with pytest.raises(CdpError):
        parse_range("5-2")
    with pytest.raises(CdpError, match="held out"):
        check_indices([100001])
    assert check_indices([100001], allow_reserved=True) == [100001]
    from cdp.data.qm9 import load_qm9

    try:
        mols = load_qm9([1, 3])
    except CdpError as exc:
        if "pip install qm9pack" in str(exc):
            pytest.skip("qm9pack not installed")
        raise
    assert mols[1].get_chemical_formula() == "CH4" and mols[3].get_chemical_formula() == "H2O"
    # C-H bond length of QM9's methane
    d = np.linalg.norm(mols[1].positions[1:] - mols[1].positions[0], axis=1)
    np.testing.assert_allclose(d, 1.09, atol=0.01)


def test_multiframe_files_name_each_frame(tmp_path):
    from ase.build import molecule

    from cdp.data.structures import structures_from_files

    multi = tmp_path / "set.xyz"
    ase.io.write(multi, [molecule("H2O"), molecule("NH3"), molecule("CH4")])
    single = tmp_path / "one.xyz"
    ase.io.write(single, molecule("CO"))
    got = structures_from_files([str(multi), str(single)])
    assert [n for n, _ in got] == ["set_0", "set_1", "set_2", "one"]
    assert got[1][1].get_chemical_formula() == "H3N"
    with pytest.raises(CdpError, match="not a 3D periodic"):
        structures_from_files([str(single)], periodic=True)


def test_process_pool_matches_serial(tmp_path):
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    items = [("water", WATER), ("h2", h2)]
    serial = make_molecules(items, str(tmp_path / "a"), spacing=0.3, vacuum=2.0, progress=False)
    pooled = make_molecules(items, str(tmp_path / "b"), spacing=0.3, vacuum=2.0, progress=False, workers=2)
    assert sorted(serial.made) == sorted(pooled.made) == ["h2", "water"]
    for name in ("water", "h2"):
        _, g1 = cdp.io.read(tmp_path / "a" / f"{name}.CHGCAR.gz")
        _, g2 = cdp.io.read(tmp_path / "b" / f"{name}.CHGCAR.gz")
        assert np.abs(g1.values - g2.values).max() <= 1e-6 * g1.values.max()


def test_unconverged_scf_is_an_error():
    from cdp.data.molecules import RECIPE

    with pytest.raises(CdpError, match="water: SCF did not converge"):
        compute_molecule(WATER, spacing=0.3, vacuum=2.0, recipe=dict(RECIPE, max_cycle=1), name="water")
