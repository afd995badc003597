"""The four component contracts: featurizer, graph builder, backbone, readout head.

Every component declares what it consumes and produces as a :class:`Spec` (e3nn irreps for
equivariant components, a plain feature size otherwise); :mod:`cdp.core.model` checks that the
pieces fit before assembling them.  Backbone and readout methods take plain tensors only, so that
the same modules export to TorchScript/ONNX at the encoder/decoder seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional, Tuple

from e3nn import o3
import numpy as np
from torch import Tensor, nn


@dataclass(frozen=True)
class Spec:
    """What flows between components: ``irreps`` (e3nn string) or ``size`` (plain features)."""

    irreps: Optional[str] = None
    size: Optional[int] = None

    def __post_init__(self):
        if (self.irreps is None) == (self.size is None):
            raise ValueError("a Spec names exactly one of irreps or size")

    @property
    def dim(self) -> int:
        if self.size is not None:
            return int(self.size)

        return o3.Irreps(self.irreps).dim

    def fits(self, other: "Spec") -> bool:
        """True when features described by ``self`` can be fed where ``other`` is expected."""
        if self.irreps is not None and other.irreps is not None:
            return o3.Irreps(self.irreps).simplify() == o3.Irreps(other.irreps).simplify()
        return self.dim == other.dim

    def __str__(self) -> str:
        return self.irreps if self.irreps is not None else f"{self.size} features"


class Featurizer(nn.Module):
    """Atomic numbers [N] → initial node features [N, out_spec.dim]."""

    kind: ClassVar[str] = "featurizer"
    out_spec: Spec

    def forward(self, numbers: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class GraphBuilder:
    """Neighbour lists within ``cutoff``: atom→atom edges and atom→probe edges.

    Works on numpy arrays of one structure; returns sender/receiver indices and the integer image
    offsets of the sender.  Not a torch module: graph construction stays outside exported models.
    """

    kind: ClassVar[str] = "graph"

    def atom_edges(
        self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
    ) -> Tuple[np.ndarray, np.ndarray]:  # pragma: no cover - interface
        """Return (edge_index [2, E] int64, offsets [E, 3] int64)."""
        raise NotImplementedError

    def probe_edges(
        self,
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: np.ndarray,
        probes: np.ndarray,
        cutoff: float,
    ) -> Tuple[np.ndarray, np.ndarray]:  # pragma: no cover - interface
        """Return (edge_index [2, E] int64 as [atom, probe], offsets [E, 3] int64)."""
        raise NotImplementedError


class Backbone(nn.Module):
    """Atom graph → per-layer atom features; probe graph + those → probe features.

    ``encode(x, edge_index, edge_vec)`` returns one tensor per layer; ``decode(atom_layers,
    edge_index, edge_vec, num_probes)`` returns probe features [M, out_spec.dim].  ``cutoff`` is the
    radius the graphs must be built with.
    """

    kind: ClassVar[str] = "backbone"
    in_spec: Spec
    out_spec: Spec
    cutoff: float

    def encode(self, x: Tensor, edge_index: Tensor, edge_vec: Tensor) -> List[Tensor]:  # pragma: no cover
        raise NotImplementedError

    def decode(
        self, atom_layers: List[Tensor], edge_index: Tensor, edge_vec: Tensor, num_probes: int
    ) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Readout(nn.Module):
    """Probe features [M, in_spec.dim] → density [M], or [M, 2] = (total, magnetisation) when ``spin``."""

    kind: ClassVar[str] = "readout"
    in_spec: Spec
    spin: bool = False

    def forward(self, features: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


COMPONENT_KINDS = ("featurizer", "graph", "backbone", "readout")
