"""Export directories: a non-empty target is refused untouched; tampered cdp_export.json is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from cdp.core.types import CdpError
from cdp.export import export_model
from cdp.export.runtime import load_exported
from tests.helpers.export import tiny_model


@pytest.fixture(scope="module")
def ts_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("safety") / "ts"
    export_model(tiny_model("invdeepdft"), path, "torchscript")
    return path


def _snapshot(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_non_empty_dir_refused_untouched(tmp_path):
    from cdp.cli.main import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    with pytest.raises(CdpError, match=r"out: directory is not empty \(holds 'notes.txt'\); .* --force"):
        export_model(tiny_model("invdeepdft"), out, "torchscript")
    assert main(["export", "invdeepdft-cpu", "--format", "torchscript", "-o", str(out)]) == 2
    assert _snapshot(out) == before


def test_empty_dir_and_force(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    meta = export_model(tiny_model("invdeepdft"), out, "torchscript")
    assert sorted(p.name for p in out.iterdir()) == ["cdp_export.json", "decoder.pt", "encoder.pt"]
    (out / "notes.txt").write_text("mine")
    again = export_model(tiny_model("invdeepdft"), out, "torchscript", force=True)
    assert again["cutoff"] == meta["cutoff"]
    load_exported(out)  # the forced export is complete and consistent
    assert (out / "notes.txt").read_text() == "mine"


def test_export_accepts_shipped_model_names():
    from cdp.cli.export import _load

    model, info, source = _load("demo")
    assert source.endswith("demo.ckpt") and info["format"] == "cdp-checkpoint"
    with pytest.raises(CdpError, match=r"nope: no such checkpoint file, shipped model \(demo, qm9\) or preset"):
        _load("nope")


@pytest.mark.parametrize(
    "role, change, message",
    [
        (None, {"dtype": "float16"}, "dtype must be float32 or float64, got 'float16'"),
        (None, {"spin": "yes"}, "spin must be true or false, got 'yes'"),
        (None, {"elements": [1000]}, r"elements must be a non-empty list of atomic numbers 1..118, got \[1000\]"),
        (None, {"elements": "H"}, "elements must be a non-empty list .* got 'H'"),
        (None, {"elements": [True]}, "elements must be a non-empty list"),
        (None, {"artifact": ["onnx"]}, r"unknown artifact \['onnx'\]"),
        ("encoder", {"file": "../encoder.pt"}, "encoder file '../encoder.pt' is not a file name inside the export directory"),
        ("decoder", {"file": "/tmp/decoder.pt"}, "decoder file '/tmp/decoder.pt' is not a file name inside"),
        ("encoder", {"sha256": None}, "encoder has no valid sha256"),
        ("decoder", {"sha256": "0" * 63}, "decoder has no valid sha256"),
    ],
)
def test_tampered_metadata_refused(ts_export, tmp_path, monkeypatch, role, change, message):
    import torch

    path = tmp_path / "copy"
    shutil.copytree(ts_export, path)
    meta = json.loads((path / "cdp_export.json").read_text())
    (meta[role] if role else meta).update(change)
    (path / "cdp_export.json").write_text(json.dumps(meta))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("artifact loaded"))
    with pytest.raises(CdpError, match=message) as info:
        load_exported(path)
    assert "\n" not in str(info.value)


def test_graph_plugin_of_an_export_checked_like_a_checkpoints(ts_export, tmp_path):
    """The graph builder runs from installed code (the other components are inside the programs): its
    recorded plugin package missing → one line naming it; another distribution or version → one warning."""
    from cdp.core.errors import CdpWarning

    meta = json.loads((ts_export / "cdp_export.json").read_text())
    assert meta["components"]["graph"]["distribution"] == "cdp"
    missing = tmp_path / "missing"
    shutil.copytree(ts_export, missing)
    meta["components"]["graph"] = {"name": "nu-molecule", "class": "x.Graph", "distribution": "newuser-cdp",
                                   "version": "0.1.0"}
    meta["model_config"]["graph"] = {"name": "nu-molecule"}
    (missing / "cdp_export.json").write_text(json.dumps(meta))
    with pytest.raises(CdpError, match=r"missing: its graph 'nu-molecule' comes from the plugin package "
                                       r"newuser-cdp 0\.1\.0, which is not installed \(pip install 'newuser-cdp==0\.1\.0'\)"):
        load_exported(missing)
    other = tmp_path / "other"
    shutil.copytree(ts_export, other)
    meta["components"]["graph"] = {"name": "periodic", "class": "x.Graph", "distribution": "some-plugin",
                                   "version": "2.0"}
    meta["model_config"]["graph"] = {"name": "periodic"}
    (other / "cdp_export.json").write_text(json.dumps(meta))
    with pytest.warns(CdpWarning, match="graph 'periodic' was built by some-plugin 2.0, now by cdp"):
        load_exported(other)
