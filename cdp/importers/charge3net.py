"""Import a published ChargE3Net checkpoint (trainer or legacy Lightning format) into cdp's layout.

Checkpoints hold no hyperparameters; they come from an optional config (flat mapping, the published
model config with keys under ``model:``, a composed run config with keys under ``model.model`` and
``${...}`` references, or ``{"hyperparameters": ...}``; YAML or JSON), from the weight shapes, and only
then from the paper defaults.  What both the config and the shapes say must agree.  Pickled objects
other than tensors are never executed (:mod:`cdp.core.safe_pickle`).
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from cdp.core.configs import ChargE3NetConfig, preset_params
from cdp.core.constants import NUM_ELEMENTS
from cdp.core.interpolation import resolve_section
from cdp.core.model_size import check_model_memory
from cdp.core.registry import build_parts
from cdp.core.safe_pickle import load_torch_file
from cdp.core.types import CdpError
from cdp.core.yamlio import safe_yaml_load
from cdp.nn.irreps import get_irreps

# the published hyperparameters a checkpoint does not record (cdp.core.configs.ChargE3NetConfig), and spin
PAPER_DEFAULTS: Dict[str, Any] = {**preset_params("chargee3net")[0], "spin": False}
_INT_KEYS = ("num_interactions", "mul", "lmax", "num_basis")
_FLOAT_KEYS = ("num_neighbors", "cutoff")
_DEFAULT_RADIAL_NEURONS = ChargE3NetConfig.radial_neurons

# published key prefix -> cdp key prefix
_RENAMES = [
    (r"atom_model\.basis\.", "backbone.atom_basis."),
    (r"probe_model\.basis\.", "backbone.probe_basis."),
    (r"atom_model\.convolutions\.", "backbone.atom_convs."),
    (r"atom_model\.gates\.", "backbone.atom_gates."),
    (r"probe_model\.convolutions\.", "backbone.probe_convs."),
    (r"probe_model\.gates\.", "backbone.probe_gates."),
    (r"probe_model\.readout\.", "readout.linear."),
]


# ---------------------------------------------------------------------------------------------------
# config


def _is_constant_key(key: str) -> bool:
    """Buffers derived from the architecture (masks, Wigner 3j), rebuilt rather than imported."""
    return key.endswith("output_mask") or "._w3j_" in key or key.endswith("sc_mask")


def _number(value: Any, key: str, where: str, integer: bool) -> Union[int, float]:
    """Numbers as written in YAML/JSON, including strings such as ``"3e3"`` (yaml reads those as str)."""
    if isinstance(value, bool):
        raise CdpError(f"{where}: '{key}' must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise CdpError(f"{where}: '{key}' must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CdpError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise CdpError(f"{where}: '{key}' must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _bool(value: Any, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise CdpError(f"{where}: '{key}' must be true or false, got {value!r}")


def _read_document(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CdpError(f"{path}: cannot read config ({exc.strerror})") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise CdpError(f"{path}: invalid JSON ({str(exc).splitlines()[0]})") from None
    return safe_yaml_load(text, str(path))


def _model_section(doc: Mapping, where: str) -> Tuple[Mapping, str]:
    """The mapping that holds the network hyperparameters, and its dotted location."""
    if isinstance(doc.get("hyperparameters"), Mapping):
        return doc["hyperparameters"], "hyperparameters"
    model = doc.get("model")
    if isinstance(model, Mapping):
        if isinstance(model.get("model"), Mapping):
            return model["model"], "model.model"
        return model, "model"
    return doc, ""


def parse_config(config: Union[None, str, Path, Mapping], where: Optional[str] = None) -> Dict[str, Any]:
    """Hyperparameters given by a config (path or already-loaded mapping); only the keys it sets."""
    if config is None:
        return {}
    if isinstance(config, (str, Path)):
        path = Path(config)
        where = where or str(path)
        if not path.is_file():
            raise CdpError(f"{path}: no such config file")
        doc = _read_document(path)
    else:
        doc = config
        where = where or "config"
    if not isinstance(doc, Mapping):
        raise CdpError(f"{where}: expected a mapping of ChargE3Net hyperparameters")
    section, loc = _model_section(doc, where)
    target = section.get("_target_")
    if isinstance(target, str) and target.rsplit(".", 1)[-1] not in ("E3DensityModel",):
        raise CdpError(f"{where}: config describes {target}, not a ChargE3Net E3DensityModel")
    out: Dict[str, Any] = {}
    values = resolve_section(doc, loc.split(".") if loc else [], PAPER_DEFAULTS, where)
    for key, value in values.items():
        name = f"{loc}.{key}" if loc else key
        if key in _INT_KEYS:
            out[key] = _number(value, name, where, integer=True)
        elif key in _FLOAT_KEYS:
            out[key] = _number(value, name, where, integer=False)
        elif key == "spin":
            out[key] = _bool(value, name, where)
        else:  # basis
            if not isinstance(value, str) or not value:
                raise CdpError(f"{where}: '{name}' must be a basis name, got {value!r}")
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------------
# checkpoint


def read_state_dict(path) -> Dict[str, torch.Tensor]:
    """Published weights with published keys (``atom_model.*``/``probe_model.*``), either format."""
    path = Path(path)
    data = load_torch_file(str(path))
    if not isinstance(data, Mapping):
        raise CdpError(f"{path}: expected a ChargE3Net checkpoint (a dict with 'model' or 'state_dict')")
    if isinstance(data.get("model"), Mapping):
        sd = dict(data["model"])
    elif isinstance(data.get("state_dict"), Mapping):
        raw = data["state_dict"]
        sd = {k[len("network."):]: v for k, v in raw.items() if isinstance(k, str) and k.startswith("network.")}
        if not sd:
            sd = dict(raw)
    else:
        sd = dict(data)
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CdpError(f"{path}: entry '{bad[0]}' of the state_dict is not a tensor")
    if not any(k.startswith("atom_model.convolutions.") for k in sd):
        raise CdpError(f"{path}: no ChargE3Net weights found (expected keys 'atom_model.convolutions.*')")
    return sd


def _numel(sd, key, source) -> int:
    if key not in sd:
        raise CdpError(f"{source}: missing weight '{key}'")
    return int(sd[key].numel())


def _hidden_muls(mul: int, lmax: int):
    return [m for m, ir in get_irreps(mul, lmax) if ir.p == (-1) ** ir.l]


def infer_from_state_dict(sd: Mapping[str, torch.Tensor], source: str) -> Dict[str, Any]:
    """Hyperparameters implied by the weight shapes, plus ``mul_candidates`` (all equivalent budgets)."""
    convs = {int(m.group(1)) for k in sd for m in [re.match(r"atom_model\.convolutions\.(\d+)\.", k)] if m}
    n = max(convs) + 1
    if convs != set(range(n)):
        raise CdpError(f"{source}: atom convolutions {sorted(convs)} are not numbered 0..{n - 1}")
    fc0 = f"atom_model.convolutions.0.fc.layer0.weight"
    if fc0 not in sd or sd[fc0].ndim != 2:
        raise CdpError(f"{source}: missing weight '{fc0}'")
    num_basis, radial_neurons = (int(s) for s in sd[fc0].shape)
    # layer 0 reads 119x0e: one uvu path per reachable l, the 0e path always present
    n_paths = _numel(sd, "atom_model.convolutions.0.fc.layer1.weight", source) // radial_neurons // NUM_ELEMENTS
    n_scalars_gates = _numel(sd, "atom_model.convolutions.0.sc.weight", source) // NUM_ELEMENTS
    n_gated = _numel(sd, "atom_model.gates.0.mul.output_mask", source) if n_paths > 1 else 0
    lmax = n_paths - 1
    candidates = []
    for mul in range(1, (n_scalars_gates + 1) * (lmax + 1) + 1):
        muls = _hidden_muls(mul, lmax)
        if len(muls) != lmax + 1:
            continue
        if muls[0] + sum(muls[1:]) == n_scalars_gates and sum(m * (2 * l + 1) for l, m in enumerate(muls) if l) == n_gated:
            candidates.append(mul)
    out: Dict[str, Any] = {
        "num_interactions": n,
        "num_basis": num_basis,
        "radial_neurons": radial_neurons,
        "lmax": lmax,
        "mul_candidates": candidates,
    }
    ro = "probe_model.readout.output_mask"
    if ro in sd:
        out["spin"] = int(sd[ro].numel()) == 2
    return out


def _canonical_mul(candidates, m0: int, lmax: int) -> int:
    return min(candidates, key=lambda m: (abs(m - m0 * (lmax + 1)), m))


def resolve_hyperparameters(given: Mapping[str, Any], sd: Mapping[str, torch.Tensor], source: str, where: str) -> Dict[str, Any]:
    """Merge config values, shape-inferred values and paper defaults; refuse contradictions."""
    inferred = infer_from_state_dict(sd, source)
    hp: Dict[str, Any] = {}
    for key in ("num_interactions", "num_basis", "lmax", "spin"):
        if key in inferred and key in given and given[key] != inferred[key]:
            raise CdpError(f"{where}: {key} = {given[key]} contradicts the checkpoint weights ({key} = {inferred[key]})")
        hp[key] = given.get(key, inferred.get(key, PAPER_DEFAULTS[key]))
    cands = inferred["mul_candidates"]
    if not cands:
        raise CdpError(f"{source}: weight shapes of layer 0 fit no channel budget (mul) at lmax = {hp['lmax']}")
    m0 = _hidden_muls(cands[0], hp["lmax"])[0]
    if "mul" in given:
        if given["mul"] not in cands:
            raise CdpError(
                f"{where}: mul = {given['mul']} contradicts the checkpoint weights "
                f"(mul = {_canonical_mul(cands, m0, hp['lmax'])}, any of {cands[0]}..{cands[-1]})"
            )
        hp["mul"] = given["mul"]
    elif PAPER_DEFAULTS["mul"] in cands:
        hp["mul"] = PAPER_DEFAULTS["mul"]
    else:
        hp["mul"] = _canonical_mul(cands, m0, hp["lmax"])
    for key in ("num_neighbors", "cutoff", "basis"):
        hp[key] = given.get(key, PAPER_DEFAULTS[key])
    hp["radial_neurons"] = inferred["radial_neurons"]
    return hp


def model_config(hp: Mapping[str, Any]) -> dict:
    """cdp model config of a ChargE3Net with these hyperparameters."""
    backbone = {"name": "chargee3net"}
    for key in ("num_interactions", "num_neighbors", "mul", "lmax", "cutoff", "basis", "num_basis"):
        backbone[key] = hp[key]
    if int(hp.get("radial_neurons", _DEFAULT_RADIAL_NEURONS)) != _DEFAULT_RADIAL_NEURONS:
        backbone["radial_neurons"] = int(hp["radial_neurons"])
    return {
        "featurizer": {"name": "onehot"},
        "graph": {"name": "periodic"},
        "backbone": backbone,
        "readout": {"name": "linear-spin-compat" if hp.get("spin") else "linear"},
    }


def build_components(config: Mapping):
    """(featurizer, backbone, readout) of a ChargE3Net config, built through the plugin registry."""
    return build_parts(config)


def rename(sd: Mapping[str, torch.Tensor], source: str, origin: Optional[Dict[str, str]] = None) -> Dict[str, torch.Tensor]:
    """Published keys → cdp keys (``origin`` collects cdp key → published key); unknown keys are refused."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for pattern, prefix in _RENAMES:
            m = re.match(pattern, key)
            if m:
                out[prefix + key[m.end():]] = value
                if origin is not None:
                    origin[prefix + key[m.end():]] = key
                break
        else:
            raise CdpError(f"{source}: unexpected weight '{key}' for a ChargE3Net model")
    return out


