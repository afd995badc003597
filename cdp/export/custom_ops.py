"""Operators of cdp's plugins in exported models (exports made with ``--ops cdp``).

A capture form that calls its own operators names them in ``describe()`` (Backbone contract,
:meth:`cdp.core.components.Backbone.capture_form`):

* ``custom_ops`` (ONNX): ``{"domain", "ops", "provider": "module:function"}``, the function decorated with
  :func:`ort_library_builder`.  The exporter copies the library beside the models (for C++ deployments)
  and records its SHA-256; cdp's own runtime always registers the library the provider builds from cdp's
  sources.
* ``torch_ops`` (TorchScript): ``{"namespace", "ops", "provider": "module:function"}``, the function
  decorated with :func:`torch_ops_provider`; it registers the operators in this process (a TorchScript
  file calling them loads only after that) and returns their qualified names.

Either provider is called only when it is a registered plugin's function carrying the mark of its kind:
an export directory's metadata never chooses other code to run.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, List

import torch

from cdp.core.operators import (  # noqa: F401  (re-exported)
    is_ort_library_builder, is_torch_ops_provider, ort_library_builder, torch_ops_provider,
)
from cdp.core.registry import get_registry
from cdp.core.types import CdpError

LIBRARY_FILE = "cdp_ort_ops.so"  # an --ops cdp export's operator library, beside the models


def _provider(spec: dict, what: str, name: str, marked: Callable) -> Callable:
    """The function ``spec["provider"]`` names when it is a registered plugin's function that ``marked``
    accepts; else one-line CdpError ``custom operators NAME: provider ... is not a registered plugin's WHAT``."""
    provider = spec["provider"]
    module, sep, func = provider.partition(":")
    plugins = [p.name for p in get_registry().plugins if p.ok]
    refused = CdpError(f"custom operators {name!r}: provider {provider!r} is not a registered plugin's {what}")
    if not sep or not func.isidentifier() or not any(module == n or module.startswith(n + ".") for n in plugins):
        raise refused
    try:
        fn = getattr(importlib.import_module(module), func, None)
    except ImportError:
        raise refused from None
    if not marked(fn):
        raise refused
    return fn


def custom_ops_library(spec) -> Path:
    """The operator library that ``spec`` (an ONNX export's ``custom_ops``) names, built by cdp from its own
    sources.  Raises CdpError (one line) for malformed metadata, a provider that is not a registered
    plugin's :func:`ort_library_builder`, or a library that cannot be built here."""
    if not isinstance(spec, dict) or not isinstance(spec.get("provider"), str):
        raise CdpError("cdp_export.json: onnx.custom_ops must be an object with a 'provider' string")
    fn = _provider(spec, "operator library", spec.get("domain"), is_ort_library_builder)
    try:
        path = Path(fn())
    except RuntimeError as exc:
        raise CdpError(f"cdp's onnxruntime operators are not available here: {exc}") from None
    if not path.is_file():
        raise CdpError(f"custom operators {spec.get('domain')!r}: {spec['provider']} gave no library file ({path})")
    return path


def torch_custom_ops(spec) -> List[str]:
    """Make the PyTorch operators that ``spec`` (a TorchScript export's ``custom_ops``: ``{"namespace",
    "ops", "provider"}``) names available in this process, through the registered plugin's
    :func:`torch_ops_provider`; returns their qualified names (``namespace::op``).  Raises CdpError (one
    line) for malformed metadata, a provider that is not a registered plugin's marked function, operators it
    does not provide, or operators that cannot run here."""
    if not isinstance(spec, dict) or not isinstance(spec.get("provider"), str):
        raise CdpError("cdp_export.json: torchscript.custom_ops must be an object with a 'provider' string")
    ns, ops = spec.get("namespace"), spec.get("ops")
    if not (isinstance(ns, str) and ns.isidentifier() and isinstance(ops, list) and ops
            and all(isinstance(o, str) and o.isidentifier() for o in ops)):
        raise CdpError("cdp_export.json: torchscript.custom_ops needs a 'namespace' and a non-empty list of 'ops' (names)")
    fn = _provider(spec, "PyTorch operator provider", ns, is_torch_ops_provider)
    try:
        provided = fn()
    except RuntimeError as exc:
        raise CdpError(f"cdp's PyTorch operators {ns!r} are not available here: {exc}") from None
    wanted = [f"{ns}::{o}" for o in ops]
    missing = [q for q in wanted if q not in provided or not registered(q)]
    if missing:
        raise CdpError(f"custom operators {ns!r}: {spec['provider']} does not provide {', '.join(missing)}")
    return wanted


def registered(qualified: str) -> bool:
    """True when the PyTorch operator ``namespace::name`` is registered in this process."""
    ns, _, name = qualified.partition("::")
    return bool(name) and hasattr(getattr(torch.ops, ns), name)


def graph_custom_ops(module) -> List[str]:
    """Qualified names of the operators outside PyTorch's own namespaces (aten, prim, ...) that a scripted or
    traced ``module`` calls, sorted (read from its inlined graph)."""
    found = set()

    def walk(block) -> None:
        for node in block.nodes():
            ns = node.kind().split("::", 1)[0]
            if ns not in STANDARD_NAMESPACES:
                found.add(node.kind())
            for sub in node.blocks():
                walk(sub)

    walk(module.inlined_graph)
    return sorted(found)


# TorchScript node kinds of PyTorch itself (ATen operators, the interpreter's primitives, ...)
STANDARD_NAMESPACES = frozenset({"aten", "prim", "onnx", "quantized", "profiler", "attr", "scope", "namespaces", "_caffe2", "cuda"})
