"""One ChargE3Net convolution: per-edge channel-wise tensor product with radial weights, self-connection mix.

Used for atom→atom (sender features = receiver features) and atom→probe (one-way) layers.  Kept as
its own class so that faster backends can replace it without touching the backbone.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from cdp.plugins.backbones.chargee3net._build_cache import fully_connected_net
from cdp.plugins.backbones.chargee3net.irreps import uvu_instructions


def _linear(irreps_in, irreps_out) -> o3.Linear:
    # simplified irreps give the weight layout of a fully connected product with a constant 1x0e
    return o3.Linear(o3.Irreps(irreps_in).simplify(), o3.Irreps(irreps_out).simplify(), _optimize_einsums=False)


class E3Convolution(nn.Module):
    """out = cos θ · sc(x_recv) + S ⊙ lin2(M),  M_i = Σ_{e→i} TP(lin1(x_send)_src, Y_e; MLP(R_e)) / √n.

    θ = 0.1·lin3(M) per receiver; S = sin θ on channels the self-connection reaches, 1 elsewhere.
    """

    def __init__(
        self,
        irreps_sender,
        irreps_receiver,
        irreps_sh,
        irreps_out,
        num_basis: int,
        num_neighbors: float,
        radial_neurons: int = 100,
    ):
        super().__init__()
        self.irreps_sender = o3.Irreps(irreps_sender)
        self.irreps_receiver = o3.Irreps(irreps_receiver)
        self.irreps_sh = o3.Irreps(irreps_sh)
        self.irreps_out = o3.Irreps(irreps_out)
        self.num_neighbors = float(num_neighbors)

        self.sc = _linear(self.irreps_receiver, self.irreps_out)
        self.lin1 = _linear(self.irreps_sender, self.irreps_sender)
        irreps_mid, instructions = uvu_instructions(self.irreps_sender, self.irreps_sh, self.irreps_out)
        self.tp = o3.TensorProduct(
            self.irreps_sender,
            self.irreps_sh,
            irreps_mid,
            instructions,
            internal_weights=False,
            shared_weights=False,
            _optimize_einsums=False,  # per-edge weights: contraction order search only costs build time
        )
        self.fc = fully_connected_net([num_basis, radial_neurons, self.tp.weight_numel], torch.nn.functional.silu)
        self.lin2 = _linear(irreps_mid, self.irreps_out)
        self.lin3 = _linear(irreps_mid, "0e")
        self.irreps_mid = irreps_mid
        self.register_buffer("sc_mask", self.sc.output_mask.clone().to(torch.get_default_dtype()), persistent=False)

    def mid_types(self, keep) -> frozenset:
        """The mid irreps types (``o3.Irrep``) needed for outputs of the types ``keep``: those types (lin2
        connects equal irreps) and lin3's input, which sets the angle of every output."""
        return frozenset(keep) | {ir for _, ir in self.lin3.irreps_out}

    def forward(
        self,
        sender: Tensor,
        receiver: Tensor,
        edge_index: Tensor,
        edge_sh: Tensor,
        edge_embedding: Tensor,
    ) -> Tensor:
        weight = self.fc(edge_embedding)
        self_connection = self.sc(receiver)
        h = self.lin1(sender)
        messages = self.tp(h[edge_index[0]], edge_sh, weight)
        agg = messages.new_zeros((receiver.shape[0], messages.shape[1]))
        agg = agg.index_add(0, edge_index[1], messages) / self.num_neighbors**0.5
        conv = self.lin2(agg)
        angle = 0.1 * self.lin3(agg)
        mask = self.sc_mask.to(angle.dtype)
        sin = (1.0 - mask) + angle.sin() * mask
        return angle.cos() * self_connection + sin * conv
