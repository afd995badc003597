"""DensityModel: one featurizer, one graph builder, one backbone and one readout head, assembled and checked.

Atom features are computed once per structure (:meth:`DensityModel.encode`); probes then pass through
:meth:`DensityModel.decode` in batches of any size, each batch reusing the same atom features.
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from cdp.core.components import Backbone, Featurizer, GraphBuilder, Readout, check_component, readout_reads
from cdp.core.prior import AtomicDensityPrior, check_prior_config
from cdp.core.registry import get_registry, validate_preset
from cdp.core.types import AtomFeatures, AtomGraph, Batch, CdpError, ProbeGraph, edge_vectors


_DECLARED = "_cdp_declared_reads"  # on the backbone: the reads() a DensityModel last passed to read_only
_NOTHING = object()


class DensityModel(nn.Module):
    """ρ(r) = readout(backbone.decode(probe graph, backbone.encode(atom graph, featurizer(Z)))) [+ ρ⁰(r)].

    With a ``prior`` (:class:`~cdp.core.prior.AtomicDensityPrior`) the decoded density is the network
    output plus the superposition of fitted atomic densities, evaluated on the same atom→probe edges;
    the network then learns the residual.  For spin models the prior adds to the total density only.
    """

    def __init__(
        self,
        featurizer: Featurizer,
        backbone: Backbone,
        readout: Readout,
        graph: GraphBuilder,
        config: Optional[dict] = None,
        prior: Optional[AtomicDensityPrior] = None,
    ):
        super().__init__()
        check_component(graph, "graph")
        check_fit(featurizer, backbone, readout)
        self.featurizer = featurizer
        self.backbone = backbone
        self.readout = readout
        self.graph = graph
        if prior is not None and float(prior.cutoff) > float(backbone.cutoff) + 1e-12:
            raise CdpError(f"prior cutoff {float(prior.cutoff)} Å exceeds the model cutoff {float(backbone.cutoff)} Å")
        self.prior = prior
        self.config = copy.deepcopy(config) if config is not None else {}
        self.declare_reads(force=True)

    def declare_reads(self, force: bool = False) -> None:
        """Tell the backbone which of its output channels this model's readout reads
        (:meth:`~cdp.core.components.Backbone.read_only` of :meth:`~cdp.core.components.Readout.reads`), unless
        a model last told it exactly that.  Run at construction, before every :meth:`decode` and by the
        exporters, so that a readout swapped in (``model.readout = head``) or a backbone shared with a model
        whose readout reads other channels never finds a channel it reads skipped; a direct
        ``model.backbone.read_only(None)`` (compute everything) stays until the readout changes.  ``force``:
        declare in any case (construction).  Raises CdpError when ``reads()`` is neither None nor an irreps
        string."""
        reads = self.readout.reads()
        declared = self.backbone.__dict__.get(_DECLARED, _NOTHING)  # a plain attribute: no state_dict entry
        if not force and (reads is None or isinstance(reads, str)) and declared == reads:
            return
        reads = readout_reads(self.readout)
        self.backbone.read_only(reads)
        self.backbone.__dict__[_DECLARED] = reads

    # -- assembly --------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict, registry=None) -> "DensityModel":
        """Build from ``{"featurizer": {...}, "graph": {...}, "backbone": {...}, "readout": {...}}`` and an
        optional ``"prior": {kind: atomic, n_basis: ...}`` (absent or null: no prior; an unfitted prior is zero)."""
        registry = registry or get_registry()
        validate_preset(config, "model config")
        prior_cfg = check_prior_config(config.get("prior"))
        featurizer = registry.build("featurizer", config["featurizer"])
        backbone = registry.build("backbone", config["backbone"])
        check_component(backbone, "backbone")  # its out_spec is the readout's in_spec
        readout = registry.build("readout", config["readout"], in_spec=backbone.out_spec)
        graph = registry.build("graph", config["graph"])
        model_config = {k: copy.deepcopy(config[k]) for k in ("featurizer", "graph", "backbone", "readout")}
        prior = None
        if prior_cfg is not None:
            prior = AtomicDensityPrior.from_config(prior_cfg, float(backbone.cutoff))
            model_config["prior"] = prior_cfg
        return cls(featurizer, backbone, readout, graph, model_config, prior)

    @property
    def cutoff(self) -> float:
        return float(self.backbone.cutoff)

    @property
    def spin(self) -> bool:
        return bool(self.readout.spin)

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- graphs ----------------------------------------------------------------------------------
    def atom_graph(self, batch: Batch) -> AtomGraph:
        """Atom→atom edges of every structure in the batch, indices offset into the concatenation."""
        edges, offsets = [], []
        pos = batch.positions.detach().cpu().numpy().astype(np.float64)
        cells = batch.cell.detach().cpu().numpy().astype(np.float64)
        pbcs = batch.pbc.cpu().numpy()
        owner = batch.atom_batch.cpu().numpy()
        start = 0
        for b in range(batch.num_structures):
            n = int((owner == b).sum())
            ei, off = self.graph.atom_edges(pos[start : start + n], cells[b], pbcs[b], self.cutoff)
            edges.append(ei + start)
            offsets.append(off)
            start += n
        return AtomGraph(
            edge_index=torch.from_numpy(np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)).to(batch.positions.device),
            offsets=torch.from_numpy(np.concatenate(offsets) if offsets else np.zeros((0, 3))).to(batch.positions),
            num_nodes=batch.num_atoms,
        )

    def probe_graph(self, batch: Batch, probes: Tensor, probe_batch: Optional[Tensor] = None) -> ProbeGraph:
        """Atom→probe edges; ``probe_batch`` [M] names each probe's structure (default: all in structure 0)."""
        m = int(probes.shape[0])
        if probe_batch is None:
            if batch.num_structures != 1:
                raise CdpError("probe_batch is required when the batch holds several structures")
            probe_batch = torch.zeros(m, dtype=torch.long, device=probes.device)
        pos = batch.positions.detach().cpu().numpy().astype(np.float64)
        pr = probes.detach().cpu().numpy().astype(np.float64)
        cells = batch.cell.detach().cpu().numpy().astype(np.float64)
        pbcs = batch.pbc.cpu().numpy()
        owner = batch.atom_batch.cpu().numpy()
        pown = probe_batch.cpu().numpy()
        atom_start = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=batch.num_structures))])
        edges, offsets = [], []
        for b in range(batch.num_structures):
            sel = np.nonzero(pown == b)[0]
            if sel.size == 0:
                continue
            a0, a1 = atom_start[b], atom_start[b + 1]
            ei, off = self.graph.probe_edges(pos[a0:a1], cells[b], pbcs[b], pr[sel], self.cutoff)
            edges.append(np.stack([ei[0] + a0, sel[ei[1]]]))
            offsets.append(off)
        ei = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)
        off = np.concatenate(offsets) if offsets else np.zeros((0, 3))
        return ProbeGraph(
            edge_index=torch.from_numpy(ei).to(probes.device),
            offsets=torch.from_numpy(off).to(probes),
            num_probes=m,
            probe_batch=probe_batch,
        )

    # -- the two seams ---------------------------------------------------------------------------
    def encode(self, batch: Batch, graph: Optional[AtomGraph] = None) -> AtomFeatures:
        """Per-layer atom features; compute once per structure and reuse for every probe batch."""
        graph = graph if graph is not None else self.atom_graph(batch)
        vec = edge_vectors(batch.positions, batch.positions, graph.edge_index, graph.offsets, batch.cell, batch.atom_batch)
        x = self.featurizer(batch.numbers)
        return AtomFeatures(self.backbone.encode(x, graph.edge_index, vec))

    def decode(
        self,
        batch: Batch,
        features: AtomFeatures,
        probes: Tensor,
        probe_batch: Optional[Tensor] = None,
        graph: Optional[ProbeGraph] = None,
    ) -> Tensor:
        """Density [M] (or [M, 2] with spin) at ``probes`` [M, 3] from precomputed atom features."""
        graph = graph if graph is not None else self.probe_graph(batch, probes, probe_batch)
        vec = edge_vectors(batch.positions, probes, graph.edge_index, graph.offsets, batch.cell, batch.atom_batch)
        self.declare_reads()
        h = self.backbone.decode(features.layers, graph.edge_index, vec, graph.num_probes)
        out = self.readout(h)
        if self.prior is not None:
            out = add_prior(out, self.prior(batch.numbers, graph.edge_index, vec, graph.num_probes))
        return out

    def prior_density(
        self,
        batch: Batch,
        probes: Tensor,
        probe_batch: Optional[Tensor] = None,
        graph: Optional[ProbeGraph] = None,
    ) -> Tensor:
        """The prior alone, ρ⁰ [M] (e/Å³) at ``probes`` [M, 3]; zeros when the model has no prior."""
        graph = graph if graph is not None else self.probe_graph(batch, probes, probe_batch)
        if self.prior is None:
            return torch.zeros(graph.num_probes, dtype=probes.dtype, device=probes.device)
        vec = edge_vectors(batch.positions, probes, graph.edge_index, graph.offsets, batch.cell, batch.atom_batch)
        return self.prior(batch.numbers, graph.edge_index, vec, graph.num_probes)

    def forward(self, batch: Batch, probes: Tensor, probe_batch: Optional[Tensor] = None) -> Tensor:
        """Encode then decode in one call (training path)."""
        return self.decode(batch, self.encode(batch), probes, probe_batch)


def add_prior(network: Tensor, prior: Tensor) -> Tensor:
    """Network output [M] or [M, 2] (total, magnetisation) plus the prior density [M] on the total."""
    prior = prior.to(network.dtype)
    if network.ndim == 2:
        return torch.cat([network[:, :1] + prior.unsqueeze(1), network[:, 1:]], dim=1)
    return network + prior


def check_fit(featurizer: Featurizer, backbone: Backbone, readout: Readout) -> None:
    """Refuse an assembly whose pieces miss part of their contract or do not fit, naming both sides (CdpError)."""
    check_component(featurizer, "featurizer")
    check_component(backbone, "backbone")
    check_component(readout, "readout")
    if not featurizer.out_spec.fits(backbone.in_spec):
        raise CdpError(
            f"featurizer produces {featurizer.out_spec} but backbone {type(backbone).__name__} consumes {backbone.in_spec}"
        )
    if not backbone.out_spec.fits(readout.in_spec):
        raise CdpError(
            f"backbone {type(backbone).__name__} produces {backbone.out_spec} but readout {type(readout).__name__} consumes {readout.in_spec}"
        )
