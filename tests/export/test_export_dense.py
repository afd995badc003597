"""ChargE3Net exports record the dense capture form: a compact graph, the PyTorch model's densities.

The demo model (ONNX and TorchScript) and the published charge3net_small weights (ONNX, slow) against the
PyTorch model with the e3nn backend in float32, at 1e-5 of max |ρ|, on structures unlike the export example.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from ase import Atoms
from ase.build import molecule

from cdp.core.checkpoint import load_checkpoint
from cdp.export import export_model
from cdp.export.runtime import load_exported
from cdp.predict import Predictor
from tests.helpers.paths import FIXTURES as REF, REPO

TOL = 1e-5  # of max |ρ|


def _e3nn(model):
    """The same model with the plain e3nn backend (the reference formulation)."""
    from cdp.core.model import DensityModel

    cfg = copy.deepcopy(model.config)
    cfg["backbone"]["backend"] = "e3nn"
    ref = DensityModel.from_config(cfg)
    ref.load_state_dict(model.state_dict())
    return ref.eval()


def _structures():
    water = molecule("H2O")
    water.cell = np.eye(3) * 7.0
    water.center()
    rng = np.random.default_rng(5)
    probes_w = np.concatenate([rng.uniform(2.0, 5.0, size=(37, 3)), water.positions[:1], [[30.0, 30.0, 30.0]]])
    ch = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]],
               cell=[[4.1, 0, 0], [0.3, 4.4, 0], [0, 0.2, 4.0]], pbc=True)
    probes_c = rng.uniform(-0.5, 4.5, size=(29, 3))
    return [("water", water, probes_w), ("periodic-CH4", ch, probes_c)]


def _parity(ref_model, path, probe_batch=8):
    pred = load_exported(path, workers=1)
    for label, atoms, probes in _structures():
        want = Predictor(ref_model, probe_batch=probe_batch).predict(atoms, probes)
        got = pred.predict(atoms, probes, probe_batch=probe_batch)
        scale = np.abs(want).max()
        assert got.shape == want.shape and scale > 0, label
        assert np.abs(got - want).max() <= TOL * scale, f"{label}: {np.abs(got - want).max() / scale:.2e}"


@pytest.fixture(scope="module")
def demo():
    model, info = load_checkpoint(REPO / "cdp" / "assets" / "demo.ckpt")
    return model.eval(), info


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.slow), "torchscript"])
def test_demo_export_matches_e3nn_backend(demo, fmt, tmp_path):
    model, info = demo
    meta = export_model(model, tmp_path / fmt, fmt, info=info)
    _parity(_e3nn(model), tmp_path / fmt)
    if fmt == "onnx":
        # the dense form: a few large operations per irrep block and layer, not e3nn's unrolled paths
        form = model.backbone.capture_form()
        for role, convs in (("encoder", form.atom_convs), ("decoder", form.probe_convs)):
            proto = onnx.load(str(tmp_path / fmt / meta[role]["file"]))
            ops = [n.op_type for n in proto.graph.node]
            blocks = sum(len(conv.blocks) for conv in convs)
            assert "Einsum" not in ops and ops.count("MatMul") <= 4 * blocks + 8 * len(convs), (role, ops.count("MatMul"))
            # one ScatterND(add) per sender irrep block and layer, nothing scattered through index_put
            scatters = [n for n in proto.graph.node if n.op_type == "ScatterND"]
            assert len(scatters) == blocks
            assert all(a.s == b"add" for n in scatters for a in n.attribute if a.name == "reduction")
            assert "Transpose" not in {n.op_type for n in proto.graph.node if n.output[0] in
                                       {i for s in scatters for i in s.input}}


@pytest.mark.slow
def test_published_reference_export_matches_e3nn_backend(fixtures_dir, tmp_path):
    from cdp.core.model import DensityModel
    from cdp.importers.charge3net import import_charge3net

    cfg, sd = import_charge3net(REF / "charge3net_small.pt", REF / "charge3net_small.json")
    model = DensityModel.from_config(cfg)
    model.load_state_dict(sd)
    model = model.float().eval()
    export_model(model, tmp_path / "onnx", "onnx")
    _parity(_e3nn(model), tmp_path / "onnx")
