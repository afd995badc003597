"""Which structures and probes a training step uses: pure functions of (seed, step), shardable over ranks.

The global batch of step ``s`` is slots ``s·B … (s+1)·B − 1`` of an endless stream of epochs, each a
fresh permutation of the training structures; a structure's probes come from
:class:`cdp.data.sampling.ProbeSampler` at that epoch (fresh grid points every epoch).  Nothing carries
hidden random state, so a resumed run draws exactly what an uninterrupted one would, and every DDP rank
can derive the whole global batch and keep only its contiguous shard (the union over the ranks is the
single-process batch).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

_ORDER = 0x0D0E  # stream tag separating the epoch-order generator from the probe generators


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` training structures."""
    return np.random.default_rng([seed, _ORDER, epoch]).permutation(n)


def step_slots(n: int, seed: int, step: int, global_batch: int) -> List[Tuple[int, int]]:
    """(training-set index, epoch) of each of the ``global_batch`` slots of ``step``."""
    out: List[Tuple[int, int]] = []
    orders: Dict[int, np.ndarray] = {}
    for pos in range(step * global_batch, (step + 1) * global_batch):
        epoch, i = divmod(pos, n)
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        out.append((int(orders[epoch][i]), epoch))
    return out


def shard(slots: Sequence, rank: int, world: int) -> list:
    """The contiguous, equal-sized share of ``slots`` that rank ``rank`` of ``world`` trains on."""
    if len(slots) % world:
        raise ValueError(f"{len(slots)} slots cannot be split evenly over {world} ranks")
    per = len(slots) // world
    return list(slots[rank * per : (rank + 1) * per])
