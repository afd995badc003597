"""A tiny invariant model used to test the core without the real backbones."""

from __future__ import annotations

import types
from typing import List

import torch
from torch import Tensor, nn

from cdp.core.components import Backbone, Featurizer, Readout, Spec
from cdp.core.hookspec import hookimpl


class ToyEmbedding(Featurizer):
    def __init__(self, size: int = 4):
        super().__init__()
        self.out_spec = Spec(size=size)
        self.table = nn.Embedding(119, size)

    def forward(self, numbers: Tensor) -> Tensor:
        return self.table(numbers)


class ToyBackbone(Backbone):
    """h_i += Σ_j W h_j exp(-d²) per layer; probes: p = Σ_a h_a exp(-d²) (invariant, smooth)."""

    def __init__(self, size: int = 4, layers: int = 2, cutoff: float = 3.0):
        super().__init__()
        self.in_spec = Spec(size=size)
        self.out_spec = Spec(size=size)
        self.cutoff = cutoff
        self.lins = nn.ModuleList(nn.Linear(size, size) for _ in range(layers))

    def encode(self, x: Tensor, edge_index: Tensor, edge_vec: Tensor) -> List[Tensor]:
        out = []
        w = torch.exp(-(edge_vec**2).sum(-1, keepdim=True))
        for lin in self.lins:
            msg = torch.zeros_like(x).index_add(0, edge_index[1], lin(x)[edge_index[0]] * w)
            x = x + torch.tanh(msg)
            out.append(x)
        return out

    def decode(self, atom_layers: List[Tensor], edge_index: Tensor, edge_vec: Tensor, num_probes: int) -> Tensor:
        w = torch.exp(-(edge_vec**2).sum(-1, keepdim=True))
        h = atom_layers[-1]
        return torch.zeros(num_probes, h.shape[1], dtype=h.dtype, device=h.device).index_add(0, edge_index[1], h[edge_index[0]] * w)


class ToyReadout(Readout):
    def __init__(self, in_spec: Spec, spin: bool = False):
        super().__init__()
        if in_spec.size is None:
            raise ValueError("toy readout needs plain features")
        self.in_spec = in_spec
        self.spin = spin
        self.lin = nn.Linear(in_spec.size, 2 if spin else 1)

    def forward(self, features: Tensor) -> Tensor:
        out = self.lin(features)
        return out if self.spin else out[:, 0]


plugin = types.ModuleType("toy_plugin")


@hookimpl
def _toy_components():
    return {"featurizer": {"toy": ToyEmbedding}, "backbone": {"toy": ToyBackbone}, "readout": {"toy": ToyReadout}}


plugin.cdp_components = _toy_components

TOY_CONFIG = {
    "featurizer": {"name": "toy", "size": 4},
    "graph": {"name": "periodic"},
    "backbone": {"name": "toy", "size": 4, "layers": 2, "cutoff": 3.0},
    "readout": {"name": "toy"},
}


def toy_registry(tmp_path):
    import yaml

    from cdp.core.registry import Registry

    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"plugins": ["cdp.plugins.graphs.periodic"], "presets": {"toy": TOY_CONFIG}}))
    reg = Registry(path, entry_points=False)
    reg.register(plugin, "toy", "tests")
    return reg
