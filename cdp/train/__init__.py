"""cdp.train: train density models from a YAML/dict config, in one process or under torchrun (DDP).

``train(config, run_dir=None, resume=None, device=None) -> run_dir``; :func:`train_run` returns the
:class:`~cdp.train.trainer.TrainResult` (steps, training seconds, probes/s, checkpoint paths).
"""

from __future__ import annotations

__all__ = ["train", "train_run", "TrainResult", "read_summary", "resolve_config", "TRAINING_PRESETS"]


def __getattr__(name):
    # Lazy, so that importing cdp.train (e.g. for the presets) stays cheap.
    if name in ("train", "train_run", "TrainResult", "read_summary"):
        from cdp.train import trainer  # start-up: lazy (see above)

        return getattr(trainer, name)
    if name == "resolve_config":
        from cdp.train.config import resolve_config  # start-up: lazy

        return resolve_config
    if name == "TRAINING_PRESETS":
        from cdp.train.presets import TRAINING_PRESETS  # start-up: lazy (reads the registry)

        return TRAINING_PRESETS
    raise AttributeError(f"module 'cdp.train' has no attribute {name!r}")
