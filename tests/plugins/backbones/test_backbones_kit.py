"""The built-in backbones with cdp.testing: contract, equivariance, batching, export round trip."""

from __future__ import annotations

import json

import pytest
import torch

from cdp import __version__
from cdp.testing import assert_component, assert_export_round_trip, assert_model, tiny_model


@pytest.mark.parametrize("base, backbone", [
    ("chargee3net", None),
    ("chargee3net", {"name": "chargee3net", "num_interactions": 2, "mul": 8, "lmax": 2, "num_basis": 4,
                     "radial_neurons": 8, "cutoff": 3.0, "backend": "e3nn"}),
    ("invdeepdft", None),
    ("equideepdft", None),
])
def test_backbone_contract_in_a_model(base, backbone):
    model = tiny_model(base, backbone=backbone)
    assert_component(model.backbone)
    assert_model(model)


def test_backbone_float32_model():
    assert_model(tiny_model("chargee3net", dtype=torch.float32))


def test_export_round_trip_onnx(tmp_path):
    assert_export_round_trip(tiny_model("invdeepdft", dtype=torch.float32), tmp_path / "onnx")
    recorded = json.loads((tmp_path / "onnx" / "cdp_export.json").read_text())["components"]
    assert recorded["backbone"] == {"name": "invdeepdft", "class": "cdp.plugins.backbones.schnet.InvDeepDFT",
                                    "distribution": "cdp", "version": __version__}


@pytest.mark.slow  # ONNX export of the e3nn and PaiNN models takes minutes on a small CPU
@pytest.mark.parametrize("base", ["chargee3net", "equideepdft"])
def test_export_round_trip_onnx_equivariant_backbones(base, tmp_path):
    assert_export_round_trip(tiny_model(base, dtype=torch.float32), tmp_path / "onnx")
