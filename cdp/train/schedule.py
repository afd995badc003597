"""The learning-rate schedule of ChargE3Net and DeepDFT: lr·0.96^(step/β), stepped every optimizer step."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

DECAY = 0.96


def power_decay(lr: float, beta: float, step: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based): ``lr · 0.96^(step/β)``."""
    return float(lr) * DECAY ** (float(step) / float(beta))


class PowerDecay(LRScheduler):
    """LR scheduler whose rate is a closed form of the step count, so resuming reproduces it exactly.

    Its ``state_dict`` holds only numbers, so it survives ``torch.load(weights_only=True)``.
    """

    def __init__(self, optimizer: Optimizer, beta: float, last_epoch: int = -1):
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.beta = float(beta)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [power_decay(base, self.beta, self.last_epoch) for base in self.base_lrs]

    def _get_closed_form_lr(self):
        return self.get_lr()
