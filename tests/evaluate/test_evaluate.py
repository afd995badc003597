"""`evaluate` and `cdp evaluate`: streamed ε_mae equals a one-shot computation, JSON layout, splits, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk, molecule

from cdp.cli.main import main
from cdp.core.types import CdpError, DensityGrid
from cdp.evaluate.evaluate import evaluate
from cdp.evaluate.metrics import eps_mae, summarize, zeta
from cdp.predict import Predictor
from tests.helpers.models import tiny_checkpoint, tiny_model


def water_box():
    atoms = molecule("H2O")
    atoms.center(vacuum=2.0)
    atoms.pbc = False
    return atoms


def reference_grid(atoms, shape, spin: bool = False) -> DensityGrid:
    """A sum of Gaussians on the atoms: a smooth, positive stand-in for a DFT density."""
    grid = DensityGrid(cell=atoms.cell.array.copy(), values=np.zeros(shape), pbc=np.asarray(atoms.pbc).copy())
    pts = grid.grid_points()
    rho = sum(z * np.exp(-np.sum((pts - p) ** 2, axis=1) / 0.5) for z, p in zip(atoms.numbers, atoms.positions))
    grid.values = rho.reshape(shape)
    if spin:
        grid.spin = 0.1 * np.sin(pts[:, 0]).reshape(shape)
    return grid


def test_streaming_equals_single_batch_and_brute_force():
    atoms = water_box()
    grid = reference_grid(atoms, (9, 10, 8))
    model = tiny_model()
    items = [("w", atoms, grid)]
    small = evaluate(Predictor(model, probe_batch=7), items, progress=False)
    big = evaluate(Predictor(model, probe_batch=10**6), items, progress=False)
    a, b = small["structures"][0], big["structures"][0]
    assert a["eps_mae"] == pytest.approx(b["eps_mae"], rel=1e-12)
    assert a["electrons_pred"] == pytest.approx(b["electrons_pred"], rel=1e-12)
    pred = Predictor(model).predict_grid(atoms, grid.shape, grid.cell)
    assert a["eps_mae"] == pytest.approx(eps_mae(grid.values, pred.values), rel=1e-12)
    assert a["electrons_pred"] == pytest.approx(pred.values.sum() * grid.voxel_volume, rel=1e-12)
    assert a["electrons_ref"] == pytest.approx(grid.electrons, rel=1e-12)
    assert a["zeta"] == pytest.approx(zeta(grid, atoms), rel=1e-12)
    assert a["seconds"] > 0


def test_layout_summary_and_single_structure_stderr():
    model = tiny_model()
    w = water_box()
    si = bulk("Si", "diamond", a=5.43)
    items = [("w", w, reference_grid(w, (8, 8, 8))), ("si", si, reference_grid(si, (6, 6, 6)))]
    res = evaluate(Predictor(model), items, progress=False)
    assert set(res) >= {"eps_mae", "structures", "model", "data"}
    assert [r["name"] for r in res["structures"]] == ["w", "si"]
    for r in res["structures"]:
        assert {"name", "eps_mae", "zeta", "electrons_ref", "electrons_pred", "seconds"} <= set(r)
        assert "eps_mae_spin" not in r
    assert res["eps_mae"] == summarize(r["eps_mae"] for r in res["structures"])
    one = evaluate(Predictor(model), items[:1], progress=False)
    assert one["eps_mae"]["stderr"] is None


def test_spin_metric_only_when_both_sides_have_spin():
    atoms = water_box()
    grid = reference_grid(atoms, (7, 8, 7), spin=True)
    model = tiny_model(spin=True)
    rec = evaluate(Predictor(model, probe_batch=11), [("w", atoms, grid)], progress=False)["structures"][0]
    pred = Predictor(model).predict_grid(atoms, grid.shape, grid.cell)
    assert rec["eps_mae"] == pytest.approx(eps_mae(grid.values, pred.values), rel=1e-12)
    assert rec["eps_mae_spin"] == pytest.approx(eps_mae(grid.spin, pred.spin), rel=1e-12)
    plain = evaluate(Predictor(tiny_model()), [("w", atoms, grid)], progress=False)["structures"][0]
    assert "eps_mae_spin" not in plain


def test_no_pbc_treats_structures_as_molecules():
    si = bulk("Si", "diamond", a=5.43)
    model = tiny_model()
    periodic = evaluate(Predictor(model), [("si", si.copy(), reference_grid(si, (6, 6, 6)))], progress=False)
    mol = evaluate(Predictor(model), [("si", si.copy(), reference_grid(si, (6, 6, 6)))], pbc=False, progress=False)
    by_hand = si.copy()
    by_hand.pbc = False
    grid = reference_grid(si, (6, 6, 6))
    pred = Predictor(model).predict_grid(by_hand, grid.shape, grid.cell)
    assert mol["structures"][0]["eps_mae"] == pytest.approx(eps_mae(grid.values, pred.values), rel=1e-12)
    assert mol["structures"][0]["eps_mae"] != pytest.approx(periodic["structures"][0]["eps_mae"], rel=1e-6)


def _dataset_dir(tmp_path, with_split=True):
    from cdp.io import write

    d = tmp_path / "data"
    d.mkdir()
    for i, name in enumerate(["a", "b", "c"]):
        atoms = water_box()
        atoms.positions += 0.1 * i
        write(d / f"{name}.CHGCAR", atoms, reference_grid(atoms, (8, 9, 8)))
    if with_split:
        (d / "split.json").write_text(json.dumps({"train": ["a"], "validation": ["b"], "test": ["c"]}))
    return d


def test_dataset_path_uses_test_split_by_default(tmp_path):
    d = _dataset_dir(tmp_path)
    res = evaluate(Predictor(tiny_model()), str(d), progress=False)
    assert [r["name"] for r in res["structures"]] == ["c"]
    assert res["data"] == str(d)
    res = evaluate(Predictor(tiny_model()), str(d), split="train", progress=False)
    assert [r["name"] for r in res["structures"]] == ["a"]


def test_element_mismatch_names_the_element(tmp_path):
    ck = tiny_checkpoint(tmp_path / "m.ckpt", elements=["H", "C", "N", "O"])
    si = bulk("Si", "diamond", a=5.43)
    with pytest.raises(CdpError, match="element Si"):
        evaluate(str(ck), [("si", si, reference_grid(si, (4, 4, 4)))], progress=False)


def test_cli_table_and_json(tmp_path, capsys):
    d = _dataset_dir(tmp_path, with_split=False)
    ck = tiny_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(ck), "--data", str(d), "--json", str(out), "--probe-batch", "50"]) == 0
    text = capsys.readouterr().out
    assert "eps_mae" in text and "a" in text
    res = json.loads(out.read_text())
    assert [r["name"] for r in res["structures"]] == ["a", "b", "c"]
    assert res["model"] == str(ck) and res["data"] == str(d)
    assert res["eps_mae"]["mean"] == pytest.approx(np.mean([r["eps_mae"] for r in res["structures"]]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval.json")]


def test_cli_bad_input_one_line_no_json(tmp_path, capsys):
    d = _dataset_dir(tmp_path)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(tmp_path / "missing.ckpt"), "--data", str(d), "--json", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing.ckpt" in err and "\n" not in err
    assert not out.exists()
    ck = tiny_checkpoint(tmp_path / "m.ckpt", elements=[14])
    assert main(["evaluate", "--model", str(ck), "--data", str(d), "--json", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert ("element O" in err or "element H" in err) and "\n" not in err
    assert not out.exists()
