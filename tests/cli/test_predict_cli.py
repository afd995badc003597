"""`cdp predict`: grids written as CHGCAR/cube/npy equal the Predictor's, boxes, --grid-like, --probes, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import write as ase_write

from cdp.cli.main import main
from cdp.core.checkpoint import load_checkpoint
from cdp.predict import Predictor, grid_shape_for, molecule_box
from tests.helpers.models import tiny_checkpoint


def _predictor(ck):
    return Predictor(load_checkpoint(ck)[0])


@pytest.fixture
def ck(tmp_path):
    return tiny_checkpoint(tmp_path / "m.ckpt")


def test_crystal_chgcar_read_back_by_ase(tmp_path, ck):
    from ase.calculators.vasp import VaspChargeDensity

    si = bulk("Si", "diamond", a=5.43)
    ase_write(tmp_path / "si.traj", si)
    out = tmp_path / "si.CHGCAR"
    assert main(["predict", str(tmp_path / "si.traj"), "--model", str(ck), "-o", str(out), "--spacing", "0.5"]) == 0
    shape = grid_shape_for(si.cell.array, 0.5)
    expected = _predictor(ck).predict_grid(si, shape)
    chg = VaspChargeDensity(str(out))
    assert chg.chg[0].shape == shape
    np.testing.assert_allclose(chg.chg[0], expected.values, rtol=1e-9, atol=1e-12 * np.abs(expected.values).max())
    np.testing.assert_allclose(chg.atoms[0].cell.array, si.cell.array, atol=1e-10)
    assert not (tmp_path / "si.CHGCAR.json").exists()  # periodic: no sidecar needed


def test_molecule_gets_vacuum_box_and_cube(tmp_path, ck):
    from cdp.io import read

    w = molecule("H2O")
    ase_write(tmp_path / "w.traj", w)
    out = tmp_path / "w.cube"
    assert main(["predict", str(tmp_path / "w.traj"), "--model", str(ck), "-o", str(out), "--spacing", "0.4"]) == 0
    atoms, grid = read(out)
    extent = w.positions.max(0) - w.positions.min(0) + 6.0
    np.testing.assert_allclose(np.diag(grid.cell), extent, atol=1e-5)
    assert grid.shape == tuple(int(np.ceil(L / 0.4 - 1e-9)) for L in extent)
    assert not atoms.pbc.any()  # sidecar records the molecule
    boxed = molecule_box(w, 3.0)
    expected = _predictor(ck).predict_grid(boxed, grid.shape)
    np.testing.assert_allclose(grid.values, expected.values, rtol=1e-6, atol=1e-9 * np.abs(expected.values).max())


def test_npy_spin_model_and_sidecar(tmp_path):
    ck = tiny_checkpoint(tmp_path / "spin.ckpt", spin=True)
    si = bulk("Si", "diamond", a=5.43)
    ase_write(tmp_path / "si.traj", si)
    out = tmp_path / "si.npy"
    assert main(["predict", str(tmp_path / "si.traj"), "--model", str(ck), "-o", str(out), "--spacing", "0.6"]) == 0
    arr = np.load(out)
    meta = json.loads((tmp_path / "si.npy.json").read_text())
    shape = grid_shape_for(si.cell.array, 0.6)
    assert arr.shape == shape + (2,)
    assert meta["pbc"] == [True, True, True] and meta["origin"] == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(meta["cell"], si.cell.array)
    expected = _predictor(ck).predict_grid(si, shape)
    np.testing.assert_allclose(arr[..., 0], expected.values, rtol=1e-12)
    np.testing.assert_allclose(arr[..., 1], expected.spin, rtol=1e-12)
    # the CHGCAR of a spin model carries the magnetisation block
    out2 = tmp_path / "si.CHGCAR"
    assert main(["predict", str(tmp_path / "si.traj"), "--model", str(ck), "-o", str(out2), "--spacing", "0.6"]) == 0
    from cdp.io import read

    _, grid = read(out2)
    np.testing.assert_allclose(grid.spin, expected.spin, rtol=1e-9, atol=1e-12 * np.abs(expected.spin).max())


def test_grid_like_carries_grid_and_augmentation(tmp_path, ck):
    from cdp.core.types import DensityGrid
    from cdp.io import read, write

    si = bulk("Si", "diamond", a=5.43)
    aug = ("augmentation occupancies   1   2\n  0.1000000E+00  0.2000000E+00\n"
           "augmentation occupancies   2   1\n  0.3000000E+00\n")
    ref = DensityGrid(cell=si.cell.array.copy(), values=np.ones((5, 6, 7)), augmentation=aug)
    write(tmp_path / "ref.CHGCAR", si, ref)
    out = tmp_path / "pred.CHGCAR"
    assert main(["predict", str(tmp_path / "ref.CHGCAR"), "--model", str(ck), "-o", str(out),
                 "--grid-like", str(tmp_path / "ref.CHGCAR")]) == 0
    _, grid = read(out)
    assert grid.shape == (5, 6, 7) and grid.augmentation == aug
    expected = _predictor(ck).predict_grid(si, (5, 6, 7))
    np.testing.assert_allclose(grid.values, expected.values, rtol=1e-9, atol=1e-12 * np.abs(expected.values).max())
    # a structure that does not match the reference is refused, nothing written
    ase_write(tmp_path / "c.traj", bulk("C", "diamond", a=3.57))
    assert main(["predict", str(tmp_path / "c.traj"), "--model", str(ck), "-o", str(tmp_path / "c.CHGCAR"),
                 "--grid-like", str(tmp_path / "ref.CHGCAR")]) != 0
    assert not (tmp_path / "c.CHGCAR").exists()


def test_several_structures_make_a_directory(tmp_path, ck):
    src = tmp_path / "in"
    src.mkdir()
    ase_write(src / "si.traj", bulk("Si", "diamond", a=5.43))
    ase_write(src / "cu.traj", bulk("Cu", "fcc", a=3.6))
    out = tmp_path / "out"
    assert main(["predict", str(src), "--model", str(ck), "-o", str(out), "--spacing", "0.6", "--format", "npy"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cu.npy", "cu.npy.json", "si.npy", "si.npy.json"]


def test_probes_parity_with_predictor(tmp_path, ck):
    si = bulk("Si", "diamond", a=5.43)
    ase_write(tmp_path / "si.traj", si)
    pts = np.random.default_rng(0).uniform(-1, 6, (17, 3))
    np.save(tmp_path / "p.npy", pts)
    out = tmp_path / "rho.npy"
    assert main(["predict", str(tmp_path / "si.traj"), "--model", str(ck), "--probes", str(tmp_path / "p.npy"),
                 "-o", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), _predictor(ck).predict(si, pts), rtol=1e-12)


@pytest.mark.parametrize("case", ["missing_model", "unknown_format", "element_mismatch", "missing_structure"])
def test_bad_input_one_line_no_output(tmp_path, capsys, case):
    si = bulk("Si", "diamond", a=5.43)
    ase_write(tmp_path / "si.traj", si)
    structure, model = str(tmp_path / "si.traj"), None
    if case == "missing_model":
        model, expect = str(tmp_path / "nope.ckpt"), "nope.ckpt"
    elif case == "unknown_format":
        (tmp_path / "s.foo").write_text("garbage\n")
        structure, expect = str(tmp_path / "s.foo"), "unknown structure format"
    elif case == "element_mismatch":
        model, expect = str(tiny_checkpoint(tmp_path / "hcno.ckpt", elements=[1, 6, 7, 8])), "element Si"
    else:
        structure, expect = str(tmp_path / "none.traj"), "none.traj"
    model = model or str(tiny_checkpoint(tmp_path / "m.ckpt"))
    out = tmp_path / "out.CHGCAR"
    assert main(["predict", structure, "--model", model, "-o", str(out), "--spacing", "0.6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and expect in err and "\n" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.CHGCAR")]


def test_charge3net_parity_through_cli(tmp_path, fixtures_dir):
    """The imported published ChargE3Net, run by `cdp predict --probes`, reproduces the published densities."""
    from ase import Atoms

    try:
        import cdp.importers.charge3net  # noqa: F401
    except ImportError:
        pytest.skip("the ChargE3Net importer is not available")
    ck = tmp_path / "c3n.ckpt"
    assert main(["import", "charge3net", str(fixtures_dir / "charge3net_small.pt"),
                 "--config", str(fixtures_dir / "charge3net_small.json"), "-o", str(ck)]) == 0
    meta = json.loads((fixtures_dir / "charge3net_small.json").read_text())
    cases = np.load(fixtures_dir / "charge3net_small_cases.npz")
    for name in meta["structures"]:
        atoms = Atoms(numbers=cases[f"{name}/numbers"], positions=cases[f"{name}/positions"],
                      cell=cases[f"{name}/cell"], pbc=cases[f"{name}/pbc"])
        ase_write(tmp_path / f"{name}.traj", atoms)
        np.save(tmp_path / f"{name}_probes.npy", cases[f"{name}/probes"])
        out = tmp_path / f"{name}_rho.npy"
        assert main(["predict", str(tmp_path / f"{name}.traj"), "--model", str(ck),
                     "--probes", str(tmp_path / f"{name}_probes.npy"), "-o", str(out)]) == 0
        ref = cases[f"{name}/density_f32"]
        got = np.load(out)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), name


def test_interrupt_leaves_no_output(tmp_path, ck, monkeypatch, capsys):
    """Ctrl-C during the grid: no half-written file, and a directory the command created is removed again."""
    src = tmp_path / "in"
    src.mkdir()
    ase_write(src / "si.traj", bulk("Si", "diamond", a=5.43))
    ase_write(src / "cu.traj", bulk("Cu", "fcc", a=3.6))

    real = Predictor.iter_grid

    def interrupted(self, *args, **kwargs):
        # the first batch is written to the (temporary) output, then Ctrl-C arrives mid-grid
        kwargs["probe_batch"] = 50
        for n, item in enumerate(real(self, *args, **kwargs)):
            if n == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Predictor, "iter_grid", interrupted)
    out = tmp_path / "out"
    assert main(["predict", str(src), "--model", str(ck), "-o", str(out), "--spacing", "0.6"]) == 130
    assert not out.exists()
    assert main(["predict", str(src / "si.traj"), "--model", str(ck), "-o", str(tmp_path / "si.cube")]) == 130
    assert main(["predict", str(src / "si.traj"), "--model", str(ck), "-o", str(tmp_path / "si.npy")]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "m.ckpt"]
