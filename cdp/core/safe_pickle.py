"""Load pickled torch files without ever executing pickled code.

``torch.load(weights_only=True)`` is tried first.  Files that also pickle arbitrary objects
(Lightning hyper-parameters, callbacks, ...) make it fail; they are then read with
:class:`RestrictedUnpickler`, whose ``find_class`` admits only tensor-rebuild functions, storage
types, ``OrderedDict`` and plain builtin containers.  Every other global becomes an inert
:class:`PickleStub` subclass that records its name and arguments and never calls or imports
anything, so a malicious ``__reduce__`` cannot run.  Other readers reuse the machinery with their own
extra allowlist (``extra_globals``).
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch

from cdp.core.types import CdpError

Global = Tuple[str, str]


class PickleStub:
    """Stand-in for a pickled global that was not allowed; stores what it was given, does nothing."""

    _cdp_stub_module: str = ""
    _cdp_stub_name: str = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_stub_args"] = args
        obj.__dict__["_stub_kwargs"] = kwargs
        obj.__dict__["_stub_state"] = None
        obj.__dict__["_stub_items"] = []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_stub_state"] = state

    def __setitem__(self, key, value):  # pickle SETITEMS on dict subclasses
        self.__dict__["_stub_items"].append((key, value))

    def append(self, value):  # pickle APPENDS on list subclasses
        self.__dict__["_stub_items"].append(value)

    def extend(self, values):
        self.__dict__["_stub_items"].extend(values)

    def __repr__(self) -> str:
        return f"<stub {self._cdp_stub_module}.{self._cdp_stub_name}>"

    def __reduce__(self):  # never re-pickled as something executable
        raise TypeError("stub objects cannot be pickled")


def _builtin_globals() -> Dict[Global, Any]:
    """The default allowlist: tensor rebuilding, storages, dtypes and plain containers."""
    allowed: Dict[Global, Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
    }
    utils = torch._utils
    for name in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
    ):
        if hasattr(utils, name):
            allowed[("torch._utils", name)] = getattr(utils, name)
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            allowed[("torch", name)] = obj
        elif name.endswith("Storage") and isinstance(obj, type):
            allowed[("torch", name)] = obj
    allowed[("torch.storage", "UntypedStorage")] = torch.UntypedStorage
    allowed[("torch.storage", "TypedStorage")] = torch.storage.TypedStorage
    return allowed


def _make_stub(module: str, name: str) -> type:
    return type(name, (PickleStub,), {"_cdp_stub_module": module, "_cdp_stub_name": name})


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` returns only allowlisted objects, stubs for everything else."""

    allowed: Mapping[Global, Any] = _builtin_globals()

    def __init__(self, file, *, extra_globals: Optional[Mapping[Global, Any]] = None, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = dict(self.allowed)
        if extra_globals:
            self._allowed.update(extra_globals)
        self.stubbed: Dict[Global, type] = {}

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in self._allowed:
            return self._allowed[key]
        if key not in self.stubbed:
            self.stubbed[key] = _make_stub(module, name)
        return self.stubbed[key]


def restricted_pickle_module(extra_globals: Optional[Mapping[Global, Any]] = None):
    """A ``pickle_module`` for ``torch.load`` whose Unpickler is restricted (plus ``extra_globals``)."""

    class _Unpickler(RestrictedUnpickler):
        def __init__(self, file, **kwargs):
            super().__init__(file, extra_globals=extra_globals, **kwargs)

    def _load(file, **kwargs):
        return _Unpickler(file, **kwargs).load()

    module = type("restricted_pickle", (), {})()
    module.Unpickler = _Unpickler
    module.load = _load
    module.__name__ = "restricted_pickle"
    return module


# what torch.save writes inside its zip, below one root folder; anything else (TorchScript's code/ and
# constants.pkl, mobile bytecode.pkl, extra files) is refused before torch.load can dispatch on it
_SAVE_ENTRY = re.compile(
    r"(?:data\.pkl|data/[A-Za-z0-9_.]+|version|\.format_version|\.storage_alignment|byteorder"
    r"|\.data/serialization_id|\.data/version)\Z"
)


def check_torch_save_layout(path) -> None:
    """Refuse a zip file that is not exactly ``torch.save``'s layout (CdpError naming the entry).

    ``torch.load`` hands TorchScript archives (``constants.pkl``, ``code/``) to ``torch.jit.load``,
    which runs the code they contain, even when a restricted ``pickle_module`` is given.  A torch.save
    zip holds ``<root>/data.pkl``, ``<root>/data/<key>`` and optionally ``version``, ``byteorder``,
    ``.format_version``, ``.storage_alignment`` and ``.data/serialization_id``, all under one root.
    Only the zip directory is read.  Non-zip files (torch's legacy format) pass: they have no such
    dispatch and are read through the restricted unpickler.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CdpError(f"{path}: not a readable torch checkpoint (bad zip: {exc})") from None
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1:
        raise CdpError(f"{path}: not a torch.save file (entries under {len(roots)} top-level folders); refused unread")
    for name in names:
        parts = name.split("/", 1)
        rest = parts[1] if len(parts) == 2 else ""
        if rest in ("constants.pkl", "bytecode.pkl") or rest.startswith("code/"):
            raise CdpError(f"{path}: a TorchScript archive ('{name}'), not a torch.save checkpoint; "
                           "refused unread (loading it would run its code)")
        if not _SAVE_ENTRY.match(rest):
            raise CdpError(f"{path}: unexpected entry '{name}' for a torch.save checkpoint; refused unread")
    if not any(name.split("/", 1)[-1] == "data.pkl" for name in names):
        raise CdpError(f"{path}: no data.pkl in the zip (not a torch.save checkpoint)")


def load_torch_file(path: str, extra_globals: Optional[Mapping[Global, Any]] = None) -> Any:
    """Read a ``torch.save`` file onto the CPU without executing pickled code.

    Zip files must have exactly torch.save's layout (:func:`check_torch_save_layout`), so that
    TorchScript archives never reach ``torch.jit.load``.  Plain weight files go through ``torch.load(weights_only=True)``; files with other pickled
    objects fall back to the restricted unpickler, where unknown objects come back as
    :class:`PickleStub` instances.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CdpError(f"{path}: no such file")
    check_torch_save_layout(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError):
        pass
    try:
        return torch.load(
            path,
            map_location="cpu",
            weights_only=False,
            pickle_module=restricted_pickle_module(extra_globals),
        )
    except CdpError:
        raise
    except Exception as exc:  # corrupt or foreign file
        raise CdpError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def find_stubs(obj: Any, _seen: Optional[set] = None) -> Iterable[str]:
    """Names of the stubbed globals found anywhere in ``obj`` (for diagnostics)."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    out = []
    if isinstance(obj, PickleStub):
        out.append(f"{obj._cdp_stub_module}.{obj._cdp_stub_name}")
        obj = obj.__dict__
    if isinstance(obj, dict):
        for v in obj.values():
            out.extend(find_stubs(v, seen))
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            out.extend(find_stubs(v, seen))
    return out
