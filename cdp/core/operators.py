"""Plugin operators for exported models: the marks a plugin puts on the functions that provide them.

Export metadata names such a function (``custom_ops.provider``, see :mod:`cdp.export.custom_ops`); cdp
calls a named function only when it carries the mark of its kind and belongs to a registered plugin:
:func:`ort_library_builder` (an onnxruntime operator library, ONNX exports) or :func:`torch_ops_provider`
(PyTorch operators registered in this process, TorchScript exports).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List

_MARK = "__cdp_ort_library_builder__"
_TORCH_MARK = "__cdp_torch_ops_provider__"


def ort_library_builder(fn: Callable[[], Path]) -> Callable[[], Path]:
    """Mark ``fn`` (no arguments → the path of an onnxruntime operator library it built from the plugin's
    own sources) as a provider that export metadata may name; nothing unmarked is ever called."""
    setattr(fn, _MARK, True)
    return fn


def is_ort_library_builder(fn) -> bool:
    """True for a function marked by :func:`ort_library_builder`."""
    return callable(fn) and getattr(fn, _MARK, False) is True


def torch_ops_provider(fn: Callable[[], List[str]]) -> Callable[[], List[str]]:
    """Mark ``fn`` (no arguments → the qualified names, ``"namespace::name"``, of the PyTorch operators its
    plugin has registered in this process and can run here; RuntimeError when they cannot run) as a
    provider that export metadata may name; nothing unmarked is ever called."""
    setattr(fn, _TORCH_MARK, True)
    return fn


def is_torch_ops_provider(fn) -> bool:
    """True for a function marked by :func:`torch_ops_provider`."""
    return callable(fn) and getattr(fn, _TORCH_MARK, False) is True
