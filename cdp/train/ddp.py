"""torch.distributed plumbing for training under ``torchrun``: process group, device, small collectives.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); when they are present
the trainer joins the process group: gloo on CPU, nccl on GPU (one GPU per local rank).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from cdp.core.types import CdpError

TEARDOWN_TIMEOUT_S = 600  # how long a finished rank waits for the others before leaving the group


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, local rank; ``enabled`` when a process group is in use."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """The torchrun environment of this process (a plain single process when absent)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    try:
        rank = int(os.environ["RANK"])
        world = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise CdpError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)") from None
    return DistInfo(rank, world, local, enabled=world > 1)


def setup(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group for ``info`` and return this rank's device."""
    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world)
    return device


def teardown(info: DistInfo, finished: bool = False) -> None:
    """Leave the process group.  After a run that finished on this rank, first wait for every rank to
    finish too (a rank that destroyed the group and exited while another was still in a collective or its
    own teardown left that one hanging); after an error, leave at once so the others fail instead of waiting."""
    if info.enabled and dist.is_initialized():
        try:
            if finished:
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=datetime.timedelta(seconds=TEARDOWN_TIMEOUT_S))
                else:
                    dist.barrier()
        finally:
            dist.destroy_process_group()


def _device_of_group() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_over_ranks(info: DistInfo, value: float) -> float:
    """The mean of a float over all ranks (the value itself in a single process)."""
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device_of_group())
    dist.all_reduce(t)
    return float(t.item()) / info.world


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. rank 0's clock says stop)."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_device_of_group())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def weight_spread(info: DistInfo, module: torch.nn.Module) -> Optional[float]:
    """Largest |w_rank − w_rank0| over all parameters and ranks (0.0 when the ranks agree); None single-process."""
    if not info.enabled:
        return None
    flat = torch.cat([p.detach().reshape(-1).to(torch.float64) for p in module.parameters()])
    flat = flat.to(_device_of_group())
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max() if flat.numel() else torch.zeros((), dtype=torch.float64, device=flat.device)
    diff = diff.reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())
