"""Encoder and decoder modules over plain tensors: the two stages an exported model is made of.

The encoder runs once per structure (atoms graph → per-layer atom features); the decoder runs per probe
batch (atom features + atom→probe edges → densities).  Graph construction stays outside: edges come in
as ``edge_index`` [2, E] int64 and ``edge_vec`` [E, 3] (``r_receiver − r_sender − n·cell``).  The number
of probes enters as the length of ``probe_slots`` [M] (values unused), so that every size is a tensor
dimension that the exporters keep dynamic.

A model with an atomic prior (:mod:`cdp.core.prior`) exports one more encoder output, ``atom_prior``
[N, n_basis] (each atom's radial coefficients), which the decoder takes after the layers and turns into
ρ⁰ on the same probe edges, adding it to the network's density: the exported density is the total.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from cdp.core.model import add_prior

ENCODER_INPUTS = ("numbers", "edge_index", "edge_vec")
DECODER_EDGE_INPUTS = ("probe_edge_index", "probe_edge_vec", "probe_slots")
PRIOR_NAME = "atom_prior"


def layer_names(num_layers: int) -> List[str]:
    """Names of the per-layer atom feature tensors (encoder outputs = decoder inputs)."""
    return [f"atom_layer_{i}" for i in range(num_layers)]


def atom_output_names(num_layers: int, prior: bool) -> List[str]:
    """Names of every encoder output (= the decoder's atom-side inputs): the layers, then ``atom_prior``."""
    return layer_names(num_layers) + ([PRIOR_NAME] if prior else [])


class Encoder(nn.Module):
    """(numbers [N], edge_index [2, E], edge_vec [E, 3]) → one atom feature tensor per layer
    [, atom_prior [N, n_basis] when the model has a prior]."""

    def __init__(self, featurizer: nn.Module, backbone: nn.Module, prior: Optional[nn.Module] = None):
        super().__init__()
        self.featurizer = featurizer
        self.backbone = backbone
        self.prior = prior

    def forward(self, numbers: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tuple[Tensor, ...]:
        x = self.featurizer(numbers)
        layers = tuple(self.backbone.encode(x, edge_index, edge_vec))
        if self.prior is not None:
            layers = layers + (self.prior.atom_coefficients(numbers).to(edge_vec.dtype),)
        return layers


class Decoder(nn.Module):
    """(atom_layer_0 … atom_layer_{L−1}[, atom_prior], probe_edge_index [2, Ep], probe_edge_vec [Ep, 3],
    probe_slots [M]) → ρ [M] or [M, 2] (the prior, if any, added to the total density)."""

    def __init__(self, backbone: nn.Module, readout: nn.Module, num_layers: int, prior: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone
        self.readout = readout
        self.prior = prior
        self.num_layers = int(num_layers)

    def forward(self, *inputs: Tensor) -> Tensor:
        layers = list(inputs[: self.num_layers])
        k = self.num_layers + (1 if self.prior is not None else 0)
        edge_index, edge_vec, slots = inputs[k], inputs[k + 1], inputs[k + 2]
        h = self.backbone.decode(layers, edge_index, edge_vec, slots.shape[0])
        out = self.readout(h)
        if self.prior is not None:
        
            out = add_prior(out, self.prior.density(inputs[self.num_layers], edge_index, edge_vec, slots.shape[0]))
        return out


def capture_backbone(backbone: nn.Module, ops: str = "standard") -> nn.Module:
    """The module graph capture records for ``backbone``: its ``capture_form(ops)`` (Backbone contract: the
    same encode/decode rebuilt as large dense operations from the trained weights, built once per export)
    when it gives one, else the backbone itself."""
    form = backbone.capture_form() if ops == "standard" else backbone.capture_form(ops=ops)
    return form.eval() if form is not None else backbone


def capture_summary(enc: nn.Module) -> Optional[dict]:
    """``describe()`` of the encoder's backbone when it is a capture form (see :func:`capture_backbone`), else None."""
    describe = getattr(getattr(enc, "backbone", None), "describe", None)
    return describe() if callable(describe) else None


def split_model(model, ops: str = "standard") -> Tuple[Encoder, Decoder]:
    """Encoder and decoder of a DensityModel (in eval mode), sharing its featurizer, readout and prior; the
    backbone is the one :func:`capture_backbone` gives for ``ops`` (built once and shared by both)."""
    model.eval()
    declare = getattr(model, "declare_reads", None)
    if declare is not None:  # the capture form skips what the backbone was told the readout never reads
        declare()
    prior = getattr(model, "prior", None)
    backbone = capture_backbone(model.backbone, ops)
    enc = Encoder(model.featurizer, backbone, prior).eval()
    num_layers = count_layers(model, backbone)
    dec = Decoder(backbone, model.readout, num_layers, prior).eval()
    return enc, dec


def count_layers(model, backbone: Optional[nn.Module] = None) -> int:
    """Number of atom feature layers the backbone's encode returns (run on a two-atom dummy graph);
    ``backbone``: the module to run instead of ``model.backbone`` (its capture form: no native kernel build)."""
    dtype = model.dtype
    numbers = torch.tensor([1, 1], dtype=torch.long)
    ei = torch.tensor([[0, 1], [1, 0]], dtype=torch.long)
    vec = torch.tensor([[0.5, 0.1, 0.2], [-0.5, -0.1, -0.2]], dtype=dtype)
    with torch.no_grad():
        return len((backbone or model.backbone).encode(model.featurizer(numbers), ei, vec))
