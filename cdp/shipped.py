"""Pretrained models shipped inside the package (``cdp/assets/<name>.ckpt``) and their model cards.

A model card ``cdp/assets/<name>.json`` sits next to each checkpoint: what the model is, the data it was
trained on (recipe, molecules, split), its hyperparameters, the exact training command, the seconds it
took, its measured ε_mae (mean ± standard error over structures, with the evaluation command) and the
SHA-256 of the checkpoint file, which :func:`shipped_models` checks.  Names are what ``--model NAME``
and ``cdp.load_model(NAME)`` accept.  (The training preset ``preset: qm9`` of a training config is a
different thing: the paper's Table 1 hyperparameters, not this pretrained model.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List


def assets_dir() -> Path:
    """The package's ``assets`` directory."""
    return Path(__file__).resolve().parent / "assets"


def shipped_checkpoints() -> Dict[str, Path]:
    """``{name: checkpoint path}`` of the shipped models."""
    root = assets_dir()
    return {p.stem: p for p in sorted(root.glob("*.ckpt"))} if root.is_dir() else {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_models() -> List[dict]:
    """One dict per shipped model: ``name``, ``path``, ``sha256`` (of the file), ``card`` (the model card,
    or None) and ``card_ok`` (the card's recorded hash equals the file's; False when it differs or is absent)."""
    out = []
    for name, path in shipped_checkpoints().items():
        card_path = path.with_suffix(".json")
        card = None
        if card_path.is_file():
            try:
                card = json.loads(card_path.read_text())
            except (OSError, ValueError):
                card = None
        digest = _sha256(path)
        ok = isinstance(card, dict) and card.get("sha256") == digest
        out.append({"name": name, "path": str(path), "sha256": digest, "card": card, "card_ok": ok})
    return out


def format_card(entry: dict) -> str:
    """A short human-readable block for one shipped model."""
    card = entry["card"] or {}
    lines = [f"{entry['name']}: {card.get('description', '(no model card)')}"]
    for key, label in (("architecture", "architecture"), ("parameters", "parameters"), ("data", "data"),
                       ("split", "split"), ("training_command", "trained with"), ("training", "training")):
        value = card.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        lines.append(f"  {label}: {value}")
    for ev in card.get("evaluation", []):
        lines.append(f"  ε_mae {ev['eps_mae_mean']:.3f} ± {ev['eps_mae_se']:.3f} % on {ev['data']} "
                     f"({ev['structures']} structures)  [{ev.get('command', '')}]")
    status = "ok" if entry["card_ok"] else "MISMATCH: the card does not describe this file"
    lines.append(f"  sha256: {entry['sha256']} ({status})")
    return "\n".join(lines)
