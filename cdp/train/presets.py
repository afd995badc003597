"""Named training presets: the published training settings (ChargE3Net paper Table 1 and the baselines).

Batch sizes are structures per process (per GPU); under DDP the global batch is ``batch_size × world``
(the paper used 4 GPUs).  ``probes`` is per structure in training, ``val_probes`` per validation
structure.  ``pbc: false`` marks data sets trained without periodic boundaries (QM9 molecules).
"""

from __future__ import annotations

from typing import Dict

from cdp.core.types import CdpError

TRAINING_PRESETS: Dict[str, dict] = {
    # ChargE3Net (configs/charge3net/train_{mp,qm9,nmc}_e3_final.yaml): Adam, L1, lr·0.96^(step/β).
    "mp": {"loss": "l1", "lr": 5.0e-3, "beta": 3.0e3, "batch_size": 16, "probes": 200, "val_probes": 400,
           "steps": 1_000_000, "pbc": None, "seed": 42},
    "qm9": {"loss": "l1", "lr": 1.0e-2, "beta": 1.0e4, "batch_size": 8, "probes": 200, "val_probes": 500,
            "steps": 1_000_000, "pbc": False, "seed": 42},
    "nmc": {"loss": "l1", "lr": 1.0e-2, "beta": 1.0e4, "batch_size": 8, "probes": 200, "val_probes": 500,
            "steps": 750_000, "pbc": None, "seed": 42},
    # DeepDFT baselines as trained alongside ChargE3Net (MSE; model/{density,painn_density}.yaml).
    "mp-deepdft": {"loss": "mse", "lr": 6.0e-4, "beta": 3.0e3, "batch_size": 16, "probes": 200, "val_probes": 400,
                   "steps": 1_000_000, "pbc": None, "seed": 42},
    "qm9-deepdft": {"loss": "mse", "lr": 4.0e-4, "beta": 6.0e3, "batch_size": 8, "probes": 200, "val_probes": 500,
                    "steps": 1_000_000, "pbc": False, "seed": 42},
    "nmc-deepdft": {"loss": "mse", "lr": 4.0e-4, "beta": 6.0e3, "batch_size": 8, "probes": 200, "val_probes": 500,
                    "steps": 750_000, "pbc": None, "seed": 42},
    # DeepDFT's own runner.py defaults: 2 structures × 1000 probes, lr 1e-4, β 1e5, MSE.
    "deepdft": {"loss": "mse", "lr": 1.0e-4, "beta": 1.0e5, "batch_size": 2, "probes": 1000, "val_probes": 5000,
                "pbc": None},
}


def training_preset(name: str) -> dict:
    """A copy of the named training preset, or a CdpError listing the known names."""
    if name not in TRAINING_PRESETS:
        raise CdpError(f"unknown training preset '{name}' (presets: {', '.join(sorted(TRAINING_PRESETS))})")
    return dict(TRAINING_PRESETS[name])
