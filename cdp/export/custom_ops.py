"""Operator libraries of cdp's plugins for onnxruntime (exports made with ``--ops cdp``).

A capture form that calls its own operators names them in ``describe()["custom_ops"]`` (Backbone contract,
:meth:`cdp.core.components.Backbone.capture_form`): ``{"domain", "ops", "provider": "module:function"}``.
The exporter copies the library beside the models (for C++ deployments) and records its SHA-256; cdp's own
runtime always registers the library the provider builds from cdp's sources.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from cdp.core.registry import get_registry
from cdp.core.types import CdpError

LIBRARY_FILE = "cdp_ort_ops.so"  # an --ops cdp export's operator library, beside the models


def custom_ops_library(spec: dict) -> Path:
    """The operator library a capture form's ``custom_ops`` names (``provider``: ``module:function`` returning
    its path), built by cdp from its own sources.  Only a function of a registered plugin's package is called:
    an export directory or its metadata never chooses code to run."""
    module, _, func = str(spec.get("provider", "")).partition(":")
    plugins = [p.name for p in get_registry().plugins if p.ok]
    if not func or not any(module == name or module.startswith(name + ".") for name in plugins):
        raise CdpError(f"custom operators {spec.get('domain')!r}: provider {spec.get('provider')!r} is not a registered plugin's")
    try:
        return Path(getattr(importlib.import_module(module), func)())
    except RuntimeError as exc:
        raise CdpError(f"cdp's onnxruntime operators are not available here: {exc}") from None
