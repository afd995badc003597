"""Training configs: read a YAML file (``yaml.safe_load``), fill defaults from presets, check every key.

Precedence, lowest first: built-in defaults < the model preset's own ``train`` block < a named training
preset (``preset: qm9``) < keys written in the config.  The resolved config (model as a full component
config, every hyper-parameter explicit) is what a run directory stores as ``config.yaml``; loading it
again gives the same config.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from cdp.core.model_size import check_model_memory
from cdp.core.registry import PRESET_KEYS, get_registry, validate_preset
from cdp.core.prior import check_prior_config
from cdp.core.types import CdpError
from cdp.core.yamlio import read_yaml_mapping

LOSSES = ("l1", "mse")
DTYPES = ("float32", "float64")

DEFAULTS = {
    "preset": None,
    "dataset": None,
    "split": None,
    "pbc": None,
    "probes": 200,
    "batch_size": 4,
    "loss": "l1",
    "lr": 5.0e-3,
    "beta": 3.0e3,
    "steps": None,
    "time_budget": None,
    "seed": 42,
    "dtype": "float32",
    "validate_every": 100,
    "val_probes": 500,
    "val_structures": None,
    "checkpoint_every": None,
    "log_every": 10,
    "progress": None,
}
HYPER_FROM_MODEL = ("loss", "lr", "beta", "batch_size", "probes")
KEYS = ("model", *DEFAULTS)


def load_config_file(path) -> dict:
    """The mapping in a YAML config file; errors name the file."""
    return read_yaml_mapping(path, "config", "a training config: a mapping of keys")


def resolve_model(model: Any, where: str, registry=None) -> dict:
    """``{"preset": name|None, featurizer, graph, backbone, readout, prior}`` from a preset name or mapping.

    A mapping may name ``preset`` and override any component's parameters (merged into the preset's),
    or give all four components in full.  ``prior`` (the atomic reference densities, see
    :mod:`cdp.core.prior`) comes from the preset unless given; ``prior: null`` turns it off.
    """
    if isinstance(model, str):
        model = {"preset": model}
    if not isinstance(model, dict):
        raise CdpError(f"{where}: 'model' must be a preset name or a mapping of components")
    unknown = set(model) - set(PRESET_KEYS) - {"preset", "prior"}
    if unknown:
        raise CdpError(f"{where}: unknown key 'model.{sorted(unknown)[0]}' (expected preset, {', '.join(PRESET_KEYS)}, prior)")
    name = model.get("preset")
    base: dict = {}
    if name is not None:
        if not isinstance(name, str):
            raise CdpError(f"{where}: 'model.preset' must be a preset name")
        registry = registry or get_registry()
        base = copy.deepcopy(registry.preset(name))
    out = {"preset": name}
    for key in PRESET_KEYS:
        comp = copy.deepcopy(base.get(key, {}))
        over = model.get(key)
        if over is not None:
            if not isinstance(over, dict):
                raise CdpError(f"{where}: 'model.{key}' must be a mapping")
            if "name" in over and over["name"] != comp.get("name"):
                comp = {}  # a different component: its preset parameters do not apply
            comp.update(copy.deepcopy(over))
        if not comp:
            raise CdpError(f"{where}: 'model.{key}' is missing (name a model preset or give all components)")
        out[key] = comp
    if "prior" in model:
        prior = model["prior"]
        if isinstance(prior, dict) and isinstance(base.get("prior"), dict):
            prior = {**base["prior"], **prior}
    else:
        prior = base.get("prior")
    out["prior"] = check_prior_config(copy.deepcopy(prior), f"{where}: model.prior")
    validate_preset({k: out[k] for k in PRESET_KEYS}, f"{where}: model")
    return out


def _positive(cfg: dict, key: str, where: str, kind=float, allow_none: bool = False):
    value = cfg[key]
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int:
        ok = float(value) == int(value)
    if not ok or not math.isfinite(float(value)) or value <= 0:
        what = "a positive integer" if kind is int else "a positive number"
        raise CdpError(f"{where}: '{key}' must be {what}" + (" or null" if allow_none else "") + f" (got {value!r})")
    return kind(value)


def resolve_config(config: Union[dict, str, Path], registry=None) -> dict:
    """A complete, checked training config from a mapping or YAML path (see module docstring)."""
    where = "config"
    if isinstance(config, (str, Path)):
        where = str(config)
        config = load_config_file(config)
    if not isinstance(config, dict):
        raise CdpError("config: a training config must be a mapping of keys")
    config = copy.deepcopy(config)
    unknown = [k for k in config if k not in KEYS]
    if unknown:
        raise CdpError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(KEYS)})")
    if "model" not in config:
        raise CdpError(f"{where}: missing key 'model' (a model preset name or component config)")
    model = resolve_model(config["model"], where, registry)

    cfg = dict(DEFAULTS)
    model_train = {}
    if model["preset"] is not None:
        model_train = (registry or get_registry()).preset(model["preset"]).get("train", {}) or {}
    cfg.update({k: v for k, v in model_train.items() if k in HYPER_FROM_MODEL})
    if config.get("preset") is not None:
        if not isinstance(config["preset"], str):
            raise CdpError(f"{where}: 'preset' must be a training preset name")
        named = (registry or get_registry()).training_preset(config["preset"])
        bad = [k for k in named if k not in DEFAULTS or k == "preset"]
        if bad:
            raise CdpError(f"training preset '{config['preset']}': unknown key '{bad[0]}' (known: {', '.join(k for k in DEFAULTS if k != 'preset')})")
        cfg.update(named)
    cfg.update(config)
    cfg["model"] = model

    # -- checks, each naming its key --------------------------------------------------------------
    if cfg["loss"] not in LOSSES:
        raise CdpError(f"{where}: 'loss' must be one of {', '.join(LOSSES)} (got {cfg['loss']!r})")
    if cfg["dtype"] not in DTYPES:
        raise CdpError(f"{where}: 'dtype' must be one of {', '.join(DTYPES)} (got {cfg['dtype']!r})")
    cfg["lr"] = _positive(cfg, "lr", where)
    cfg["beta"] = _positive(cfg, "beta", where)
    for key in ("probes", "batch_size", "validate_every", "val_probes", "log_every"):
        cfg[key] = _positive(cfg, key, where, int)
    cfg["steps"] = _positive(cfg, "steps", where, int, allow_none=True)
    cfg["time_budget"] = _positive(cfg, "time_budget", where, float, allow_none=True)
    cfg["val_structures"] = _positive(cfg, "val_structures", where, int, allow_none=True)
    cfg["checkpoint_every"] = _positive(cfg, "checkpoint_every", where, int, allow_none=True) or cfg["validate_every"]
    if cfg["steps"] is None and cfg["time_budget"] is None:
        raise CdpError(f"{where}: set 'steps' or 'time_budget' (seconds) to say when training stops")
    seed = cfg["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise CdpError(f"{where}: 'seed' must be a non-negative integer (got {seed!r})")
    if cfg["pbc"] is not None and not isinstance(cfg["pbc"], bool):
        raise CdpError(f"{where}: 'pbc' must be true, false or null (null: as stored in the dataset)")
    if cfg["progress"] is not None and not isinstance(cfg["progress"], bool):
        raise CdpError(f"{where}: 'progress' must be true, false or null (null: only on a terminal)")
    if cfg["dataset"] is not None and not isinstance(cfg["dataset"], str):
        raise CdpError(f"{where}: 'dataset' must be a path or null (null: the embedded dataset)")
    _check_split(cfg["split"], where)

    check_model_memory(model, f"{where}: model", 8 if cfg["dtype"] == "float64" else 4)
    return {k: cfg[k] for k in KEYS}


def _check_split(split: Any, where: str) -> None:
    if split is None or isinstance(split, str):
        return
    if not isinstance(split, dict):
        raise CdpError(f"{where}: 'split' must be a JSON path, a mapping of name lists, or a mapping of fractions")
    for key, value in split.items():
        if key not in ("train", "validation", "test"):
            raise CdpError(f"{where}: unknown key 'split.{key}' (train, validation, test)")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not 0 <= value <= 1:
                raise CdpError(f"{where}: 'split.{key}' fraction must lie in [0, 1] (got {value})")
        elif not isinstance(value, list):
            raise CdpError(f"{where}: 'split.{key}' must be a list of structure names/indices or a fraction")
    if "train" not in split:
        raise CdpError(f"{where}: 'split' needs a 'train' entry")


def dump_config(cfg: dict) -> str:
    """YAML text of a resolved config (block style, keys in their canonical order)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


RESUME_CHANGEABLE = ("steps", "time_budget", "progress")


def resume_config(saved: dict, given: Optional[dict], where: str) -> dict:
    """The saved run config; a resolved ``given`` config may change only steps, time_budget and progress."""
    cfg = copy.deepcopy(saved)
    if not given:
        return cfg
    for key in KEYS:
        if key in RESUME_CHANGEABLE:
            cfg[key] = given[key]
        elif key == "split":
            continue  # the run stores its resolved split; the run's own split is kept
        elif given.get(key) != saved.get(key):
            raise CdpError(f"{where}: '{key}' differs from the run being resumed (only {', '.join(RESUME_CHANGEABLE)} may change)")
    if cfg["steps"] is None and cfg["time_budget"] is None:
        raise CdpError(f"{where}: set 'steps' or 'time_budget' (seconds) to say when training stops")
    return cfg
