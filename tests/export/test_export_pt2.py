"""pt2 (torch.export + AOTInductor) artifacts give PyTorch's densities (compiles C++: slow)."""

from __future__ import annotations

import numpy as np
import pytest

from cdp.export import export_model
from cdp.export.runtime import load_exported
from cdp.predict import Predictor
from tests.helpers.export import cases, tiny_model


@pytest.mark.slow
def test_pt2_matches_pytorch(tmp_path):
    model = tiny_model("invdeepdft")
    meta = export_model(model, tmp_path / "pt2", "pt2")
    assert meta["artifact"] == "pt2" and (tmp_path / "pt2" / "decoder.pt2").is_file()
    pred = load_exported(tmp_path / "pt2")
    for label, atoms, probes in cases():
        ref = Predictor(model, probe_batch=4).predict(atoms, probes)
        got = pred.predict(atoms, probes, probe_batch=4)
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), label
