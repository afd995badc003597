"""The four component contracts: featurizer, graph builder, backbone, readout head.

These base classes *are* the contract: every attribute and method that the core (``DensityModel``,
the predictor, the trainer) or the exporters use on a component is declared here, with its shapes,
units and conventions.  A plugin subclasses one of them; :func:`check_component` (run when a
``DensityModel`` is assembled) refuses a component that misses a required attribute with a one-line
:class:`~cdp.core.errors.CdpError` naming it, and :mod:`cdp.testing` checks the rest (output shapes,
equivariance, export) in a plugin's own tests.

Every component declares what it consumes and produces as a :class:`Spec` (e3nn irreps for
equivariant components, a plain feature size otherwise); :func:`cdp.core.model.check_fit` checks that
the pieces fit before assembling them.  Backbone and readout methods take plain tensors only, so that
the same modules export to TorchScript/ONNX at the encoder/decoder seams.

Units: lengths in Å, densities in e/Å³.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from e3nn import o3
import numpy as np
from torch import Tensor, nn

from cdp.core.errors import CdpError


@dataclass(frozen=True)
class Spec:
    """What flows between components: ``irreps`` (e3nn string) or ``size`` (plain features).

    Plain features are invariant: under rotations, inversions and translations they do not change, so
    ``Spec(size=n)`` means the same as ``Spec(irreps=f"{n}x0e")``.
    """

    irreps: Optional[str] = None
    size: Optional[int] = None

    def __post_init__(self):
        if (self.irreps is None) == (self.size is None):
            raise ValueError("a Spec names exactly one of irreps or size")

    @property
    def dim(self) -> int:
        """Width of the feature tensors: ``size``, or the dimension of ``irreps``."""
        if self.size is not None:
            return int(self.size)

        return o3.Irreps(self.irreps).dim

    def as_irreps(self) -> str:
        """The irreps these features transform as (plain features: ``{size}x0e``), simplified."""
        irreps = self.irreps if self.irreps is not None else f"{int(self.size)}x0e"
        return str(o3.Irreps(irreps).simplify())

    def fits(self, other: "Spec") -> bool:
        """True when features described by ``self`` can be fed where ``other`` is expected.

        Both sides are compared as irreps (a plain size being that many even scalars, ``0e``): an
        invariant readout of ``size`` 32 does not fit a backbone producing ``8x0e+8x1o`` (dimension 32),
        since it would read vector components as invariants; it fits ``32x0e``.
        """
        if self.size is not None and other.size is not None:
            return int(self.size) == int(other.size)
        return self.as_irreps() == other.as_irreps()

    def __str__(self) -> str:
        return self.irreps if self.irreps is not None else f"{self.size} features"


class Featurizer(nn.Module):
    """Atomic numbers [N] → initial node features [N, out_spec.dim].

    Required: ``out_spec`` (a :class:`Spec`, set in ``__init__``) and :meth:`forward`.
    ``num_elements``: atomic numbers 0 … num_elements − 1 are accepted (default 119, Z = 0..118);
    exported models and the predictor refuse other elements before running the model.
    """

    out_spec: Spec
    num_elements: int = 119

    def forward(self, numbers: Tensor) -> Tensor:  # pragma: no cover - interface
        """``numbers`` [N] int64 atomic numbers → features [N, out_spec.dim] in the model's float dtype.

        Must be traceable (exported as part of the encoder): no Python branching on tensor values.
        """
        raise NotImplementedError


class GraphBuilder:
    """Neighbour lists of one structure within ``cutoff`` (Å): atom→atom and atom→probe edges.

    Works on numpy arrays of one structure; not a torch module (graph construction stays outside
    exported models; the exported runtime builds the graph builder by its registered name).

    Conventions (the core and the exporters rely on them):

    * ``positions`` [N, 3] float64 Å, as given (not necessarily wrapped into the cell);
      ``cell`` [3, 3] float64, rows are lattice vectors; ``pbc`` [3] bool.  Rows of non-periodic
      axes carry no meaning and may be zero (ase molecules have an all-zero cell).
    * Edges are ``[sender, receiver]``; ``offsets`` [E, 3] int64 are the periodic image of the
      *sender*, so that the edge vector is ``r_receiver − (r_sender + offsets @ cell)`` and its length
      is ≤ ``cutoff``.  Offsets are zero along non-periodic axes.
    * Every pair within the cutoff appears, including several images of one pair in cells thinner
      than the cutoff.  Atom edges come in both directions and never include an atom with itself at
      offset 0 (an atom with its own periodic image is an edge).
    * Results must not depend on the order of calls: a builder may cache per structure (the built-in
      one keeps its KD-tree while the positions, cell, pbc and cutoff are unchanged).
    * Bad input (non-finite, wrong shapes, degenerate periodic cell) raises a one-line CdpError.
    """

    def atom_edges(
        self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
    ) -> Tuple[np.ndarray, np.ndarray]:  # pragma: no cover - interface
        """Atom→atom edges: (edge_index [2, E] int64 ``[sender, receiver]``, offsets [E, 3] int64)."""
        raise NotImplementedError

    def probe_edges(
        self,
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: np.ndarray,
        probes: np.ndarray,
        cutoff: float,
    ) -> Tuple[np.ndarray, np.ndarray]:  # pragma: no cover - interface
        """Atom→probe edges for ``probes`` [M, 3] Å: (edge_index [2, E] int64 ``[atom, probe]``,
        offsets [E, 3] int64, the atom's image: vector = ``probe − (atom + offsets @ cell)``)."""
        raise NotImplementedError


class Backbone(nn.Module):
    """Atom graph → per-layer atom features; probe graph + those → probe features.

    Required (set in ``__init__``): ``in_spec`` (what the featurizer must produce), ``out_spec`` (what
    the readout receives), ``cutoff`` (Å, the radius both graphs are built with), and the two seams
    :meth:`encode` (once per structure) and :meth:`decode` (once per probe batch).  Both must be
    traceable for export (plain tensors in and out, no Python branching on tensor values) and
    equivariant: rotating every edge vector rotates the outputs as their irreps say (invariant plain
    features do not change).  Optional: :meth:`probe_memory`.
    """

    in_spec: Spec
    out_spec: Spec
    cutoff: float

    def encode(self, x: Tensor, edge_index: Tensor, edge_vec: Tensor) -> List[Tensor]:  # pragma: no cover
        """Atom features after each interaction layer.

        ``x`` [N, in_spec.dim] featurizer output; ``edge_index`` [2, E] int64 ``[sender, receiver]``;
        ``edge_vec`` [E, 3] Å, ``r_receiver − r_sender`` (periodic images applied).  Returns a list of
        tensors with N rows each (one per layer, any widths; at least one): the decoder's inputs.
        """
        raise NotImplementedError

    def decode(
        self, atom_layers: List[Tensor], edge_index: Tensor, edge_vec: Tensor, num_probes: int
    ) -> Tensor:  # pragma: no cover - interface
        """Probe features [num_probes, out_spec.dim].

        ``atom_layers``: what :meth:`encode` returned; ``edge_index`` [2, E] int64 ``[atom, probe]``;
        ``edge_vec`` [E, 3] Å, ``r_probe − r_atom``.  A probe with no edge gets the features of empty
        space (whatever the network makes of no neighbours).  The result for one probe must not depend
        on the other probes of the batch (probes are decoded in batches of any size).
        """
        raise NotImplementedError

    def capture_form(self, ops: str = "standard") -> Optional[nn.Module]:
        """What graph capture (export to ONNX, TorchScript, pt2) records instead of this module, or None
        (the default) to record the module itself.

        A backbone whose inference path cannot be captured well (native kernels, per-block loops) returns
        an ``nn.Module`` with the same ``encode``/``decode`` signatures and function, built from the current
        weights (constants only); exporters call it once per export.  ``ops``: ``"standard"`` (only ONNX's
        own operators) or ``"cdp"`` (``cdp export --ops cdp``: the form may call operators of its plugin's
        onnxruntime library; it then lists them in ``describe()["custom_ops"]`` as ``{"domain", "ops",
        "provider": "module:function"}``, the function returning the library's path, and gives their ONNX
        translations from ``onnx_translations()``; for TorchScript it lists the PyTorch operators it calls in
        ``describe()["torch_ops"]`` as ``{"namespace", "ops", "provider"}``, the function registering them,
        see :mod:`cdp.core.operators`).  A backbone without such operators raises CdpError for ``"cdp"``.
        """
        if ops != "standard":
            raise CdpError(f"{type(self).__name__} has no export form with cdp's operators (use --ops standard)")
        return None

    def read_only(self, irreps: Optional[str]) -> None:
        """Only the channels of these irreps types of :meth:`decode`'s output will be read: an e3nn irreps
        string whose multiplicities are ignored (``"0e"``), from the model's :meth:`Readout.reads`; None:
        all of them.  :class:`~cdp.core.model.DensityModel` calls it at construction and again before a
        decode or an export whenever what it last declared differs from its readout's (a readout swapped in,
        a backbone shared by models with different readouts: :meth:`~cdp.core.model.DensityModel.declare_reads`).
        A backbone may then leave the other channels unspecified (but finite) in inference and in the form
        :meth:`capture_form` returns (exported decoders end in the same readout) — never under autograd,
        where decode stays the whole function.  The default ignores it."""
        return None

    def probe_memory(self, itemsize: int, edges_per_probe: float) -> Optional[Tuple[int, int]]:
        """Memory of one :meth:`decode` call as (fixed bytes, bytes per probe), or None if unknown.

        ``itemsize``: bytes per float (4 or 8); ``edges_per_probe``: expected atom→probe edges per probe.
        The predictor sizes probe batches for ``--max-memory`` with it; None (the default) keeps the
        configured probe batch.
        """
        return None


_FOR_CAPTURE = contextvars.ContextVar("cdp_for_capture", default=False)


@contextlib.contextmanager
def for_capture():
    """Components built inside this context are only captured (exported), never run for speed.

    A component may then skip set-up that only its fast inference path needs (compiling or loading
    native kernels) and keep its PyTorch path: the model computes the same function, and
    :meth:`Backbone.capture_form` is what the exporters record.  ``cdp export`` loads its model so.
    """
    token = _FOR_CAPTURE.set(True)
    try:
        yield
    finally:
        _FOR_CAPTURE.reset(token)


def building_for_capture() -> bool:
    """True inside :func:`for_capture` (see there): fast-inference-only set-up may be skipped."""
    return _FOR_CAPTURE.get()


class Readout(nn.Module):
    """Probe features [M, in_spec.dim] → density [M] e/Å³, or [M, 2] = (total, magnetisation) when ``spin``.

    Required: ``in_spec`` (a :class:`Spec`, set in ``__init__`` from the ``in_spec`` argument, which the
    core passes as the backbone's ``out_spec``) and :meth:`forward`.  The output must be invariant
    (a density is a scalar field).
    """

    in_spec: Spec
    spin: bool = False

    def forward(self, features: Tensor) -> Tensor:  # pragma: no cover - interface
        """``features`` [M, in_spec.dim] → ρ [M] (``spin`` False) or [M, 2] (``spin`` True)."""
        raise NotImplementedError

    def reads(self) -> Optional[str]:
        """The irreps types of the features :meth:`forward` depends on, as an e3nn irreps string whose
        multiplicities are ignored (``"0e"``), or None (the default): all of them.  The model passes it to
        :meth:`Backbone.read_only`, so a backbone may skip the rest in inference: say only what is true for
        every input (a channel left out may hold anything).  Anything else than None or a string e3nn parses
        is refused when the model is assembled (:func:`readout_reads`)."""
        return None


def readout_reads(readout: Readout) -> Optional[str]:
    """``readout.reads()``, checked: None or an e3nn irreps string (``"0e"``, ``"2x0e+0o"``).  Raises CdpError
    naming the readout and the value otherwise."""
    reads = readout.reads()
    if reads is None:
        return None
    ok = isinstance(reads, str)
    if ok:
        try:
            o3.Irreps(reads)
        except (ValueError, TypeError, AssertionError):
            ok = False
    if not ok:
        raise CdpError(f"readout {describe(readout)}: reads() must return None or an e3nn irreps string such as "
                       f"'0e', got {reads!r}")
    return reads


COMPONENT_KINDS = ("featurizer", "graph", "backbone", "readout")
BASES = {"featurizer": Featurizer, "graph": GraphBuilder, "backbone": Backbone, "readout": Readout}
_REQUIRED = {
    "featurizer": ("out_spec",),
    "graph": (),
    "backbone": ("in_spec", "out_spec", "cutoff"),
    "readout": ("in_spec",),
}
_METHODS = {
    "featurizer": ("forward",),
    "graph": ("atom_edges", "probe_edges"),
    "backbone": ("encode", "decode"),
    "readout": ("forward",),
}


def describe(component) -> str:
    """``Class (module)``: how errors name a component."""
    cls = type(component)
    return f"{cls.__name__} ({cls.__module__})"


def check_component(component, kind: str) -> None:
    """Refuse a component that misses part of the contract of ``kind``, in one line naming it.

    Checks the base class, the required attributes (``Spec`` instances, a positive finite cutoff,
    ``num_elements`` ≥ 1, a boolean ``spin``, a readout's :func:`readout_reads`) and that the required
    methods are overridden.  Raises CdpError.
    """
    if kind not in BASES:
        raise CdpError(f"unknown component kind '{kind}' (kinds: {', '.join(COMPONENT_KINDS)})")
    base = BASES[kind]
    who = f"{kind} {describe(component)}"
    if not isinstance(component, base):
        raise CdpError(f"{who} is not a {base.__module__}.{base.__name__} subclass")
    for name in _METHODS[kind]:
        if getattr(type(component), name, None) is getattr(base, name):
            raise CdpError(f"{who} does not implement {name}() of the {base.__name__} contract")
    for name in _REQUIRED[kind]:
        try:
            value = getattr(component, name)
        except AttributeError:
            hint = " (set self.in_spec = in_spec in __init__)" if (kind, name) == ("readout", "in_spec") else ""
            raise CdpError(f"{who} does not set '{name}', required by the {base.__name__} contract{hint}") from None
        if name.endswith("_spec") and not isinstance(value, Spec):
            raise CdpError(f"{who}: '{name}' must be a cdp.core.components.Spec, got {type(value).__name__}")
        if name == "cutoff":
            try:
                ok = math.isfinite(float(value)) and float(value) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise CdpError(f"{who}: 'cutoff' must be a positive number of Å, got {value!r}")
    if kind == "featurizer":
        n = getattr(component, "num_elements", None)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 2:
            raise CdpError(f"{who}: 'num_elements' must be an integer ≥ 2 (Z = 0 … num_elements − 1), got {n!r}")
    if kind == "readout" and not isinstance(getattr(component, "spin", None), (bool, np.bool_)):
        raise CdpError(f"{who}: 'spin' must be True or False, got {getattr(component, 'spin', None)!r}")
    if kind == "readout":
        readout_reads(component)
