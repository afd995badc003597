"""onnxruntime providers for a device: CUDA with full float32 matrix products (no TF32) on the device asked for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cdp.core.types import CdpError
from cdp.export.runtime import OnnxBackend


def _providers(available, device):
    ort = SimpleNamespace(get_available_providers=lambda: list(available))
    return OnnxBackend._providers(SimpleNamespace(ort=ort), device)


def test_cuda_runs_without_tf32_on_the_device_asked_for():
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _providers(gpu, "cuda") == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert _providers(gpu, "cuda:1")[0] == ("CUDAExecutionProvider", {"use_tf32": "0", "device_id": "1"})
    assert _providers(gpu, "auto")[0][0] == "CUDAExecutionProvider"
    assert _providers(gpu, "cpu") == ["CPUExecutionProvider"]


def test_refusals():
    with pytest.raises(CdpError, match="unknown device 'cuda:x'"):
        _providers(["CUDAExecutionProvider"], "cuda:x")
    with pytest.raises(CdpError, match="no CUDA provider"):
        _providers(["CPUExecutionProvider"], "cuda")
    with pytest.raises(CdpError, match="unknown device 'tpu'"):
        _providers(["CPUExecutionProvider"], "tpu")
    assert _providers(["CPUExecutionProvider"], "auto") == ["CPUExecutionProvider"]
