"""Named training presets (``preset: qm9`` in a training config): defined in ``registry.yaml`` (``training:``).

The published training settings (ChargE3Net paper Table 1 and the baselines): batch sizes are structures
per process (per GPU); under DDP the global batch is ``batch_size × world`` (the paper used 4 GPUs).
``probes`` is per structure in training, ``val_probes`` per validation structure.  ``pbc: false`` marks
data sets trained without periodic boundaries (QM9 molecules).
"""

from __future__ import annotations

from typing import Dict

from cdp.core.registry import get_registry


def training_presets() -> Dict[str, dict]:
    """Every named training preset of the registry in use: {name: {key: value}} (copies)."""
    reg = get_registry()
    return {name: reg.training_preset(name) for name in reg.training}


def training_preset(name: str) -> dict:
    """A copy of the named training preset, or a CdpError listing the known names."""
    return get_registry().training_preset(name)


def __getattr__(name):
    if name == "TRAINING_PRESETS":  # the registry's presets, read when asked for (the registry loads plugins)
        return training_presets()
    raise AttributeError(f"module 'cdp.train.presets' has no attribute {name!r}")
