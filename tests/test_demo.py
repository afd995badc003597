"""The shipped demo checkpoint: loads by name, is trained (far better than an untrained model), predicts via CLI."""

from __future__ import annotations

import numpy as np
import torch
import yaml
from click.testing import CliRunner

from cdp.data import load_dataset
from cdp.evaluate.metrics import eps_mae
from cdp.predict import _named_models, load_model
from tests.helpers.paths import REPO


def test_demo_is_shipped_with_its_recorded_command():
    path = _named_models()["demo"]
    meta = torch.load(path, weights_only=True)["metadata"]
    recorded = yaml.safe_load((REPO / "cdp" / "assets" / "demo-train.yaml").read_text())
    assert meta["model_preset"] == recorded["model"]
    assert meta["seed"] == recorded["seed"]
    assert meta["elements"] == [1, 6, 7, 8]


def test_demo_beats_untrained_model_on_a_test_molecule():
    ds = load_dataset(None)
    name, atoms, grid = ds.split("test")[0]
    demo = load_model("demo").predict_grid(atoms, grid.values.shape, cell=grid.cell)
    untrained = load_model("chargee3net-cpu").predict_grid(atoms, grid.values.shape, cell=grid.cell)
    e_demo = eps_mae(grid.values, demo.values)
    e_untrained = eps_mae(grid.values, untrained.values)
    assert e_demo < 25.0 and e_demo < 0.5 * e_untrained, (name, e_demo, e_untrained)


def test_predict_with_demo_via_cli(tmp_path):
    from ase.build import molecule

    from cdp.cli.predict import command

    atoms = molecule("H2O")
    atoms.write(tmp_path / "water.xyz")
    out = tmp_path / "water.CHGCAR"
    res = CliRunner().invoke(command, [str(tmp_path / "water.xyz"), "--model", "demo", "--spacing", "0.4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    from cdp.io import read

    _, grid = read(out)
    assert np.isfinite(grid.values).all() and 4.0 < grid.electrons < 12.0  # 8 valence electrons, untuned grid
