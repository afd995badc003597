"""invDeepDFT backbone: the SchNet-style DeepDFT model (Jørgensen & Bhowmik), as a cdp backbone.

Atoms pass through ``num_interactions`` message-passing layers; probes start at zero and receive
one-way messages from the atom states of the matching layer, mixed in through a learned gate.  The
readout (Linear–ssp–Linear) is the separate ``mlp`` readout plugin.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from cdp.core.components import Backbone, Spec
from cdp.core.configs import InvDeepDFTConfig
from cdp.core.hookspec import hookimpl
from cdp.core.types import CdpError
from cdp.nn.blocks import (
    ShiftedSoftplus,
    edge_length,
    gaussian_basis,
    gaussian_centres,
    scatter_sum,
    soft_cutoff,
    two_layer_mlp,
)


class SchNetMessage(nn.Module):
    """Σ_j MLP_node([h_sender ‖ h_receiver]) ⊙ MLP_edge(g(d)) ⊙ fcut(d) into each receiver."""

    def __init__(self, node_size: int, num_basis: int):
        super().__init__()
        self.node_mlp = two_layer_mlp(2 * node_size, 2 * node_size, node_size, ShiftedSoftplus())
        self.edge_mlp = two_layer_mlp(num_basis, node_size, node_size, ShiftedSoftplus())

    def forward(
        self, sender: Tensor, receiver: Tensor, edge_index: Tensor, basis: Tensor, fcut: Tensor
    ) -> Tensor:
        # The first layer of MLP_node on [h_s ‖ h_r] equals W_s h_s + W_r h_r + b: applied per node and
        # gathered per edge, instead of a (2F × 2F) product per edge (same function, far fewer operations).
        first, act, second = self.node_mlp[0], self.node_mlp[1], self.node_mlp[2]
        f = sender.shape[1]
        pre_s = torch.nn.functional.linear(sender, first.weight[:, :f])
        pre_r = torch.nn.functional.linear(receiver, first.weight[:, f:], first.bias)
        hidden = act(pre_s[edge_index[0]] + pre_r[edge_index[1]])
        gates = self.edge_mlp(basis) * fcut.unsqueeze(1)
        return scatter_sum(second(hidden) * gates, edge_index[1], receiver.shape[0])


class SchNetInteraction(nn.Module):
    """Atom layer: h ← h + MLP(Σ messages)."""

    def __init__(self, node_size: int, num_basis: int):
        super().__init__()
        self.message = SchNetMessage(node_size, num_basis)
        self.update_mlp = two_layer_mlp(node_size, node_size, node_size, ShiftedSoftplus())

    def forward(self, h: Tensor, edge_index: Tensor, basis: Tensor, fcut: Tensor) -> Tensor:
        return h + self.update_mlp(self.message(h, h, edge_index, basis, fcut))


class SchNetProbeLayer(nn.Module):
    """Probe layer: z = σ(MLP_gate(p)); p ← z ⊙ p + (1 − z) ⊙ MLP(Σ messages from atoms)."""

    def __init__(self, node_size: int, num_basis: int):
        super().__init__()
        self.message = SchNetMessage(node_size, num_basis)
        self.gate_mlp = two_layer_mlp(node_size, node_size, node_size, ShiftedSoftplus())
        self.update_mlp = two_layer_mlp(node_size, node_size, node_size, ShiftedSoftplus())

    def forward(self, atoms: Tensor, probes: Tensor, edge_index: Tensor, basis: Tensor, fcut: Tensor) -> Tensor:
        msg = self.message(atoms, probes, edge_index, basis, fcut)
        gate = torch.sigmoid(self.gate_mlp(probes))
        return probes * gate + (1 - gate) * self.update_mlp(msg)


class InvDeepDFT(Backbone):
    """SchNet-style DeepDFT: Gaussian distance features (σ = step), soft cutoff, shifted softplus."""

    def __init__(
        self,
        num_interactions: int = InvDeepDFTConfig.num_interactions,
        node_size: int = InvDeepDFTConfig.node_size,
        cutoff: float = InvDeepDFTConfig.cutoff,
        gaussian_expansion_step: float = InvDeepDFTConfig.gaussian_expansion_step,
    ):
        super().__init__()
        if int(num_interactions) < 1 or int(node_size) < 1:
            raise CdpError("invdeepdft: num_interactions and node_size must be positive integers")
        if not float(cutoff) > 0 or not float(gaussian_expansion_step) > 0:
            raise CdpError("invdeepdft: cutoff and gaussian_expansion_step must be positive")
        self.num_interactions = int(num_interactions)
        self.node_size = int(node_size)
        self.cutoff = float(cutoff)
        self.gaussian_expansion_step = float(gaussian_expansion_step)
        self.in_spec = Spec(size=self.node_size)
        self.out_spec = Spec(size=self.node_size)
        self.register_buffer("centres", gaussian_centres(self.cutoff, self.gaussian_expansion_step), persistent=False)
        num_basis = int(self.centres.numel())
        self.interactions = nn.ModuleList(SchNetInteraction(self.node_size, num_basis) for _ in range(self.num_interactions))
        self.probe_layers = nn.ModuleList(SchNetProbeLayer(self.node_size, num_basis) for _ in range(self.num_interactions))

    def _edge_features(self, edge_vec: Tensor):
        dist = edge_length(edge_vec)
        return gaussian_basis(dist, self.centres, self.gaussian_expansion_step), soft_cutoff(dist, self.cutoff)

    def encode(self, x: Tensor, edge_index: Tensor, edge_vec: Tensor) -> List[Tensor]:
        basis, fcut = self._edge_features(edge_vec)
        layers: List[Tensor] = []
        h = x
        for layer in self.interactions:
            h = layer(h, edge_index, basis, fcut)
            layers.append(h)
        return layers

    def decode(self, atom_layers: List[Tensor], edge_index: Tensor, edge_vec: Tensor, num_probes: int) -> Tensor:
        basis, fcut = self._edge_features(edge_vec)
        ref = atom_layers[0]
        p = torch.zeros((num_probes, self.node_size), dtype=ref.dtype, device=ref.device)
        for layer, atoms in zip(self.probe_layers, atom_layers):
            p = layer(atoms, p, edge_index, basis, fcut)
        return p


@hookimpl
def cdp_components():
    return {"backbone": {"invdeepdft": InvDeepDFT}}
