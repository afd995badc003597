"""A tiny equiDeepDFT model (float64) and its checkpoint, for tests of everything around a model."""

from __future__ import annotations

import torch

from cdp.core.checkpoint import save_checkpoint
from cdp.core.model import DensityModel


def tiny_config(spin: bool = False) -> dict:
    return {
        "featurizer": {"name": "embedding", "size": 8},
        "graph": {"name": "periodic"},
        "backbone": {"name": "equideepdft", "num_interactions": 1, "node_size": 8, "cutoff": 3.0,
                     "distance_embedding_size": 8},
        "readout": {"name": "mlp", "activation": "silu", "spin": spin},
    }


def tiny_model(spin: bool = False, seed: int = 0) -> DensityModel:
    torch.manual_seed(seed)
    return DensityModel.from_config(tiny_config(spin)).double()


def tiny_checkpoint(path, spin: bool = False, elements=None):
    save_checkpoint(path, tiny_model(spin), metadata={"elements": elements} if elements else {})
    return path
