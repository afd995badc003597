"""Faster construction: memoise e3nn's activation-moment estimate while a backbone is being built.

e3nn normalises every activation by its second moment, estimated from 10⁶ seeded normal samples each
time an activation module is created (dozens of times per ChargE3Net).  The estimate is deterministic,
so reusing it for the same function is exact; the patch is scoped to the ``with`` block.
"""

from __future__ import annotations

import contextlib
import threading

import e3nn.math._normalize_activation as _norm

_LOCK = threading.RLock()


@contextlib.contextmanager
def memoized_activation_moments():
    """Within the block, ``moment(f, n, dtype, device)`` is computed once per distinct argument set."""
    with _LOCK:
        original = _norm.moment
        cache = {}

        def moment(f, n, dtype=None, device=None):
            try:
                key = (f, n, dtype, str(device))
                hash(key)
            except TypeError:
                return original(f, n, dtype=dtype, device=device)
            if key not in cache:
                cache[key] = original(f, n, dtype=dtype, device=device)
            return cache[key].clone()

        _norm.moment = moment
        try:
            yield
        finally:
            _norm.moment = original
