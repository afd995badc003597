"""Typed defaults of the built-in backbones: the published hyperparameters, defined once.

Each dataclass holds one backbone's constructor defaults (its published configuration).  They are read by
the backbone constructors (``ChargE3NetBackbone(num_interactions=ChargE3NetConfig.num_interactions, ...)``),
by the published-checkpoint importers (values a checkpoint does not record), and by the registry, which
fills a preset's ``backbone`` block from them (``registry.yaml`` names only what differs).  A leaf module:
plain data, no torch, no plugin import.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Tuple, Type


@dataclass(frozen=True)
class ChargE3NetConfig:
    """ChargE3Net as published (Koker et al. 2024, Materials Project config)."""

    num_interactions: int = 3
    num_neighbors: float = 20  # normalisation of the neighbour sums
    mul: int = 500  # channel budget of the hidden irreps
    lmax: int = 4
    cutoff: float = 4.0  # Å
    basis: str = "gaussian"
    num_basis: int = 20
    radial_neurons: int = 100
    backend: str = "fast"  # "fast" or "e3nn": the same function, interchangeable state_dicts
    radial: str = "table"  # CPU inference reads the radial MLPs from piecewise-cubic tables ("mlp": never)
    radial_rtol: float = 2.5e-7  # the tables' measured error bound, relative to max |w|

    #: constructor arguments a preset's backbone block carries (the architecture as published)
    PRESET_KEYS = ("num_interactions", "num_neighbors", "mul", "lmax", "cutoff", "basis", "num_basis")


@dataclass(frozen=True)
class InvDeepDFTConfig:
    """invDeepDFT (SchNet-style DeepDFT) as published: 6 × 128."""

    num_interactions: int = 6
    node_size: int = 128
    cutoff: float = 4.0  # Å
    gaussian_expansion_step: float = 0.1  # Å

    PRESET_KEYS = ("num_interactions", "node_size", "cutoff", "gaussian_expansion_step")


@dataclass(frozen=True)
class EquiDeepDFTConfig:
    """equiDeepDFT (PaiNN-style DeepDFT) as published: 3 × 128."""

    num_interactions: int = 3
    node_size: int = 128
    cutoff: float = 4.0  # Å
    distance_embedding_size: int = 30

    PRESET_KEYS = ("num_interactions", "node_size", "cutoff", "distance_embedding_size")


#: backbone name (as registered) → its typed defaults
BACKBONE_DEFAULTS: Dict[str, Type] = {
    "chargee3net": ChargE3NetConfig,
    "invdeepdft": InvDeepDFTConfig,
    "equideepdft": EquiDeepDFTConfig,
}


def defaults(config_class: Type) -> dict:
    """Every field of a config dataclass with its default, in declaration order."""
    return {f.name: f.default for f in fields(config_class)}


def preset_params(name: str) -> Tuple[dict, bool]:
    """(the published parameters a preset of backbone ``name`` carries, whether ``name`` has typed defaults)."""
    cls = BACKBONE_DEFAULTS.get(name)
    if cls is None:
        return {}, False
    values = defaults(cls)
    return {k: values[k] for k in cls.PRESET_KEYS}, True


def fill_backbone(block: dict) -> dict:
    """A preset's backbone block with the published defaults of the parameters it does not name.

    ``{"name": "chargee3net", "mul": 48}`` → ``{"name": "chargee3net", "num_interactions": 3, ..., "mul": 48, ...}``;
    a backbone without typed defaults (a third-party plugin's) is returned unchanged.
    """
    params, known = preset_params(block.get("name")) if isinstance(block.get("name"), str) else ({}, False)
    if not known:
        return block
    out = {"name": block["name"], **params}
    out.update({k: v for k, v in block.items() if k != "name"})
    return out
