"""What every export format shares: the export settings and the error that names the failing component.

A leaf of ``cdp.export``: the format modules (onnx, torchscript, pt2, programs) import it, and
``exporter`` dispatches to them, so no format module imports the dispatcher.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import traceback
import warnings
from typing import Dict, Optional

import torch

from cdp.core.errors import CdpError

QUIET_LOGGERS = ("torch.onnx._internal.exporter._registration",)  # "torchvision is not installed" notes


def _component_files(model) -> Dict[str, str]:
    """Source file of each component class (and of the modules it is built from) → component label."""
    out: Dict[str, str] = {}
    for role in ("featurizer", "backbone", "readout"):
        comp = getattr(model, role)
        label = f"{role} '{type(comp).__name__}'"
        for sub in comp.modules():
            mod = type(sub).__module__
            if mod.startswith("torch.") or mod.startswith("e3nn."):
                continue
            try:
                out.setdefault(os.path.realpath(inspect.getfile(type(sub))), label)
            except (TypeError, OSError):
                pass
    return out


def blame(exc: BaseException, model, stage: str) -> CdpError:
    """A one-line CdpError naming the component whose code raised ``exc`` (deepest matching frame)."""
    files = _component_files(model)
    where = None
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for frame in traceback.extract_tb(e.__traceback__):
            label = files.get(os.path.realpath(frame.filename))
            if label is not None:
                where = f"{label} ({os.path.basename(frame.filename)}:{frame.lineno})"
        e = e.__cause__ or e.__context__
    reason = " ".join(str(exc).strip().split())
    for marker in ("For more information", "The error above occurred"):
        reason = reason.split(marker)[0].strip()
    reason = (reason[:300] + "…") if len(reason) > 300 else reason
    who = where or f"the model's {stage}"
    return CdpError(f"cannot export {stage}: {who} is not exportable: {type(exc).__name__}: {reason}")


@contextlib.contextmanager
def intra_op_threads(n: int):
    """torch's intra-op pool at ``n`` threads for the duration; yields the previous count, restored after.

    Exports run with one (:func:`cdp.export.exporter.export_model`): their own arithmetic is tiny (the
    capture form's constants, example runs on a few atoms) and tracing is single-threaded Python, so a
    second intra-op thread only adds hand-offs, which on a busy machine cost more than the work (demo
    capture form: 0.5 s with one thread, 0.7-1.6 s with two).  AOTInductor compiles with the caller's count.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield prev
    finally:
        torch.set_num_threads(prev)


@contextlib.contextmanager
def export_context():
    """Settings every exporter needs: eval mode numerics, no opt_einsum path search (it specialises sizes),
    and quiet tracing: Python warnings and the torch.onnx registry's notes about packages cdp does not use
    (``torchvision is not installed``) stay out of the user's terminal; errors still surface as exceptions."""
    prev = torch.backends.opt_einsum.enabled
    torch.backends.opt_einsum.enabled = False
    quiet = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [log.level for log in quiet]
    try:
        for log in quiet:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.opt_einsum.enabled = prev
        for log, level in zip(quiet, levels):
            log.setLevel(level)
