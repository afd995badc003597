"""Inference on a CUDA device equals inference on the CPU (every backbone; ChargE3Net with both backends).

Skipped without a CUDA device (CI has none); run where one exists:
``python -m pytest -q tests/plugins/backbones/test_cuda_inference.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cdp.core.model import DensityModel
from cdp.export.examples import TINY_CONFIGS
from cdp.predict import Predictor
from tests.helpers.export import cases, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = [("chargee3net", "fast"), ("chargee3net", "e3nn"), ("invdeepdft", None), ("equideepdft", None)]


def _model(name: str, backend):
    model = tiny_model(name)
    if backend is None:
        return model
    cfg = copy.deepcopy(TINY_CONFIGS[name])
    cfg["backbone"]["backend"] = backend
    out = DensityModel.from_config(cfg).eval()
    out.load_state_dict(model.state_dict())
    return out


@pytest.mark.parametrize("name,backend", CASES)
def test_cuda_matches_cpu(name, backend):
    model = _model(name, backend)
    for label, atoms, probes in cases():
        cpu = Predictor(copy.deepcopy(model), device="cpu").predict(atoms, probes)
        gpu = Predictor(copy.deepcopy(model), device="cuda").predict(atoms, probes)
        scale = max(float(np.abs(cpu).max()), 1e-12)
        assert np.abs(gpu - cpu).max() <= 1e-5 * scale, (label, float(np.abs(gpu - cpu).max() / scale))
