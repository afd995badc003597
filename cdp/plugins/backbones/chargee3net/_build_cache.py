"""Faster construction through e3nn's public API: modules built once per configuration, then copied.

e3nn normalises every activation by its second moment, estimated from 10⁶ seeded normal samples each time
an activation module is created (inside every ``Gate`` and ``FullyConnectedNet``: dozens per ChargE3Net).
The estimate is deterministic, so a deep copy of a module built earlier with the same arguments (and the
same default dtype, in which e3nn stores its constants) is the module a new construction would give.  A
copied ``FullyConnectedNet`` gets new weights drawn exactly as its constructor draws them (one
``torch.randn(h_in, h_out)`` per layer, in order), so the global random stream, and with it every seeded
model, is unchanged.  Nothing of e3nn is patched.
"""

from __future__ import annotations

import copy
import threading
from typing import Callable, Sequence, Tuple

import torch
from e3nn.nn import FullyConnectedNet, Gate

from cdp.core.malloc import returning_freed_memory

_LOCK = threading.Lock()
_TEMPLATES: dict = {}


def _template(key: tuple, build: Callable[[], torch.nn.Module]) -> Tuple[torch.nn.Module, bool]:
    """(module, built): a new construction the first time (kept as the template), then copies of it."""
    key = key + (torch.get_default_dtype(),)
    with _LOCK:
        if key not in _TEMPLATES:
            with returning_freed_memory():  # e3nn's 8 MB moment samples: not kept resident in the heap
                module = build()
            _TEMPLATES[key] = copy.deepcopy(module)
            return module, True
        return copy.deepcopy(_TEMPLATES[key]), False


def gate(scalars, act_scalars: Sequence[Callable], gates, act_gates: Sequence[Callable], gated) -> Gate:
    """``e3nn.nn.Gate(scalars, act_scalars, gates, act_gates, gated)`` (a module without parameters)."""
    key = ("gate", str(scalars), tuple(act_scalars), str(gates), tuple(act_gates), str(gated))
    return _template(key, lambda: Gate(scalars, list(act_scalars), gates, list(act_gates), gated))[0]


def fully_connected_net(hs: Sequence[int], act: Callable) -> FullyConnectedNet:
    """``e3nn.nn.FullyConnectedNet(hs, act)`` with freshly drawn weights, as its constructor draws them."""
    net, built = _template(("fc", tuple(int(h) for h in hs), act), lambda: FullyConnectedNet(list(hs), act))
    if built:  # its constructor drew the weights
        return net
    with torch.no_grad():
        for layer in net:  # e3nn's layers in order, each weight ~ N(0, 1) of shape (h_in, h_out)
            layer.weight.copy_(torch.randn(layer.weight.shape))
    return net
