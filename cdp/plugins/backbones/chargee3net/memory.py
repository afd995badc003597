"""Memory model of a ChargE3Net decode call, so that a predictor can size probe batches for a byte budget."""

from __future__ import annotations

from typing import Tuple

import torch

from cdp.plugins.backbones.chargee3net.conv import E3Convolution
from cdp.plugins.backbones.chargee3net.fast_conv import FastE3Convolution

_GRAPH_BYTES_PER_EDGE = 2 * 8 + 3 * 8 + 2 * 8  # edge_index, integer offsets, sort permutation (int64)


def probe_memory(backbone, itemsize: int = 4, edges_per_probe: float = 30.0) -> Tuple[int, int]:
    """(fixed bytes, bytes per probe) of ``backbone.decode`` on a batch of probes.

    Per edge: graph arrays, edge vector, harmonics and radial basis (plus their receiver-sorted copies).
    Per probe: the probe state and the convolution/gate outputs of each layer.  The fast backend's
    per-edge intermediates live for one receiver block, a fixed cost set by its block size (``edge_chunk`` on
    the CPU, ``DEVICE_BLOCK_BYTES`` on a GPU: :meth:`FastE3Convolution.block_edges`); the e3nn
    backend materialises every path output, radial weight and gathered sender feature for all edges.
    """
    sh_dim = backbone.irreps_sh.dim
    per_edge = _GRAPH_BYTES_PER_EDGE + itemsize * 2 * (3 + sh_dim + backbone.num_basis)
    fixed = 0
    per_probe = 0
    for conv in backbone.probe_convs:
        per_probe += itemsize * 4 * conv.irreps_out.dim
        if isinstance(conv, FastE3Convolution):
            # the blocks on the device the convolution's parameters are on (a GPU's are sized by bytes)
            param = next(conv.parameters(), None)
            like = torch.empty(0, dtype=torch.float64 if itemsize == 8 else torch.float32,
                               device=param.device if param is not None else "cpu")
            chunk = conv.block_edges(like)
            receivers = min(chunk, conv.block_receivers(like))
            fixed = max(fixed, chunk * conv.bytes_per_edge(itemsize) + receivers * conv.bytes_per_receiver(itemsize))
        elif isinstance(conv, E3Convolution):
            width = conv.tp.weight_numel + conv.irreps_mid.dim + conv.irreps_sender.dim
            per_edge_conv = itemsize * 2 * width
            per_probe += itemsize * 2 * conv.irreps_mid.dim
            per_edge = max(per_edge, per_edge_conv + per_edge)
    return int(fixed), int(per_probe + per_edge * edges_per_probe)
