"""cdp's own checkpoint format: a torch zip file of plain containers and tensors, loaded with weights_only.

``{"format": "cdp-checkpoint", "format_version": 2, "cdp_version", "config": model config,
"state_dict", "metadata": {...}, "components": {...}, "train_state": optional}``.  Nothing in it needs
pickled code, so loading never executes any.  Version 2 added the optional ``config["prior"]`` (atomic
reference densities, their fitted coefficients as ``prior.*`` buffers in the state_dict); version-1 files
have no prior and load unchanged.  A model without a prior is still written as version 1, so that older
cdp releases read it.

``components`` (optional, any version; older readers ignore it, older files lack it) records which
installed package built each component (:mod:`cdp.core.provenance`): loading refuses a checkpoint whose
plugin package is missing and warns when its version differs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Optional, Tuple

from ase.data import atomic_numbers
import torch

from cdp._version import __version__
from cdp.core.atomic import atomic_write
from cdp.core.model import DensityModel
from cdp.core.model_size import check_model_memory
from cdp.core.provenance import check_provenance, component_provenance
from cdp.core.registry import get_registry
from cdp.core.safe_pickle import check_torch_save_layout
from cdp.core.types import CdpError

FORMAT = "cdp-checkpoint"
FORMAT_VERSION = 2


def atomic_save(obj, path) -> None:
    """torch.save through a temp file beside ``path``, then rename: never a half-written checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path, model, metadata: Optional[dict] = None, train_state: Optional[dict] = None) -> None:
    """Write ``model`` (a DensityModel) with its config and optional metadata/training state."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if getattr(model, "prior", None) is not None else 1,
        "cdp_version": __version__,
        "config": model.config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
        "components": component_provenance(model),
    }
    if train_state is not None:
        payload["train_state"] = train_state
    atomic_save(payload, path)


def read_checkpoint(path) -> dict:
    """The raw checkpoint dict, safely loaded and checked for cdp's format."""
    path = Path(path)
    if not path.is_file():
        raise CdpError(f"{path}: no such checkpoint file")

    check_torch_save_layout(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).strip()
        if "Weights only load failed" in text:  # torch's long advice is about trusting files; ours never do
            msg = "not a torch file of plain tensors and containers; cdp never unpickles other objects"
        else:
            msg = text.splitlines()[0][:200] if text else type(exc).__name__
        raise CdpError(f"{path}: not a readable cdp checkpoint ({msg})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CdpError(f"{path}: not a cdp checkpoint (published checkpoints need `cdp import` first)")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise CdpError(f"{path}: checkpoint format version {data['format_version']} is newer than this cdp supports")
    for key in ("config", "state_dict"):
        if key not in data:
            raise CdpError(f"{path}: checkpoint lacks '{key}'")
    if not isinstance(data["config"], dict) or not isinstance(data["state_dict"], dict):
        raise CdpError(f"{path}: checkpoint 'config' and 'state_dict' must be mappings")
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise CdpError(f"{path}: checkpoint 'metadata' must be a mapping")
    if metadata and metadata.get("elements") is not None:
        checked_elements(metadata["elements"], f"{path}: metadata")
    return data


def checked_elements(value, where: str) -> List[int]:
    """Sorted atomic numbers (1..118) from a recorded ``elements`` list of numbers or symbols.

    Raises CdpError (one line, naming ``where``) for anything else: a string, a number out of range,
    an unknown symbol, a nested list.
    """
    if not isinstance(value, (list, tuple)):
        raise CdpError(f"{where}: 'elements' must be a list of atomic numbers or symbols, got {_short(value)}")
    out = set()
    for z in value:
        if isinstance(z, str) and z in atomic_numbers and atomic_numbers[z] > 0:
            out.add(atomic_numbers[z])
        elif isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 118:
            out.add(int(z))
        else:
            raise CdpError(f"{where}: 'elements' holds {_short(z)}, not an atomic number 1..118 or element symbol")
    return sorted(out)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_state_dict_checked(model, state_dict: dict, source: str) -> None:
    """load_state_dict(strict) with one-line errors naming the first missing/unexpected/mismatched key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing:
        raise CdpError(f"{source}: missing weight '{missing[0]}' ({len(missing)} missing)")
    if unexpected:
        raise CdpError(f"{source}: unexpected weight '{unexpected[0]}' ({len(unexpected)} unexpected)")
    for k, v in own.items():
        if tuple(v.shape) != tuple(state_dict[k].shape):
            raise CdpError(f"{source}: weight '{k}' has shape {tuple(state_dict[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(path, registry=None) -> Tuple["DensityModel", dict]:  # noqa: F821
    """Rebuild the DensityModel stored at ``path``; returns (model in eval mode, raw checkpoint dict).

    A checkpoint whose recorded plugin package is not installed is refused (CdpError naming the
    package); one saved with another version of a plugin package loads with a one-line CdpWarning.
    """
    data = read_checkpoint(path)
    registry = registry or get_registry()
    check_provenance(data.get("components"), registry, str(path))
    sd = data["state_dict"]
    floats = [v.dtype for v in sd.values() if isinstance(v, torch.Tensor) and v.dtype.is_floating_point]
    check_model_memory(data["config"], str(path), floats[0].itemsize if floats else 4)
    model = DensityModel.from_config(data["config"], registry=registry)
    if floats:
        model.to(floats[0])
    load_state_dict_checked(model, sd, str(path))
    model.eval()
    return model, data


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
