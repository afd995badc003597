"""A model's memory estimated from its config alone, so absurd sizes are refused before anything is built.

A checkpoint, an imported ``arguments.json`` or a training config can declare sizes (``mul: 262144``,
``node_size: 1e8``, ``num_interactions: 1e6``) whose parameters alone would need terabytes; building the
model would exhaust memory (or take hours) before any shape check runs.  :func:`check_model_memory`
estimates a lower bound of the parameter count from the size keys of the config and refuses an estimate
above min(8 GiB, 50 % of the available memory); ``CDP_MAX_MODEL_MEMORY`` (e.g. ``32G``) sets another
limit.  The rules read field names, not plugin names: ``node_size``/``size`` (dense layers, ≥ 20·n² per
interaction for DeepDFT), ``mul``/``lmax`` (the ChargE3Net channel budget: at least one Σ m_l² mixing
per interaction), ``num_interactions``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional

from cdp.core.constants import NUM_ELEMENTS
from cdp.core.errors import CdpError
from cdp.core.system import available_memory  # noqa: F401  (re-exported)

DEFAULT_LIMIT = 8 * 2**30
ENV = "CDP_MAX_MODEL_MEMORY"


def parse_size(text: str, what: str) -> int:
    """'2G', '500M', '64k' or a plain number of bytes → bytes (binary multiples)."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = str(text).strip().lower().rstrip("b").rstrip("i")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise CdpError(f"{what}: cannot read '{text}' as a size (e.g. 2G, 500M)") from None
    if not (value > 0 and math.isfinite(value)):
        raise CdpError(f"{what} must be a positive size, got '{text}'")
    return int(value)


def memory_limit() -> int:
    """Bytes a model may need: ``$CDP_MAX_MODEL_MEMORY``, else min(8 GiB, 50 % of available memory)."""
    env = os.environ.get(ENV)
    if env:
        return parse_size(env, ENV)
    avail = available_memory()
    return DEFAULT_LIMIT if avail is None else min(DEFAULT_LIMIT, avail // 2)


def _num(params: Mapping, key: str, default: float = 0.0) -> float:
    value = params.get(key, default)
    if isinstance(value, bool):
        return default
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return default
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    return max(0.0, float(value))


def estimate_parameters(config: Mapping[str, Any]) -> float:
    """A lower bound of the parameter count of a model config ``{featurizer, backbone, readout, ...}``."""
    total = 0.0
    feat = config.get("featurizer") if isinstance(config.get("featurizer"), Mapping) else {}
    bb = config.get("backbone") if isinstance(config.get("backbone"), Mapping) else {}
    total += NUM_ELEMENTS * _num(feat, "size")
    layers = max(1.0, _num(bb, "num_interactions", 1.0))
    node = _num(bb, "node_size")
    if node:
        total += 20.0 * layers * node * node
    mul = _num(bb, "mul")
    if mul:
        lmax = min(_num(bb, "lmax", 0.0), 1e4)
        sq = 0.0
        for l in range(int(lmax) + 1):
            m = round(mul / (lmax + 1) / (2 * l + 1))
            sq += 2.0 * m * m  # both parities
        radial = _num(bb, "radial_neurons", 100.0)
        total += layers * (sq + radial * mul)
    return total


def estimate_model_bytes(config: Mapping[str, Any], itemsize: int = 4) -> float:
    """Bytes to build and load a model of ``config``: its parameters, twice (module + loaded state_dict)."""
    return 2.0 * itemsize * estimate_parameters(config)


def check_model_memory(config: Mapping[str, Any], where: str, itemsize: int = 4) -> None:
    """Refuse (CdpError naming ``where``) a config whose estimated memory exceeds :func:`memory_limit`."""
    need = estimate_model_bytes(config, itemsize)
    limit = memory_limit()
    if need > limit:
        raise CdpError(
            f"{where}: the model's sizes need about {_human(need)} for its parameters alone, over the limit of "
            f"{_human(limit)} (min(8 GiB, 50 % of available memory); set {ENV} to raise it)"
        )


def _human(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"
