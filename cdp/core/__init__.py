"""cdp's core: data containers, component contracts, plugin registry, model assembly, checkpoints."""

from cdp.core.types import AtomFeatures, AtomGraph, Batch, CdpError, DensityGrid, ProbeGraph, edge_vectors
from cdp.core.components import Backbone, Featurizer, GraphBuilder, Readout, Spec

__all__ = [
    "AtomFeatures", "AtomGraph", "Batch", "CdpError", "DensityGrid", "ProbeGraph", "edge_vectors",
    "Backbone", "Featurizer", "GraphBuilder", "Readout", "Spec",
]
