"""Operator libraries of cdp's plugins for onnxruntime (exports made with ``--ops cdp``).

A capture form that calls its own operators names them in ``describe()["custom_ops"]`` (Backbone contract,
:meth:`cdp.core.components.Backbone.capture_form`): ``{"domain", "ops", "provider": "module:function"}``,
the function decorated with :func:`ort_library_builder`.  The exporter copies the library beside the models
(for C++ deployments) and records its SHA-256; cdp's own runtime always registers the library the provider
builds from cdp's sources, and only calls a provider that is a registered plugin's decorated builder: an
export directory's metadata never chooses other code to run.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from cdp.core.operators import is_ort_library_builder, ort_library_builder  # noqa: F401  (re-exported)
from cdp.core.registry import get_registry
from cdp.core.types import CdpError

LIBRARY_FILE = "cdp_ort_ops.so"  # an --ops cdp export's operator library, beside the models
def custom_ops_library(spec) -> Path:
    """The operator library that ``spec`` (an export's ``custom_ops``) names, built by cdp from its own
    sources.  Raises CdpError (one line) for malformed metadata, a provider that is not a registered
    plugin's :func:`ort_library_builder`, or a library that cannot be built here."""
    if not isinstance(spec, dict) or not isinstance(spec.get("provider"), str):
        raise CdpError("cdp_export.json: onnx.custom_ops must be an object with a 'provider' string")
    provider = spec["provider"]
    module, sep, func = provider.partition(":")
    plugins = [p.name for p in get_registry().plugins if p.ok]
    refused = CdpError(f"custom operators {spec.get('domain')!r}: provider {provider!r} is not a registered plugin's "
                       f"operator library")
    if not sep or not func.isidentifier() or not any(module == n or module.startswith(n + ".") for n in plugins):
        raise refused
    try:
        fn = getattr(importlib.import_module(module), func, None)
    except ImportError:
        raise refused from None
    if not is_ort_library_builder(fn):
        raise refused
    try:
        path = Path(fn())
    except RuntimeError as exc:
        raise CdpError(f"cdp's onnxruntime operators are not available here: {exc}") from None
    if not path.is_file():
        raise CdpError(f"custom operators {spec.get('domain')!r}: {provider} gave no library file ({path})")
    return path
