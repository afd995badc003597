"""``cdp export`` end to end: checkpoint → TorchScript directory + example inputs for the C++ program."""

from __future__ import annotations

import json

import numpy as np

from cdp.cli.main import main
from cdp.core.checkpoint import save_checkpoint
from cdp.export.runtime import load_exported
from cdp.predict import Predictor
from tests.helpers.export import tiny_model


def test_cli_export_with_example_inputs(tmp_path, capsys):
    model = tiny_model("equideepdft")
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, model)
    out, ex = tmp_path / "ts", tmp_path / "ex"
    assert main(["export", str(ckpt), "--format", "torchscript", "-o", str(out), "--example-inputs", str(ex)]) == 0
    meta = json.loads((out / "cdp_export.json").read_text())
    assert meta["source"]["path"] == str(ckpt) and len(meta["source"]["sha256"]) == 64
    info = json.loads((ex / "example.json").read_text())
    arrays = {k: np.load(ex / v["file"]) for k, v in info["files"].items()}
    assert arrays["numbers"].dtype == np.int64 and arrays["positions"].dtype == np.float64
    from ase import Atoms

    atoms = Atoms(numbers=arrays["numbers"], positions=arrays["positions"], cell=arrays["cell"], pbc=arrays["pbc"].astype(bool))
    ref = Predictor(model).predict(atoms, arrays["probes"])
    np.testing.assert_allclose(arrays["density"], ref, rtol=0, atol=1e-12)
    got = load_exported(out).predict(atoms, arrays["probes"], probe_batch=8)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such checkpoint file, shipped model (demo, qm9) or preset" in err and err.count("\n") == 1


def test_cli_export_pt2_with_cdp_ops_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, tiny_model("chargee3net"))
    assert main(["export", str(ckpt), "--format", "pt2", "--ops", "cdp", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --ops cdp applies to ONNX and TorchScript exports only (AOTInductor cannot compile cdp's "
                   "operators into a pt2 package)\n")
    assert not (tmp_path / "o").exists()
