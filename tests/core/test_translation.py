"""float32 models far from the origin: predictions are translation-invariant to 1e-5 of max |ρ| at offsets up
to 10⁶ Å in every entry point (probes, grids, streamed files, evaluate); files keep the user's positions."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.io import write as ase_write

from cdp.cli.main import main
from cdp.predict import Predictor, load_model

TOL = 1e-5  # of max |rho|
OFFSETS = [1e3, 12345.678, 1e5, 1e6]


@pytest.fixture(scope="module")
def predictors():
    return {"demo": load_model("demo"), "chargee3net-cpu": load_model("chargee3net-cpu")}


def _water_cell(a=6.0):
    w = molecule("H2O")
    w.cell, w.pbc = np.eye(3) * a, True
    w.positions += a / 2
    return w


def _offset(size):
    return size * np.array([1.0, -0.37, 0.61])


def _err(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", ["demo", "chargee3net-cpu"])
def test_predict_at_probes_is_translation_invariant(predictors, name):
    pred = predictors[name]
    rng = np.random.default_rng(0)
    mol = molecule("H2O")
    probes = mol.positions[rng.integers(0, 3, 60)] + rng.normal(0, 0.7, (60, 3))
    crystal = _water_cell()
    cprobes = rng.uniform(0, 6.0, (60, 3))
    ref, cref = pred.predict(mol, probes), pred.predict(crystal, cprobes)
    assert np.abs(ref).max() > 0 and np.abs(cref).max() > 0
    for size in OFFSETS:
        v = _offset(size)
        moved, cmoved = mol.copy(), crystal.copy()
        moved.positions += v
        cmoved.positions += v
        assert _err(pred.predict(moved, probes + v), ref) <= TOL, (name, size, "molecule")
        assert _err(pred.predict(cmoved, cprobes + v), cref) <= TOL, (name, size, "crystal")
        # probes far out along a periodic axis see the same periodic density
        assert _err(pred.predict(crystal, cprobes + 6.0 * np.round(v / 6.0)), cref) <= TOL, (name, size, "images")


def test_predict_grid_and_evaluate_far_from_origin(predictors):
    from cdp.evaluate.evaluate import evaluate

    pred = predictors["demo"]
    w = _water_cell()
    ref = pred.predict_grid(w, (6, 6, 6))
    v = 6.0 * np.round(_offset(1e6) / 6.0)  # a lattice vector: the grid over the cell is unchanged
    far = w.copy()
    far.positions += v
    assert _err(pred.predict_grid(far, (6, 6, 6)).values, ref.values) <= TOL
    # a molecule and its grid moved together
    mol = molecule("H2O")
    box = np.eye(3) * 5.0
    origin = np.array([-2.5, -2.5, -2.5])
    mref = pred.predict_grid(mol, (5, 5, 5), cell=box, origin=origin)
    moved = mol.copy()
    moved.positions += _offset(1e5)
    got = pred.predict_grid(moved, (5, 5, 5), cell=box, origin=origin + _offset(1e5))
    assert _err(got.values, mref.values) <= TOL
    # evaluate on the moved crystal: the same predicted electrons
    items = [("near", w, ref), ("far", far, ref)]
    result = evaluate(pred, data=items, progress=False)
    near_e, far_e = (r["electrons_pred"] for r in result["structures"])
    assert abs(far_e - near_e) <= TOL * abs(near_e)


def test_cli_streamed_grid_far_from_origin_keeps_positions(tmp_path):
    from cdp.io import read

    w = _water_cell()
    far = w.copy()
    far.positions += 6.0 * np.round(_offset(1e5) / 6.0)
    ase_write(tmp_path / "near.traj", w)
    ase_write(tmp_path / "far.traj", far)
    for stem in ("near", "far"):
        assert main(["predict", str(tmp_path / f"{stem}.traj"), "--model", "demo", "-o",
                     str(tmp_path / f"{stem}.CHGCAR"), "--spacing", "1.0"]) == 0
    atoms_near, near = read(tmp_path / "near.CHGCAR")
    atoms_far, got = read(tmp_path / "far.CHGCAR")
    assert _err(got.values, near.values) <= TOL
    np.testing.assert_allclose(atoms_far.positions, far.positions, atol=1e-6)  # the user's positions
