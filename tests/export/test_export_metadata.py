"""Bad input around exports: unexportable components are named; mismatching metadata is refused."""

from __future__ import annotations

import json
import shutil
from typing import List

import pytest
import torch
from torch import Tensor

from cdp.core.checkpoint import file_sha256
from cdp.core.model import DensityModel
from cdp.core.types import CdpError
from cdp.export import export_model
from cdp.export.runtime import load_exported
from cdp.plugins.graphs.periodic import PeriodicGraphBuilder
from tests.helpers.export import tiny_model
from tests.helpers.toy_components import ToyBackbone, ToyEmbedding, ToyReadout


class DataDependentBackbone(ToyBackbone):
    """Decodes with Python control flow on tensor values: not exportable by torch.export."""

    def decode(self, atom_layers: List[Tensor], edge_index: Tensor, edge_vec: Tensor, num_probes: int) -> Tensor:
        if float(edge_vec.abs().max()) > 100.0:
            edge_vec = edge_vec * 0.5
        return super().decode(atom_layers, edge_index, edge_vec, num_probes)


@pytest.fixture(scope="module")
def ts_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("meta") / "ts"
    export_model(tiny_model("invdeepdft"), path, "torchscript")
    return path


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _edit(path, **changes):
    meta = json.loads((path / "cdp_export.json").read_text())
    meta.update(changes)
    (path / "cdp_export.json").write_text(json.dumps(meta))
    return meta


def test_unexportable_component_is_named(tmp_path):
    torch.manual_seed(0)
    model = DensityModel(ToyEmbedding(4), DataDependentBackbone(4), ToyReadout(ToyBackbone(4).out_spec), PeriodicGraphBuilder()).eval()
    with pytest.raises(CdpError) as info:
        export_model(model, tmp_path / "bad", "onnx")
    msg = str(info.value)
    assert "decoder" in msg and "backbone 'DataDependentBackbone'" in msg and "test_export_metadata.py" in msg
    assert "\n" not in msg


def test_unknown_format_refused(tmp_path):
    with pytest.raises(CdpError, match="unknown export format 'tflite'"):
        export_model(tiny_model("invdeepdft"), tmp_path / "x", "tflite")


def test_metadata_written(ts_export):
    meta = json.loads((ts_export / "cdp_export.json").read_text())
    for key in ("format", "format_version", "artifact", "cutoff", "elements", "dtype", "cdp_version", "source", "encoder", "decoder"):
        assert key in meta
    assert meta["encoder"]["sha256"] == file_sha256(ts_export / "encoder.pt")
    assert [i["name"] for i in meta["decoder"]["inputs"]] == ["atom_layer_0", "atom_layer_1", "probe_edge_index", "probe_edge_vec", "probe_slots"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 99}, "format version 99 is not supported"),
        ({"cutoff": 4.0}, r"cutoff '3.0' in the file does not match"),
        ({"elements": [1, 6, 8]}, "elements .* in the file does not match"),
        ({"format": "other"}, "not a cdp export description"),
        ({"artifact": "onnx"}, "encoder file encoder.pt is not a onnx artifact"),
    ],
)
def test_runtime_refuses_mismatching_metadata(ts_export, tmp_path, change, message):
    path = _copy(ts_export, tmp_path)
    _edit(path, **change)
    with pytest.raises(CdpError, match=message):
        load_exported(path)


def test_runtime_refuses_replaced_artifact(ts_export, tmp_path):
    path = _copy(ts_export, tmp_path)
    (path / "decoder.pt").write_bytes((path / "decoder.pt").read_bytes() + b"\0")
    with pytest.raises(CdpError, match="SHA-256 does not match"):
        load_exported(path)


def test_runtime_refuses_missing_directory(tmp_path):
    with pytest.raises(CdpError, match="not an export directory"):
        load_exported(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CdpError, match="no cdp_export.json"):
        load_exported(tmp_path / "empty")
