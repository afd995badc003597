"""Fast ChargE3Net convolution: the same function as :class:`E3Convolution`, computed in receiver blocks.

The uvu tensor product of one sender irrep x_i (mul × d_i) with the edge harmonics Y is linear in x_i with
a per-edge (d_i × K_i) matrix A_i(e) = Σ_j Y_j(e) · C_ij, where K_i stacks the outputs of every path that
reads x_i and C_ij holds the path-normalised Clebsch–Gordan coefficients.  So for a block of edges:

    A_i = Y @ C_i                      one GEMM over edges (tiny per edge: no channel dimension)
    T_i = bmm(x_i[src], A_i)           [E, mul_i, K_i]: every path of input i at once
    M_i = index_add(dst, T_i ⊙ w_i)    per-edge radial weights, broadcast over m_k, scattered

Edges are sorted by receiver and processed in blocks of whole receivers, so the per-edge intermediates
(radial weights, T_i) and the per-receiver aggregate exist for one block at a time: peak memory is set by
``edge_chunk``, not by the number of edges or receivers.  Parameters are those of :class:`E3Convolution`
(this class inherits them), so a state_dict loads into either backend.
"""

from __future__ import annotations

import bisect
from typing import List, Tuple

import torch
from e3nn import o3
from torch import Tensor

from cdp.plugins.backbones.chargee3net.conv import E3Convolution

DEFAULT_EDGE_CHUNK = 512


