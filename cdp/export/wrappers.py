"""Encoder and decoder modules over plain tensors: the two stages an exported model is made of.

The encoder runs once per structure (atoms graph → per-layer atom features); the decoder runs per probe
batch (atom features + atom→probe edges → densities).  Graph construction stays outside: edges come in
as ``edge_index`` [2, E] int64 and ``edge_vec`` [E, 3] (``r_receiver − r_sender − n·cell``).  The number
of probes enters as the length of ``probe_slots`` [M] (values unused), so that every size is a tensor
dimension that the exporters keep dynamic.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn

ENCODER_INPUTS = ("numbers", "edge_index", "edge_vec")
DECODER_EDGE_INPUTS = ("probe_edge_index", "probe_edge_vec", "probe_slots")


def layer_names(num_layers: int) -> List[str]:
    """Names of the per-layer atom feature tensors (encoder outputs = decoder inputs)."""
    return [f"atom_layer_{i}" for i in range(num_layers)]


class Encoder(nn.Module):
    """(numbers [N], edge_index [2, E], edge_vec [E, 3]) → one atom feature tensor per layer."""

    def __init__(self, featurizer: nn.Module, backbone: nn.Module):
        super().__init__()
        self.featurizer = featurizer
        self.backbone = backbone

    def forward(self, numbers: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tuple[Tensor, ...]:
        x = self.featurizer(numbers)
        return tuple(self.backbone.encode(x, edge_index, edge_vec))


class Decoder(nn.Module):
    """(atom_layer_0 … atom_layer_{L−1}, probe_edge_index [2, Ep], probe_edge_vec [Ep, 3], probe_slots [M]) → ρ [M] or [M, 2]."""

    def __init__(self, backbone: nn.Module, readout: nn.Module, num_layers: int):
        super().__init__()
        self.backbone = backbone
        self.readout = readout
        self.num_layers = int(num_layers)

    def forward(self, *inputs: Tensor) -> Tensor:
        layers = list(inputs[: self.num_layers])
        edge_index, edge_vec, slots = inputs[self.num_layers], inputs[self.num_layers + 1], inputs[self.num_layers + 2]
        h = self.backbone.decode(layers, edge_index, edge_vec, slots.shape[0])
        return self.readout(h)


def split_model(model) -> Tuple[Encoder, Decoder]:
    """Encoder and decoder sharing the parameters of a DensityModel (in eval mode)."""
    model.eval()
    enc = Encoder(model.featurizer, model.backbone).eval()
    num_layers = count_layers(model)
    dec = Decoder(model.backbone, model.readout, num_layers).eval()
    return enc, dec


def count_layers(model) -> int:
    """Number of atom feature layers the backbone's encode returns (run on a two-atom dummy graph)."""
    dtype = model.dtype
    numbers = torch.tensor([1, 1], dtype=torch.long)
    ei = torch.tensor([[0, 1], [1, 0]], dtype=torch.long)
    vec = torch.tensor([[0.5, 0.1, 0.2], [-0.5, -0.1, -0.2]], dtype=dtype)
    with torch.no_grad():
        return len(model.backbone.encode(model.featurizer(numbers), ei, vec))