def map_onto(
    template: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    source: str,
    origin: Optional[Mapping[str, str]] = None,
) -> "OrderedDict[str, torch.Tensor]":
    """A full state_dict for ``template``: imported weights (shapes checked), rebuilt constants."""
    origin = origin or {}
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def check(key, value, ref):
        if tuple(value.shape) != tuple(ref.shape):
            name = f"'{origin[key]}' (cdp '{key}')" if key in origin else f"'{key}'"
            raise CdpError(
                f"{source}: weight {name} has shape {tuple(value.shape)}, the hyperparameters imply {tuple(ref.shape)}"
            )

    for key, ref in template.items():
        if key in weights and not _is_constant_key(key):
            check(key, weights[key], ref)
            out[key] = weights[key].detach().to(ref.dtype).clone()
        elif key in weights or _is_constant_key(key) or ref.numel() == 0:
            if key in weights:
                check(key, weights[key], ref)
            out[key] = ref.detach().clone()
        else:
            raise CdpError(f"{source}: missing weight for '{key}' (do the hyperparameters match the checkpoint?)")
    extra = [k for k in weights if k not in template and not _is_constant_key(k)]
    if extra:
        name = origin.get(extra[0], extra[0])
        raise CdpError(f"{source}: unexpected weight '{name}' (do the hyperparameters match the checkpoint?)")
    return out


def import_charge3net_components(path, config=None):
    """Like :func:`import_charge3net`, plus the (featurizer, backbone, readout) with the weights loaded."""
    path = Path(path)
    source = str(path)
    where = str(config) if isinstance(config, (str, Path)) else "config"
    given = parse_config(config)
    sd = read_state_dict(path)
    hp = resolve_hyperparameters(given, sd, source, where)
    cfg = model_config(hp)

    check_model_memory(cfg, where)
    modules = build_components(cfg)
    template: Dict[str, torch.Tensor] = {}
    for prefix, module in zip(("featurizer", "backbone", "readout"), modules):
        template.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    origin: Dict[str, str] = {}
    state_dict = map_onto(template, rename(sd, source, origin), source, origin)
    for prefix, module in zip(("featurizer", "backbone", "readout"), modules):
        n = len(prefix) + 1
        module.load_state_dict({k[n:]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}, strict=True)
    return cfg, state_dict, modules


def import_charge3net(path, config=None) -> Tuple[dict, "OrderedDict[str, torch.Tensor]"]:
    """Read a published checkpoint; return (cdp model config, state_dict with cdp keys), all shapes checked."""
    cfg, state_dict, _ = import_charge3net_components(path, config)
    return cfg, state_dict
