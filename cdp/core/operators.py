"""Plugin operator libraries for onnxruntime: the mark a plugin puts on the function that builds one.

Export metadata names such a function (``custom_ops.provider``, see :mod:`cdp.export.custom_ops`); cdp
calls a named function only when it carries this mark and belongs to a registered plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

_MARK = "__cdp_ort_library_builder__"


def ort_library_builder(fn: Callable[[], Path]) -> Callable[[], Path]:
    """Mark ``fn`` (no arguments → the path of an onnxruntime operator library it built from the plugin's
    own sources) as a provider that export metadata may name; nothing unmarked is ever called."""
    setattr(fn, _MARK, True)
    return fn


def is_ort_library_builder(fn) -> bool:
    """True for a function marked by :func:`ort_library_builder`."""
    return callable(fn) and getattr(fn, _MARK, False) is True
