"""One source of truth: typed backbone defaults (cdp.core.configs) and training presets (registry.yaml)."""

from __future__ import annotations

import inspect

import pytest

from cdp.core.configs import BACKBONE_DEFAULTS, ChargE3NetConfig, defaults, fill_backbone
from cdp.core.errors import CdpError
from cdp.core.registry import get_registry
from cdp.importers.charge3net import PAPER_DEFAULTS
from cdp.plugins.backbones.chargee3net import ChargE3NetBackbone
from cdp.plugins.backbones.painn import EquiDeepDFT
from cdp.plugins.backbones.schnet import InvDeepDFT
from cdp.train.config import resolve_config
from cdp.train.presets import TRAINING_PRESETS, training_preset

# the values as published (and as registry.yaml / train/presets.py spelled them out before)
PUBLISHED_BACKBONES = {
    "chargee3net": {"name": "chargee3net", "num_interactions": 3, "num_neighbors": 20, "mul": 500, "lmax": 4, "cutoff": 4.0,
                    "basis": "gaussian", "num_basis": 20},
    "chargee3net-cpu": {"name": "chargee3net", "num_interactions": 2, "num_neighbors": 20, "mul": 48, "lmax": 2, "cutoff": 4.0,
                        "basis": "gaussian", "num_basis": 10},
    "equideepdft": {"name": "equideepdft", "num_interactions": 3, "node_size": 128, "cutoff": 4.0, "distance_embedding_size": 30},
    "equideepdft-cpu": {"name": "equideepdft", "num_interactions": 2, "node_size": 32, "cutoff": 4.0, "distance_embedding_size": 30},
    "invdeepdft": {"name": "invdeepdft", "num_interactions": 6, "node_size": 128, "cutoff": 4.0, "gaussian_expansion_step": 0.1},
    "invdeepdft-cpu": {"name": "invdeepdft", "num_interactions": 3, "node_size": 32, "cutoff": 4.0, "gaussian_expansion_step": 0.1},
}
PUBLISHED_TRAINING = {
    "mp": {"loss": "l1", "lr": 5.0e-3, "beta": 3.0e3, "batch_size": 16, "probes": 200, "val_probes": 400, "steps": 1_000_000, "pbc": None, "seed": 42},
    "qm9": {"loss": "l1", "lr": 1.0e-2, "beta": 1.0e4, "batch_size": 8, "probes": 200, "val_probes": 500, "steps": 1_000_000, "pbc": False, "seed": 42},
    "nmc": {"loss": "l1", "lr": 1.0e-2, "beta": 1.0e4, "batch_size": 8, "probes": 200, "val_probes": 500, "steps": 750_000, "pbc": None, "seed": 42},
    "mp-deepdft": {"loss": "mse", "lr": 6.0e-4, "beta": 3.0e3, "batch_size": 16, "probes": 200, "val_probes": 400, "steps": 1_000_000, "pbc": None, "seed": 42},
    "qm9-deepdft": {"loss": "mse", "lr": 4.0e-4, "beta": 6.0e3, "batch_size": 8, "probes": 200, "val_probes": 500, "steps": 1_000_000, "pbc": False, "seed": 42},
    "nmc-deepdft": {"loss": "mse", "lr": 4.0e-4, "beta": 6.0e3, "batch_size": 8, "probes": 200, "val_probes": 500, "steps": 750_000, "pbc": None, "seed": 42},
    "deepdft": {"loss": "mse", "lr": 1.0e-4, "beta": 1.0e5, "batch_size": 2, "probes": 1000, "val_probes": 5000, "pbc": None},
}


def test_presets_carry_the_published_backbone_parameters():
    reg = get_registry()
    for name, want in PUBLISHED_BACKBONES.items():
        got = reg.preset(name)["backbone"]
        assert got == want and list(got) == list(want), name
    assert reg.preset("chargee3net")["train"] == {"loss": "l1", "lr": 5.0e-3, "beta": 3.0e3, "batch_size": 16, "probes": 200}
    assert reg.preset("invdeepdft")["train"] == reg.preset("equideepdft")["train"] == {
        "loss": "mse", "lr": 1.0e-4, "beta": 1.0e5, "batch_size": 2, "probes": 1000}
    reg.preset("invdeepdft")["train"]["lr"] = 1.0  # YAML aliases are copied per preset: no shared state
    try:
        assert reg.preset("equideepdft")["train"]["lr"] == 1.0e-4
    finally:
        reg.preset("invdeepdft")["train"]["lr"] = 1.0e-4


@pytest.mark.parametrize("cls, name", [(ChargE3NetBackbone, "chargee3net"), (InvDeepDFT, "invdeepdft"), (EquiDeepDFT, "equideepdft")])
def test_constructor_defaults_are_the_typed_config(cls, name):
    params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    assert params == defaults(BACKBONE_DEFAULTS[name])


def test_importer_defaults_are_the_typed_config():
    assert PAPER_DEFAULTS == {**{k: getattr(ChargE3NetConfig, k) for k in ChargE3NetConfig.PRESET_KEYS}, "spin": False}
    assert fill_backbone({"name": "someone-elses", "x": 1}) == {"name": "someone-elses", "x": 1}


def test_training_presets_are_defined_once_in_the_registry():
    assert TRAINING_PRESETS == PUBLISHED_TRAINING
    assert get_registry().training == PUBLISHED_TRAINING
    assert all(type(v) is type(PUBLISHED_TRAINING[n][k]) for n, p in TRAINING_PRESETS.items() for k, v in p.items())
    cfg = resolve_config({"model": "equideepdft-cpu", "preset": "qm9-deepdft", "steps": 10})
    assert (cfg["lr"], cfg["beta"], cfg["pbc"], cfg["val_probes"]) == (4.0e-4, 6.0e3, False, 500)
    with pytest.raises(CdpError, match=r"unknown training preset 'qm10' \(presets: deepdft, mp, "):
        training_preset("qm10")


def test_a_registry_file_without_training_presets_uses_the_packaged_ones(tmp_path):
    from cdp.core.registry import Registry

    path = tmp_path / "registry.yaml"
    path.write_text("plugins: [cdp.plugins.graphs.periodic]\npresets: {}\n")
    assert Registry(path, entry_points=False).training == PUBLISHED_TRAINING
    path.write_text("plugins: []\ntraining: {quick: {lr: 1.0e-3, bogus: 1}}\n")
    reg = Registry(path, entry_points=False)
    assert reg.training == {"quick": {"lr": 1.0e-3, "bogus": 1}}
    path.write_text("plugins: []\ntraining: [mp]\n")
    with pytest.raises(CdpError, match="'training' must be a mapping"):
        Registry(path, entry_points=False)