class FastE3Convolution(E3Convolution):
    """:class:`E3Convolution` with the tensor product, weighting and scatter fused per receiver block."""

    def __init__(self, *args, edge_chunk: int = DEFAULT_EDGE_CHUNK, **kwargs):
        super().__init__(*args, **kwargs)
        self.edge_chunk = int(edge_chunk)
        sender_slices = self.irreps_sender.slices()
        sh_slices = self.irreps_sh.slices()
        mid_slices = self.irreps_mid.slices()
        by_input: dict = {}
        w_start = 0
        for ins in self.tp.instructions:
            numel = ins.path_shape[0] if ins.has_weight else 0
            by_input.setdefault(ins.i_in1, []).append((ins, w_start))
            w_start += numel
        if w_start != self.tp.weight_numel:
            raise RuntimeError("fast convolution: unexpected tensor-product weight layout")

        # per sender irrep i: its paths ordered by output dimension d_k, so the radial weights of the paths
        # sharing a d_k broadcast over m_k as one [E, mul, n_paths, 1] view (no gather, no expansion)
        self.blocks: List[Tuple[int, int, int, int, List[Tuple[int, int, int, int]]]] = []
        agg_offset = 0
        w_offset = 0
        mid_perm = torch.empty(self.irreps_mid.dim, dtype=torch.long)
        cgs: List[Tensor] = []
        w_perm = torch.empty(self.tp.weight_numel, dtype=torch.long)
        for n, i in enumerate(sorted(by_input)):
            mul, ir_in = self.irreps_sender[i]
            paths = sorted(by_input[i], key=lambda pw: self.irreps_mid[pw[0].i_out].ir.dim)
            k_total = sum(self.irreps_mid[ins.i_out].ir.dim for ins, _ in paths)
            cg = torch.zeros(self.irreps_sh.dim, k_total, ir_in.dim, dtype=torch.float64)
            groups: List[Tuple[int, int, int, int]] = []  # (K offset, n paths, d_k, weight column offset)
            k_off = 0
            for d_k in sorted({self.irreps_mid[ins.i_out].ir.dim for ins, _ in paths}):
                group = [(ins, ws) for ins, ws in paths if self.irreps_mid[ins.i_out].ir.dim == d_k]
                groups.append((k_off, len(group), d_k, w_offset))
                for g, (ins, ws) in enumerate(group):
                    ir_sh = self.irreps_sh[ins.i_in2].ir
                    ir_out = self.irreps_mid[ins.i_out].ir
                    w3j = o3.wigner_3j(ir_in.l, ir_sh.l, ir_out.l, dtype=torch.float64)  # [d_i, d_j, d_k]
                    cg[sh_slices[ins.i_in2], k_off : k_off + d_k, :] = ins.path_weight * w3j.permute(1, 2, 0)
                    u = torch.arange(mul)
                    # weight column (g, u) of this group ← fc output ws + u
                    w_perm[w_offset + g * mul + u] = ws + u
                    # mid block of this path, layout (u, m_k) ← aggregate column (k_off + m_k)*mul + u
                    m = torch.arange(d_k)[None, :]
                    mid_perm[mid_slices[ins.i_out]] = (agg_offset + (k_off + m) * mul + u[:, None]).reshape(-1)
                    k_off += d_k
                w_offset += mul * len(group)
            cgs.append(cg.reshape(self.irreps_sh.dim, k_total * ir_in.dim))
            self.blocks.append((sender_slices[i].start, mul, ir_in.dim, k_total, groups))
            agg_offset += mul * k_total
        self.agg_dim = agg_offset
        self.register_buffer("mid_perm", mid_perm, persistent=False)
        self.register_buffer("w_perm", w_perm, persistent=False)
        # coefficients kept in float64 (not buffers, so a float32 round trip cannot truncate them);
        # cast once per (dtype, device) on first use
        self._cg64 = cgs
        self._cg_cache: dict = {}

    def _cg(self, like: Tensor) -> List[Tensor]:
        key = (like.dtype, like.device)
        if key not in self._cg_cache:
            self._cg_cache[key] = [c.to(device=like.device, dtype=like.dtype) for c in self._cg64]
        return self._cg_cache[key]

    def bytes_per_edge(self, itemsize: int = 4) -> int:
        """Peak bytes of per-edge intermediates in one block (radial weights + largest T_i and its weighting)."""
        largest = max((mul * k for _, mul, _, k, _ in self.blocks), default=0)
        return itemsize * (self.tp.weight_numel + self.fc.hs[1] + 3 * largest + self.irreps_sh.dim)

    def bytes_per_receiver(self, itemsize: int = 4) -> int:
        """Bytes of the per-receiver aggregate (held for one block)."""
        return itemsize * (2 * self.agg_dim + self.irreps_out.dim)

    def _radial_weights(self, emb: Tensor) -> Tensor:
        """MLP(R_e) with the last layer's columns in block order (the same numbers as ``self.fc``)."""
        layers = list(self.fc)
        x = emb
        for layer in layers[:-1]:
            x = layer(x)
        last = layers[-1]
        w = last.weight.index_select(1, self.w_perm) / (last.h_in * last.var_in / last.var_out) ** 0.5
        return x @ w

    def _aggregate(self, h: List[Tensor], src: Tensor, dst: Tensor, sh: Tensor, emb: Tensor, num_receivers: int) -> Tensor:
        """Σ_{e→r} TP(h_src, Y_e; MLP(R_e)) for one block of edges, in the e3nn mid layout [R, mid]."""
        weight = self._radial_weights(emb)
        parts = []
        num_edges = src.shape[0]
        for n, ((start, mul, d_i, k_total, groups), cg) in enumerate(zip(self.blocks, self._cg(sh))):
            # channels last: x [E, d_i, mul], T = A x [E, K, mul], weights broadcast over m_k along mul
            x = h[n].index_select(0, src)
            a = (sh @ cg).view(num_edges, k_total, d_i)
            t = torch.bmm(a, x)
            for k_off, n_paths, d_k, w_off in groups:
                w = weight[:, w_off : w_off + mul * n_paths].view(num_edges, n_paths, 1, mul)
                t[:, k_off : k_off + n_paths * d_k].view(num_edges, n_paths, d_k, mul).mul_(w)
            agg = t.new_zeros((num_receivers, k_total * mul))
            parts.append(agg.index_add_(0, dst, t.view(num_edges, k_total * mul)))
        agg = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return agg.index_select(1, self.mid_perm)

    def forward(
        self,
        sender: Tensor,
        receiver: Tensor,
        edge_index: Tensor,
        edge_sh: Tensor,
        edge_embedding: Tensor,
    ) -> Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            # graph capture (export, tracing) records the plain e3nn form: same parameters, same function
            return super().forward(sender, receiver, edge_index, edge_sh, edge_embedding)
        num_receivers = receiver.shape[0]
        self_connection = self.sc(receiver)
        h = self.lin1(sender)
        # sender irreps channels last, [N, d_i, mul] per block, once per call (node level)
        h = [h[:, start : start + mul * d_i].view(-1, mul, d_i).transpose(1, 2).contiguous()
             for start, mul, d_i, _, _ in self.blocks]
        src, dst = edge_index[0], edge_index[1]
        if dst.numel() > 1 and not bool((dst[1:] >= dst[:-1]).all()):
            order = torch.argsort(dst, stable=True)
            src, dst = src[order], dst[order]
            edge_sh, edge_embedding = edge_sh[order], edge_embedding[order]
        ptr = torch.searchsorted(dst, torch.arange(num_receivers + 1, device=dst.device)).tolist()
        norm = 1.0 / self.num_neighbors**0.5
        mask = self.sc_mask.to(self_connection.dtype)
        outs = []
        r0 = 0
        while r0 < num_receivers:
            # the largest run of whole receivers holding at most edge_chunk edges (at least one receiver)
            r1 = max(r0 + 1, bisect.bisect_right(ptr, ptr[r0] + self.edge_chunk, lo=r0 + 1) - 1)
            r1 = min(r1, r0 + self.edge_chunk)  # receivers without edges count too (bounded aggregate)
            e0, e1 = ptr[r0], ptr[r1]
            agg = self._aggregate(h, src[e0:e1], dst[e0:e1] - r0, edge_sh[e0:e1], edge_embedding[e0:e1], r1 - r0) * norm
            conv = self.lin2(agg)
            angle = 0.1 * self.lin3(agg)
            sin = (1.0 - mask) + angle.sin() * mask
            outs.append(angle.cos() * self_connection[r0:r1] + sin * conv)
            r0 = r1
        if not outs:
            return self_connection.new_zeros((0, self.irreps_out.dim))
        return torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
