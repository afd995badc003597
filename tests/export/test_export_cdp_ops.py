"""``--ops cdp``: ChargE3Net's probe convolutions exported as one ``ai.cdp.UvuConvTable`` node each, run by
cdp's onnxruntime operator library (the fused kernel) — the PyTorch model's densities, a verified library
beside the models, and one-line refusals for what it cannot do."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cdp.core.model import DensityModel
from cdp.core.types import CdpError
from cdp.export import export_model
from cdp.export.custom_ops import custom_ops_library
from cdp.export.examples import TINY_CONFIGS
from cdp.export.runtime import load_exported
from cdp.predict import Predictor
from tests.helpers.export import cases, tiny_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model("chargee3net")
    out = tmp_path_factory.mktemp("cdp-ops") / "onnx"
    meta = export_model(model, out, "onnx", ops="cdp")
    return model, out, meta


def test_probe_convolutions_are_one_cdp_node_each_and_match_pytorch(exported):
    model, out, meta = exported
    proto = onnx.load(str(out / "decoder.onnx"))
    nodes = [n for n in proto.graph.node if n.domain == "ai.cdp"]
    assert [n.op_type for n in nodes] == ["UvuConvTable"] * len(model.backbone.probe_convs)
    assert "ScatterND" not in {n.op_type for n in proto.graph.node}  # no per-edge outputs scattered
    assert {"ai.cdp": 1}.items() <= {o.domain: o.version for o in proto.opset_import}.items()
    assert not [n for n in onnx.load(str(out / "encoder.onnx")).graph.node if n.domain == "ai.cdp"]
    pred = load_exported(out, workers=1)
    for label, atoms, probes in cases():
        want = Predictor(model, probe_batch=7).predict(atoms, probes)
        got = pred.predict(atoms, probes, probe_batch=7)
        scale = np.abs(want).max()
        assert got.shape == want.shape and scale > 0, label
        assert np.abs(got - want).max() <= 2e-6 * scale, (label, np.abs(got - want).max() / scale)


def test_the_library_beside_the_models_is_recorded_with_its_hash(exported):
    _, out, meta = exported
    custom = meta["onnx"]["custom_ops"]
    lib = out / custom["library"]
    assert custom["domain"] == "ai.cdp" and custom["ops"] == ["UvuConvTable"]
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == custom["sha256"]
    assert json.loads((out / "cdp_export.json").read_text())["onnx"]["custom_ops"] == custom
    # the copy serves a plain onnxruntime session too (what the C++ example does)
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(lib))
    ort.InferenceSession(str(out / "decoder.onnx"), so, providers=["CPUExecutionProvider"])


def test_bad_edges_are_refused_by_the_operator_not_read_out_of_bounds(exported):
    _, out, _ = exported
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(custom_ops_library(json.loads((out / "cdp_export.json").read_text())["onnx"]["custom_ops"])))
    sess = ort.InferenceSession(str(out / "decoder.onnx"), so, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        if i.name.startswith("atom_layer"):
            feeds[i.name] = np.ones((3, i.shape[1]), np.float32)
    feeds["probe_edge_index"] = np.array([[0, 7], [0, 1]], np.int64)  # sender 7 of 3 atoms
    feeds["probe_edge_vec"] = np.full((2, 3), 0.5, np.float32)
    feeds["probe_slots"] = np.zeros(2, np.float32)
    with pytest.raises(Exception, match="UvuConvTable: a sender index is out of range"):
        sess.run(None, feeds)
    feeds["probe_edge_index"] = np.array([[0, 1], [0, 5]], np.int64)  # receiver 5 of 2 probes
    with pytest.raises(Exception, match="UvuConvTable: a receiver index is out of range"):
        sess.run(None, feeds)


def test_refusals(tmp_path):
    with pytest.raises(CdpError, match=r"--ops cdp applies to ONNX and TorchScript exports only \(AOTInductor cannot"):
        export_model(tiny_model("chargee3net"), tmp_path / "pt2", "pt2", ops="cdp")
    assert not (tmp_path / "pt2").exists()
    with pytest.raises(CdpError, match="has no export form with cdp's operators"):
        export_model(tiny_model("invdeepdft"), tmp_path / "s", "onnx", ops="cdp")
    with pytest.raises(CdpError, match="unknown export operators 'fast'"):
        export_model(tiny_model("chargee3net"), tmp_path / "f", "onnx", ops="fast")
    config = copy.deepcopy(TINY_CONFIGS["chargee3net"])
    config["backbone"]["backend"] = "e3nn"
    e3nn = DensityModel.from_config(config).eval()
    for fmt in ("onnx", "torchscript"):
        with pytest.raises(CdpError, match=r"^--ops cdp exports ChargE3Net with backend 'fast' only \(this one has "
                                           r"backend 'e3nn'\); use --ops standard$"):
            export_model(e3nn, tmp_path / f"e3nn-{fmt}", fmt, ops="cdp")
    # metadata never chooses the code cdp runs: only a registered plugin's marked builder is called
    for provider in ("os:getcwd", "cdp.plugins.backbones.chargee3net.ort_ops:find_cxx",
                     "cdp.plugins.backbones.chargee3net.native:cache_dir", "cdp.plugins.backbones.chargee3net.nope:build",
                     "cdp.plugins.backbones.chargee3net.ort_ops:build:x", "cdp.plugins.backbones.chargee3net.ort_ops:Path"):
        with pytest.raises(CdpError, match="is not a registered plugin's operator library"):
            custom_ops_library({"domain": "ai.cdp", "provider": provider})
    for spec in ("os:system", ["x"], {"domain": "ai.cdp"}):
        with pytest.raises(CdpError, match="onnx.custom_ops must be an object with a 'provider' string"):
            custom_ops_library(spec)


@pytest.mark.parametrize("damage", ["missing", "garbage", "hash", "outside"])
def test_a_damaged_library_copy_refuses_the_directory(exported, tmp_path, damage):
    """cdp never loads the copy, but a directory whose copy is not the recorded file is refused like any
    other damaged export file (a C++ deployment would ship it)."""
    import shutil

    _, out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    meta = json.loads((bad / "cdp_export.json").read_text())
    lib = bad / meta["onnx"]["custom_ops"]["library"]
    if damage == "missing":
        lib.unlink()
    elif damage == "garbage":
        lib.write_bytes(b"\0" * 5000)
    elif damage == "hash":
        meta["onnx"]["custom_ops"]["sha256"] = "0" * 64
    else:
        meta["onnx"]["custom_ops"]["library"] = "/etc/passwd"
    (bad / "cdp_export.json").write_text(json.dumps(meta))
    with pytest.raises(CdpError, match="SHA-256 differs|must be a file name in the directory"):
        load_exported(bad, workers=1)


def test_the_operator_checks_inv_h(exported):
    """A crafted graph feeding a malformed table scale gets an error, never a read of missing memory."""
    from onnx import TensorProto, helper

    from cdp.plugins.backbones.chargee3net.kernel_capture import ONNX_INPUTS

    types = {"tensor(float)": TensorProto.FLOAT, "tensor(int64)": TensorProto.INT64, "tensor(int32)": TensorProto.INT32}
    node = helper.make_node("UvuConvTable", [n for n, _ in ONNX_INPUTS], ["m"], domain="ai.cdp")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, types[t], None) for n, t in ONNX_INPUTS],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.cdp", 1)])
    _, out, meta = exported
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(out / meta["onnx"]["custom_ops"]["library"]))
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones((1, 8), np.float32), "sh": np.ones((1, 1), np.float32), "r": np.ones(1, np.float32),
             "src": np.zeros(1, np.int64), "dst": np.zeros(1, np.int64), "slots": np.zeros(1, np.float32),
             "coef": np.ones((2, 2, 8), np.float32), "paths": np.array([[1, 1, 0, 0, 0, 1, 0, 1]], np.int32),
             "pairs": np.array([[0, 0, 0, 1]], np.int32), "m_j": np.zeros(1, np.int32), "c": np.ones(1, np.float32),
             "path_block": np.array([[0, 1]], np.int64)}
    ok = sess.run(None, dict(feeds, inv_h=np.array([0.5], np.float32)))[0]
    assert ok.shape == (1,) and np.isfinite(ok).all()
    for bad, why in ((np.zeros(0, np.float32), "inv_h must hold one value"), (np.ones(2, np.float32), "inv_h must hold one value"),
                     (np.array([np.nan], np.float32), "inv_h must be finite and positive"),
                     (np.array([-1.0], np.float32), "inv_h must be finite and positive")):
        with pytest.raises(Exception, match=why):
            sess.run(None, dict(feeds, inv_h=bad))
