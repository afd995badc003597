"""Read pickled ``ase.Atoms`` (ChargE3Net's ``<id>_atoms.pkl``) without running pickled code.

The unpickler resolves only the globals an ``ase.Atoms`` pickle needs (Atoms, Cell, simple
constraints, NumPy array/dtype/scalar rebuilding); any other global, and any result that is not an
``ase.Atoms``, is refused with a :class:`CdpError`.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import io
import pickle
from typing import Any, Dict, Tuple

from ase.atoms import Atoms

from ase.cell import Cell
from cdp.core.types import CdpError
from ase.constraints import FixAtoms, FixCartesian

import numpy as np

def _allowed() -> Dict[Tuple[str, str], Any]:
    out: Dict[Tuple[str, str], Any] = {
        ("ase.atoms", "Atoms"): Atoms,
        ("ase.cell", "Cell"): Cell,
        ("ase.constraints", "FixAtoms"): FixAtoms,
        ("ase.constraints", "FixCartesian"): FixCartesian,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("builtins", "object"): object,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
    }
    for cls in (Atoms, Cell, FixAtoms, FixCartesian):  # also under their defining module's name
        out[(cls.__module__, cls.__name__)] = cls
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = _np_reconstruct()
        out[(mod, "scalar")] = _np_scalar()
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol 5 arrays
        out[(mod, "_frombuffer")] = _np_frombuffer
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType", "StrDType"):
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            out[("numpy.dtypes", name)] = cls
    return out


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """How protocols 0-2 pickle bytes; only the latin-1 codec is admitted."""
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise CdpError(f"pickle: refused codec {encoding!r}")
    return text.encode("latin1")


def _np_frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


def _np_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy ≥ 2 name; which one exists is known only at run time
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _np_scalar():
    try:
        from numpy._core.multiarray import scalar  # NumPy ≥ 2 name, as above
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import scalar
    return scalar


class AtomsUnpickler(pickle.Unpickler):
    """Unpickler admitting only what an ``ase.Atoms`` pickle needs."""

    def __init__(self, file, name: str = "pickle"):
        super().__init__(file)
        self._name = name
        self._allowed = _allowed()

    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = self._allowed.get((module, name))
        if obj is None:
            raise CdpError(f"{self._name}: refused to unpickle {module}.{name} (only ase Atoms and numpy arrays are allowed)")
        return obj


def load_atoms_pickle(data: bytes, name: str = "pickle"):
    """The ``ase.Atoms`` pickled in ``data``; anything else raises CdpError."""
    try:
        obj = AtomsUnpickler(io.BytesIO(data), name=name).load()
    except CdpError:
        raise
    except Exception as exc:  # truncated or malformed pickle
        raise CdpError(f"{name}: cannot unpickle: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Atoms):
        raise CdpError(f"{name}: pickle holds {type(obj).__name__}, expected ase Atoms")
    return obj
