"""Import a published DeepDFT model directory (``arguments.json`` + ``best_model.pth``) into cdp's layout.

The runner's ``best_model.pth`` holds ``{"model": state_dict, "optimizer", "scheduler", "step",
"best_val_mae"}``; it is read without executing pickled code.  Published keys
(``atom_model.*``/``probe_model.*``) are renamed to cdp's ``featurizer.*``/``backbone.*``/``readout.*``
and checked against a freshly built cdp model, so a mismatch is reported by key before anything is used.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from cdp.core.configs import EquiDeepDFTConfig, InvDeepDFTConfig
from cdp.core.model_size import check_model_memory
from cdp.core.registry import build_parts
from cdp.core.safe_pickle import load_torch_file
from cdp.core.types import CdpError

ARGUMENTS = "arguments.json"
WEIGHTS = "best_model.pth"

# (published key pattern, cdp key template); \1 is the layer index
_COMMON_RULES: List[Tuple[str, str]] = [
    (r"atom_model\.atom_embeddings\.weight", "featurizer.embedding.weight"),
    (r"probe_model\.readout_function\.([02])\.(weight|bias)", r"readout.net.\1.\2"),
]
_SCHNET_RULES: List[Tuple[str, str]] = [
    (r"atom_model\.interactions\.(\d+)\.message_sum_module\.message_function\.msg_function_edge\.(.+)",
     r"backbone.interactions.\1.message.edge_mlp.\2"),
    (r"atom_model\.interactions\.(\d+)\.message_sum_module\.message_function\.msg_function_node\.(.+)",
     r"backbone.interactions.\1.message.node_mlp.\2"),
    (r"atom_model\.interactions\.(\d+)\.state_transition_function\.(.+)", r"backbone.interactions.\1.update_mlp.\2"),
    (r"probe_model\.messagesum_layers\.(\d+)\.message_function\.msg_function_edge\.(.+)",
     r"backbone.probe_layers.\1.message.edge_mlp.\2"),
    (r"probe_model\.messagesum_layers\.(\d+)\.message_function\.msg_function_node\.(.+)",
     r"backbone.probe_layers.\1.message.node_mlp.\2"),
    (r"probe_model\.probe_state_gate_functions\.(\d+)\.(.+)", r"backbone.probe_layers.\1.gate_mlp.\2"),
    (r"probe_model\.probe_state_transition_functions\.(\d+)\.(.+)", r"backbone.probe_layers.\1.update_mlp.\2"),
]
_PAINN_RULES: List[Tuple[str, str]] = [
    (r"atom_model\.interactions\.(\d+)\.filter_layer\.(.+)", r"backbone.interactions.\1.message.filter.\2"),
    (r"atom_model\.interactions\.(\d+)\.scalar_message_mlp\.(.+)", r"backbone.interactions.\1.message.node_mlp.\2"),
    (r"atom_model\.scalar_vector_update\.(\d+)\.linearU\.(.+)", r"backbone.interactions.\1.update.U.\2"),
    (r"atom_model\.scalar_vector_update\.(\d+)\.linearV\.(.+)", r"backbone.interactions.\1.update.V.\2"),
    (r"atom_model\.scalar_vector_update\.(\d+)\.combined_mlp\.(.+)", r"backbone.interactions.\1.update.mlp.\2"),
    (r"probe_model\.message_layers\.(\d+)\.filter_layer\.(.+)", r"backbone.probe_layers.\1.message.filter.\2"),
    (r"probe_model\.message_layers\.(\d+)\.scalar_message_mlp\.(.+)", r"backbone.probe_layers.\1.message.node_mlp.\2"),
    (r"probe_model\.message_layers\.(\d+)\.update_gate_mlp\.(.+)", r"backbone.probe_layers.\1.gate_mlp.\2"),
    (r"probe_model\.scalar_vector_update\.(\d+)\.linearU\.(.+)", r"backbone.probe_layers.\1.update.U.\2"),
    (r"probe_model\.scalar_vector_update\.(\d+)\.linearV\.(.+)", r"backbone.probe_layers.\1.update.V.\2"),
    (r"probe_model\.scalar_vector_update\.(\d+)\.combined_mlp\.(.+)", r"backbone.probe_layers.\1.update.mlp.\2"),
]


def read_arguments(model_dir) -> dict:
    """The runner arguments of a DeepDFT model directory, checked for the keys the model needs."""
    path = Path(model_dir) / ARGUMENTS
    if not Path(model_dir).is_dir():
        raise CdpError(f"{model_dir}: not a DeepDFT model directory (expected {ARGUMENTS} and {WEIGHTS})")
    if not path.is_file():
        raise CdpError(f"{path}: missing (a DeepDFT model directory holds {ARGUMENTS} and {WEIGHTS})")
    try:
        args = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CdpError(f"{path}: not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(args, dict):
        raise CdpError(f"{path}: expected a JSON object of runner arguments")
    for key in ("num_interactions", "node_size", "cutoff"):
        if key not in args:
            raise CdpError(f"{path}: missing key '{key}'")
    try:
        ok = int(args["num_interactions"]) >= 1 and int(args["node_size"]) >= 1 and float(args["cutoff"]) > 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise CdpError(f"{path}: num_interactions, node_size and cutoff must be positive numbers")
    return args


def model_config(args: dict, spin: bool = False) -> dict:
    """cdp model config equivalent to the DeepDFT runner arguments."""
    n, size, cutoff = int(args["num_interactions"]), int(args["node_size"]), float(args["cutoff"])
    if bool(args.get("use_painn_model", False)):
        backbone = {"name": "equideepdft", "num_interactions": n, "node_size": size, "cutoff": cutoff,
                    "distance_embedding_size": int(args.get("distance_embedding_size", EquiDeepDFTConfig.distance_embedding_size))}
        activation = "silu"
    else:
        backbone = {"name": "invdeepdft", "num_interactions": n, "node_size": size, "cutoff": cutoff,
                    "gaussian_expansion_step": float(args.get("gaussian_expansion_step", InvDeepDFTConfig.gaussian_expansion_step))}
        activation = "ssp"
    readout = {"name": "mlp", "activation": activation}
    if spin:
        readout["spin"] = True
    return {"featurizer": {"name": "embedding", "size": size}, "graph": {"name": "periodic"},
            "backbone": backbone, "readout": readout}


def _load_weights(path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise CdpError(f"{path}: missing (a DeepDFT model directory holds {ARGUMENTS} and {WEIGHTS})")
    try:
        data = load_torch_file(str(path))
    except CdpError:
        raise
    except Exception as exc:  # corrupt or foreign file
        raise CdpError(f"{path}: not a readable torch file ({type(exc).__name__})") from None
    sd = data.get("model") if isinstance(data, dict) and "model" in data else data
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CdpError(f"{path}: expected a DeepDFT checkpoint with a 'model' state_dict of tensors")
    return dict(sd)


def _rename(sd: Dict[str, torch.Tensor], painn: bool, source: str) -> Dict[str, torch.Tensor]:
    rules = [(re.compile(p + r"\Z"), t) for p, t in _COMMON_RULES + (_PAINN_RULES if painn else _SCHNET_RULES)]
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for pattern, template in rules:
            m = pattern.match(key)
            if m:
                out[m.expand(template)] = value
                break
        else:
            kind = "PaiNN" if painn else "SchNet"
            raise CdpError(f"{source}: unexpected weight '{key}' for a {kind} DeepDFT model (check use_painn_model)")
    return out


def import_deepdft(model_dir) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """Read a DeepDFT model directory; return (cdp model config, state_dict with cdp keys), shapes checked."""
    model_dir = Path(model_dir)
    args = read_arguments(model_dir)
    check_model_memory(model_config(args), str(model_dir / ARGUMENTS))  # before any weight is read
    weights = model_dir / WEIGHTS
    raw = _load_weights(weights)
    painn = bool(args.get("use_painn_model", False))
    sd = _rename(raw, painn, str(weights))
    head = sd.get("readout.net.2.weight")
    spin = head is not None and head.ndim == 2 and head.shape[0] == 2
    config = model_config(args, spin=spin)
    _check_against(config, sd, str(weights))
    return config, sd


def build_components(config: dict):
    """(featurizer, backbone, readout) for a DeepDFT config, built through the plugin registry."""
    return build_parts(config)


def _check_against(config: dict, sd: Dict[str, torch.Tensor], source: str) -> None:
    featurizer, backbone, readout = build_components(config)
    expected = {}
    for prefix, module in (("featurizer", featurizer), ("backbone", backbone), ("readout", readout)):
        expected.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    missing = [k for k in expected if k not in sd]
    if missing:
        raise CdpError(f"{source}: missing weight for '{missing[0]}' ({len(missing)} missing; "
                       f"does num_interactions in {ARGUMENTS} match?)")
    extra = [k for k in sd if k not in expected]
    if extra:
        raise CdpError(f"{source}: unexpected weight '{extra[0]}' ({len(extra)} unexpected; "
                       f"does num_interactions in {ARGUMENTS} match?)")
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CdpError(f"{source}: weight '{k}' has shape {tuple(sd[k].shape)}, {ARGUMENTS} implies {tuple(v.shape)}")
