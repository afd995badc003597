"""equiDeepDFT backbone: the PaiNN-style DeepDFT model (Jørgensen & Bhowmik), as a cdp backbone.

Atoms carry scalars s [N, F] and vectors v [N, 3, F]; each layer is a PaiNN message (with DeepDFT's
extra multiplication of the scalar message by s_sender) followed by a PaiNN update.  Probes start at
zero, take one-way messages from the atom states of the matching layer through a learned gate, then a
PaiNN update.  ``encode`` packs each layer as [s ‖ v.flatten] [N, 4F]; ``decode`` returns the probe
scalars [M, F] for the separate ``mlp`` readout plugin (Linear–SiLU–Linear).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn

from cdp.core.components import Backbone, Spec
from cdp.core.configs import EquiDeepDFTConfig
from cdp.core.hookspec import hookimpl
from cdp.core.types import CdpError
from cdp.nn.blocks import (
    cosine_cutoff,
    edge_length,
    safe_norm,
    scatter_sum,
    sinc_basis,
    two_layer_mlp,
    unit_vector,
)


class PaiNNMessage(nn.Module):
    """Σ over edges of (s_j ⊙ a_ss, v_j ⊙ a_vv + a_vs ⊗ r̂) with (a_vv, a_vs, a_ss) = W(d)·fcut ⊙ φ(s_j).

    Computed as W(d)·fcut ⊙ (per-sender products): s_j ⊙ φ_ss and v_j ⊙ φ_vv are formed once per sender
    and gathered with φ_vs in one pass, so each edge costs one filter GEMM row, one gather and the
    products with the filter (the same function; only the order of three-factor products changes).
    """

    def __init__(self, node_size: int, num_basis: int):
        super().__init__()
        self.node_size = node_size
        self.filter = nn.Linear(num_basis, 3 * node_size)
        self.node_mlp = two_layer_mlp(node_size, node_size, 3 * node_size, nn.SiLU())

    def forward(
        self, s: Tensor, v: Tensor, edge_index: Tensor, basis: Tensor, fcut: Tensor, unit: Tensor, num_receivers: int
    ) -> Tuple[Tensor, Tensor]:
        f = self.node_size
        src, dst = edge_index[0], edge_index[1]
        phi_vv, phi_vs, phi_ss = torch.split(self.node_mlp(s), f, dim=1)
        sender = torch.cat((phi_vs, s * phi_ss, (v * phi_vv.unsqueeze(1)).reshape(-1, 3 * f)), dim=1)
        gathered = sender.index_select(0, src)  # [E, 5F]: φ_vs | s ⊙ φ_ss | v ⊙ φ_vv
        # filter(basis) · fcut as one GEMM on [basis · fcut, fcut] against [W | b]
        aug = torch.cat((basis * fcut.unsqueeze(1), fcut.unsqueeze(1)), dim=1)
        w_vv, w_vs, w_ss = torch.split(
            torch.nn.functional.linear(aug, torch.cat((self.filter.weight, self.filter.bias.unsqueeze(1)), dim=1)), f, dim=1
        )
        msg_s = w_ss * gathered[:, f : 2 * f]
        msg_v = torch.addcmul(
            gathered[:, 2 * f :].view(-1, 3, f) * w_vv.unsqueeze(1), (w_vs * gathered[:, :f]).unsqueeze(1), unit.unsqueeze(2)
        )
        return scatter_sum(msg_s, dst, num_receivers), scatter_sum(msg_v, dst, num_receivers)


class PaiNNUpdate(nn.Module):
    """s += a_ss + a_sv ⊙ ⟨Uv, Vv⟩; v += a_vv ⊙ Uv, with (a_ss, a_sv, a_vv) = MLP([s ‖ ‖Vv‖])."""

    def __init__(self, node_size: int):
        super().__init__()
        self.node_size = node_size
        self.U = nn.Linear(node_size, node_size, bias=False)
        self.V = nn.Linear(node_size, node_size, bias=False)
        self.mlp = two_layer_mlp(2 * node_size, node_size, 3 * node_size, nn.SiLU())

    def forward(self, s: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        uv = self.U(v)
        vv = self.V(v)
        vv_norm = safe_norm(vv, dim=1)  # zero gradient at an exactly zero vector (isolated atom/probe)
        a_ss, a_sv, a_vv = torch.split(self.mlp(torch.cat((s, vv_norm), dim=1)), self.node_size, dim=1)
        inner = torch.sum(uv * vv, dim=1)
        return s + (a_ss + a_sv * inner), v + a_vv.unsqueeze(1) * uv


class PaiNNInteraction(nn.Module):
    """Atom layer: residual PaiNN message, then PaiNN update."""

    def __init__(self, node_size: int, num_basis: int):
        super().__init__()
        self.message = PaiNNMessage(node_size, num_basis)
        self.update = PaiNNUpdate(node_size)

    def forward(self, s, v, edge_index, basis, fcut, unit) -> Tuple[Tensor, Tensor]:
        ds, dv = self.message(s, v, edge_index, basis, fcut, unit, s.shape[0])
        return self.update(s + ds, v + dv)


class PaiNNProbeLayer(nn.Module):
    """Probe layer: gate (g_s, g_v) = σ(MLP(Σ msg_s)); state ← g ⊙ state + (1 − g) ⊙ Σ msg; then update."""

    def __init__(self, node_size: int, num_basis: int):
        super().__init__()
        self.node_size = node_size
        self.message = PaiNNMessage(node_size, num_basis)
        self.gate_mlp = two_layer_mlp(node_size, 2 * node_size, 2 * node_size, nn.SiLU())
        self.update = PaiNNUpdate(node_size)

    def forward(self, atom_s, atom_v, s, v, edge_index, basis, fcut, unit) -> Tuple[Tensor, Tensor]:
        ms, mv = self.message(atom_s, atom_v, edge_index, basis, fcut, unit, s.shape[0])
        g_s, g_v = torch.split(torch.sigmoid(self.gate_mlp(ms)), self.node_size, dim=1)
        g_v = g_v.unsqueeze(1)
        s = g_s * s + (1.0 - g_s) * ms
        v = g_v * v + (1.0 - g_v) * mv
        return self.update(s, v)


class EquiDeepDFT(Backbone):
    """PaiNN-style DeepDFT: sinc distance features, cosine cutoff, SiLU."""

    def __init__(
        self,
        num_interactions: int = EquiDeepDFTConfig.num_interactions,
        node_size: int = EquiDeepDFTConfig.node_size,
        cutoff: float = EquiDeepDFTConfig.cutoff,
        distance_embedding_size: int = EquiDeepDFTConfig.distance_embedding_size,
    ):
        super().__init__()
        if int(num_interactions) < 1 or int(node_size) < 1 or int(distance_embedding_size) < 1:
            raise CdpError("equideepdft: num_interactions, node_size, distance_embedding_size must be positive integers")
        if not float(cutoff) > 0:
            raise CdpError("equideepdft: cutoff must be positive")
        self.num_interactions = int(num_interactions)
        self.node_size = int(node_size)
        self.cutoff = float(cutoff)
        self.distance_embedding_size = int(distance_embedding_size)
        self.in_spec = Spec(size=self.node_size)
        self.out_spec = Spec(size=self.node_size)
        nb = self.distance_embedding_size
        self.interactions = nn.ModuleList(PaiNNInteraction(self.node_size, nb) for _ in range(self.num_interactions))
        self.probe_layers = nn.ModuleList(PaiNNProbeLayer(self.node_size, nb) for _ in range(self.num_interactions))

    def _edge_features(self, edge_vec: Tensor):
        dist = edge_length(edge_vec)
        basis = sinc_basis(dist, self.distance_embedding_size, self.cutoff)
        return basis, cosine_cutoff(dist, self.cutoff), unit_vector(edge_vec, dist)

    def _unpack(self, packed: Tensor) -> Tuple[Tensor, Tensor]:
        f = self.node_size
        return packed[:, :f], packed[:, f:].reshape(packed.shape[0], 3, f)

    def encode(self, x: Tensor, edge_index: Tensor, edge_vec: Tensor) -> List[Tensor]:
        basis, fcut, unit = self._edge_features(edge_vec)
        s = x
        v = torch.zeros((x.shape[0], 3, self.node_size), dtype=x.dtype, device=x.device)
        layers: List[Tensor] = []
        for layer in self.interactions:
            s, v = layer(s, v, edge_index, basis, fcut, unit)
            layers.append(torch.cat((s, v.reshape(v.shape[0], 3 * self.node_size)), dim=1))
        return layers

    def decode(self, atom_layers: List[Tensor], edge_index: Tensor, edge_vec: Tensor, num_probes: int) -> Tensor:
        basis, fcut, unit = self._edge_features(edge_vec)
        ref = atom_layers[0]
        s = torch.zeros((num_probes, self.node_size), dtype=ref.dtype, device=ref.device)
        v = torch.zeros((num_probes, 3, self.node_size), dtype=ref.dtype, device=ref.device)
        for layer, packed in zip(self.probe_layers, atom_layers):
            atom_s, atom_v = self._unpack(packed)
            s, v = layer(atom_s, atom_v, s, v, edge_index, basis, fcut, unit)
        return s


@hookimpl
def cdp_components():
    return {"backbone": {"equideepdft": EquiDeepDFT}}
