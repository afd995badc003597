"""The example plugin's own tests: cdp's contract kit (cdp.testing) on both of its components."""

from __future__ import annotations

import pytest
import torch

from cdp.core.components import Spec
from cdp.testing import (assert_component, assert_export_round_trip, assert_graph_builder, assert_model,
                         tiny_model)
from cdp_plugin_example.plugin import BruteForceGraph, ScalarMLPReadout


def test_readout_keeps_the_contract():
    assert_component(ScalarMLPReadout(Spec(irreps="4x0e+2x1o+1x0o")).double())  # invariant: reads only 0e
    assert_component(ScalarMLPReadout(Spec(size=8), spin=True).double())


@pytest.mark.parametrize("base", ["chargee3net", "invdeepdft"])  # irreps and plain features
def test_readout_in_a_model(base):
    assert_model(tiny_model(base, readout=ScalarMLPReadout))


def test_graph_builder_keeps_the_contract():
    assert_graph_builder(BruteForceGraph())
    assert_model(tiny_model("invdeepdft", graph=BruteForceGraph()))


def test_export_round_trip(tmp_path):
    assert_export_round_trip(tiny_model("invdeepdft", readout=ScalarMLPReadout, dtype=torch.float32), tmp_path / "onnx")
