"""ChargE3Net in a capture-friendly form: the same function as the backbone, as a few dozen large ops per layer.

Graph capture (torch.export → ONNX, TorchScript tracing, AOTInductor) of e3nn's modules records every
tensor-product path and every Linear instruction as its own small operations (thousands of nodes): export
takes minutes and onnxruntime runs them one by one.  This module rebuilds a trained backbone from its
weights, once, before capture, into dense constants:

* ``lin1`` / ``sc`` / ``[lin2 | lin3]``: matrices read by applying each e3nn Linear to identity basis vectors
  (float64), with the layout changes, 1/√n and the 0.1 of lin3 folded in: lin1 one dense matrix per sender
  block (node level), sc one per irrep block, lin2/lin3 one [Σ mul_in, mul_out] GEMM per output irrep on the
  channels-last aggregate ([R·d, Σ mul_in], the m components as rows).
* the uvu tensor product, per sender irrep block i (mul × d_i), with C_i the path-normalised Clebsch–Gordan
  coefficients of every path reading x_i (K_i = Σ d_k outputs):

      A_i = Y @ C_i                               [E, K_i, d_i]   one GEMM over edges
      T_i = A_i @ x_i[src]                        [E, K_i, mul]   (a broadcast product when d_i = 1)
      M_i = index_add(dst, T_i · w_i[path(k)])    radial weights broadcast over m_k

* the radial weights w(r) = fc(basis(r)) of every convolution of a stage (atom or probe) from one
  piecewise-cubic table (:mod:`cdp.nn.radial_table`, fitted in float64): one floor, four gathers and a
  Horner evaluation replace the radial basis and the MLP (:class:`TabulatedRadial`; for large models the
  table stops before the MLP's last linear layer, which stays one GEMM per convolution).
* the gates as column selections and one product.

The forward passes use ``torch.mm`` / ``torch.bmm`` and ``narrow`` (what ``@`` and ``x[:, a:b]`` run in eager
mode): captured graphs then hold one node per product and per column range, with nothing to decompose.

:class:`CaptureBackbone` has the backbone's ``encode`` / ``decode``; build it with
:func:`capture_backbone` (or ``ChargE3NetBackbone.capture_form()``) after training, it is never trained.
"""

from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
from e3nn import o3
from torch import Tensor, nn

from cdp.nn.radial_table import RadialTable

DEFAULT_RTOL = 1e-6  # radial table error bound, relative to max |h| (float64): ~1e-7 of max |w|
#: a stage's composed table [n, 4, W] is stored when at most this large; a larger one is read from memory at
#: 4·W values per edge, slower than gathering the narrow hidden table and one GEMM per convolution (paper
#: size, 6,617 probe edges, eager dense decoder: 1.20 s composed (31.6 MB) vs 0.79 s; the demo's 0.4 MB
#: composed table: 0.015 s vs 0.024 s)
FULL_TABLE_BYTES = 4 << 20


def linear_matrix(lin: nn.Module, dim_in: int, rows: Optional[Tensor] = None, chunk: int = 2048) -> Tuple[Tensor, Tensor]:
    """(M [dim_in, dim_out], b [dim_out]) in float64 with ``lin(x) = x @ M + b`` for an equivariant linear map,
    read by applying a float64 copy of ``lin`` to the identity basis (and to zero, for its biases).

    ``rows``: only these rows of M (unit vectors ``rows``, in that order): M is then [len(rows), dim_out].
    The basis goes through ``lin`` ``chunk`` vectors at a time (no [dim_in, dim_in] identity for wide maps).
    """
    lin64 = copy.deepcopy(lin).to(torch.float64)
    rows = torch.arange(dim_in) if rows is None else rows
    with torch.no_grad():
        bias = lin64(torch.zeros(1, dim_in, dtype=torch.float64))
        parts = []
        for r0 in range(0, rows.numel(), chunk):
            r = rows[r0 : r0 + chunk]
            basis = torch.zeros(r.numel(), dim_in, dtype=torch.float64)
            basis[torch.arange(r.numel()), r] = 1.0
            parts.append(lin64(basis) - bias)
        matrix = torch.cat(parts) if parts else bias.new_zeros((0, bias.shape[1]))
    return matrix, bias[0]


def _maybe_bias(b: Tensor) -> Optional[Tensor]:
    return b if bool((b != 0).any()) else None


class DenseSelfConnection(nn.Module):
    """A convolution's self-connection ``sc`` as one matrix per irrep block (kron(W, 1_d) read off the e3nn
    Linear), and its mixing with the convolution: ``cos(angle) · sc(receiver) + sin · conv`` on the masked
    channels (:class:`E3Convolution`)."""

    def __init__(self, conv: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        sc, bsc = linear_matrix(conv.sc, conv.irreps_receiver.dim)
        self.sc_blocks: List[List[Tuple[int, int, int]]] = []  # per output block: (receiver start, stop, buffer)
        recv = conv.sc.irreps_in
        n_sc = 0
        for (mul_out, ir), sl in zip(conv.sc.irreps_out, conv.sc.irreps_out.slices()):
            terms = []
            for (_, ir_in), sl_in in zip(recv, recv.slices()):
                if ir_in == ir:
                    block = sc[sl_in, sl]
                    if bool((block != 0).any()):
                        self.register_buffer(f"sc_{n_sc}", block.to(dtype))
                        terms.append((sl_in.start, sl_in.stop, n_sc))
                        n_sc += 1
            self.sc_blocks.append(terms)
        bsc = _maybe_bias(bsc)
        self.register_buffer("sc_bias", None if bsc is None else bsc.to(dtype))
        self.register_buffer("sc_mask", conv.sc.output_mask.to(dtype))
        self.register_buffer("sc_unmasked", 1.0 - self.sc_mask)  # a constant, not a node of the captured graph
        self.sc_dims = [mul * ir.dim for mul, ir in conv.sc.irreps_out]

    def forward(self, receiver: Tensor) -> Tensor:
        num_receivers = receiver.shape[0]
        scs: List[Tensor] = []
        for terms, dim in zip(self.sc_blocks, self.sc_dims):
            y: Optional[Tensor] = None
            for r0, r1, k in terms:
                part = torch.mm(receiver.narrow(1, r0, r1 - r0), getattr(self, f"sc_{k}"))
                y = part if y is None else y + part
            scs.append(receiver.new_zeros((num_receivers, dim)) if y is None else y)
        sc = torch.cat(scs, dim=1) if len(scs) > 1 else scs[0]
        if self.sc_bias is not None:
            sc = sc + self.sc_bias
        return sc

    def mix(self, receiver: Tensor, angle: Tensor, conv: Tensor) -> Tensor:
        """The convolution's output from its receivers, lin3's angle [R, 1] and lin2's output [R, d_out]."""
        sin = self.sc_unmasked + angle.sin() * self.sc_mask
        return angle.cos() * self(receiver) + sin * conv


class DenseConvolution(nn.Module):
    """One :class:`E3Convolution` (or its fast subclass) as dense constants; see the module docstring.

    ``forward(sender [Ns, ds], receiver [R, dr], edge_index [2, E], sh [E, dY], weight [E, width])`` returns
    the pre-gate output [R, d_out]; ``weight`` holds this convolution's radial weights, the columns of
    ``conv.fc``'s output in :func:`_weight_order` (per sender block, per output irrep, per path, ``mul`` channels).
    ``keep`` (a set of ``o3.Irrep``): only the paths into mid irreps of those types; outputs that then get no
    path are zero (what the last probe layer needs when only some output channels are read).
    """

    def __init__(self, conv: nn.Module, dtype: torch.dtype = torch.float32, keep=None):
        super().__init__()
        sender, sh_irreps, mid = conv.irreps_sender, conv.irreps_sh, conv.irreps_mid
        sender_slices, sh_slices, mid_slices = sender.slices(), sh_irreps.slices(), mid.slices()
        norm = 1.0 / float(conv.num_neighbors) ** 0.5

        lin1, b1 = linear_matrix(conv.lin1, sender.dim)
        self.blocks: List[Tuple[int, int, int, int]] = []  # (mul, d_i, K_i, number of paths)
        # per output irrep: the aggregate column ranges holding it, [R, d, width] each, and their mid columns
        pieces: dict = {}
        for i, groups in _block_paths(conv, keep):
            mul, ir_in = sender[i]
            d_i = ir_in.dim
            k_total = sum(ir.dim * len(group) for ir, group in groups)
            cg = torch.zeros(sh_irreps.dim, k_total, d_i, dtype=torch.float64)
            kpath = torch.empty(k_total, dtype=torch.long)
            k_off, p = 0, 0
            for ir_out, group in groups:
                d_k, n = ir_out.dim, len(group)
                mid_rows = []
                for j, (ins, _) in enumerate(group):
                    w3j = o3.wigner_3j(ir_in.l, sh_irreps[ins.i_in2].ir.l, ir_out.l, dtype=torch.float64)  # [d_i, d_j, d_k]
                    # aggregate row k_off + m·n + j holds (path j, m_k = m): the group is [d_k][n·mul] per receiver
                    rows = k_off + torch.arange(d_k) * n + j
                    cg[sh_slices[ins.i_in2], rows, :] = ins.path_weight * w3j.permute(1, 2, 0)
                    kpath[rows] = p + j
                    mid_rows.append(mid_slices[ins.i_out].start + torch.arange(mul) * d_k)  # (u, m_k = 0)
                key = (ir_out.l, ir_out.p)
                pieces.setdefault(key, []).append((len(self.blocks), k_off * mul, (k_off + d_k * n) * mul, d_k, torch.cat(mid_rows)))
                k_off += d_k * n
                p += n
            # lin1 columns of this block in channels-last order (m_i, u)
            u, m = torch.arange(mul)[None, :], torch.arange(d_i)[:, None]
            cols = (sender_slices[i].start + u * d_i + m).reshape(-1)
            n_blk = len(self.blocks)
            self.register_buffer(f"cg_{n_blk}", cg.reshape(sh_irreps.dim, k_total * d_i).to(dtype))
            self.register_buffer(f"kpath_{n_blk}", kpath)
            self.register_buffer(f"lin1_{n_blk}", lin1[:, cols].to(dtype))
            b = _maybe_bias(b1[cols])
            self.register_buffer(f"lin1_bias_{n_blk}", None if b is None else b.to(dtype))
            self.blocks.append((mul, d_i, k_total, p))

        # lin2 (and lin3, one more column on the scalars) per output irrep: one [R·d, Σ width] @ [Σ width, mul_out]
        # GEMM on the channels-last aggregate pieces of that irrep, 1/√n and 0.1 folded in
        self.out_blocks: List[Tuple[int, int, Optional[int]]] = []  # (mul_out, d, index of its GEMM or None)
        self.gemm_pieces: List[List[Tuple[int, int, int]]] = []  # per GEMM: (block, column start, stop)
        self.angle_gemm: Optional[int] = None
        out_slices = conv.lin2.irreps_out.slices()
        needed = torch.cat([r for found in pieces.values() for *_, r in found]) if pieces else torch.zeros(0, dtype=torch.long)
        lin2, b2 = linear_matrix(conv.lin2, mid.dim, needed)  # only the (u, m = 0) rows the GEMMs read
        lin3, b3 = linear_matrix(conv.lin3, mid.dim, needed)
        at = torch.full((mid.dim,), -1, dtype=torch.long)
        at[needed] = torch.arange(needed.numel())
        for (mul_out, ir), sl in zip(conv.lin2.irreps_out, out_slices):
            found = pieces.get((ir.l, ir.p))
            if not found:
                self.out_blocks.append((mul_out, ir.dim, None))
                continue
            rows = at[torch.cat([r for *_, r in found])]
            w = lin2[rows][:, sl.start + torch.arange(mul_out) * ir.dim] * norm  # (u_out, m = 0) columns
            if ir.l == 0 and ir.p == 1 and self.angle_gemm is None:
                w = torch.cat([w, lin3[rows] * (0.1 * norm)], dim=1)
                self.angle_gemm = len(self.gemm_pieces)
            self.register_buffer(f"mix_{len(self.gemm_pieces)}", w.to(dtype))
            self.out_blocks.append((mul_out, ir.dim, len(self.gemm_pieces)))
            self.gemm_pieces.append([(b, c0, c1) for b, c0, c1, _, _ in found])
        bias = _maybe_bias(b2)
        self.register_buffer("lin2_bias", None if bias is None else (bias).to(dtype))
        self.angle_bias = float(0.1 * b3[0])
        self.width = sum(n * mul for mul, _, _, n in self.blocks)

        self.self_connection = DenseSelfConnection(conv, dtype)
        self.out_dim = int(conv.irreps_out.dim)

    def forward(self, sender: Tensor, receiver: Tensor, edge_index: Tensor, sh: Tensor, weight: Tensor) -> Tensor:
        src, dst = edge_index[0], edge_index[1]
        num_receivers = receiver.shape[0]
        aggs: List[Tensor] = []
        w_off = 0
        for n, (mul, d_i, k_total, n_paths) in enumerate(self.blocks):
            x = torch.mm(sender, getattr(self, f"lin1_{n}"))
            bias = getattr(self, f"lin1_bias_{n}")
            if bias is not None:
                x = x + bias
            x = x.index_select(0, src)  # [E, d_i·mul]
            a = torch.mm(sh, getattr(self, f"cg_{n}"))  # [E, K_i·d_i]
            w = weight.narrow(1, w_off, n_paths * mul).reshape(-1, n_paths, mul)
            w_off += n_paths * mul
            kpath = getattr(self, f"kpath_{n}")
            if d_i == 1:  # scalars: weight the P paths' channels first, then broadcast over the K_i outputs
                t = a.unsqueeze(2) * (x.unsqueeze(1) * w).index_select(1, kpath)  # [E, K_i, mul]
            else:
                t = torch.bmm(a.view(-1, k_total, d_i), x.view(-1, d_i, mul)) * w.index_select(1, kpath)
            aggs.append(t.new_zeros((num_receivers, k_total * mul)).index_add(0, dst, t.reshape(-1, k_total * mul)))
        outs: List[Tensor] = []
        angle: Optional[Tensor] = None
        for mul_out, d, g in self.out_blocks:
            if g is None:
                outs.append(receiver.new_zeros((num_receivers, mul_out * d)))
                continue
            pieces = self.gemm_pieces[g]
            if len(pieces) == 1:  # [R, d·w] → [R·d, w] (rows (r, m)), one reshape
                b, c0, c1 = pieces[0]
                x = aggs[b].narrow(1, c0, c1 - c0).reshape(-1, (c1 - c0) // d)
            else:
                x = torch.cat([aggs[b].narrow(1, c0, c1 - c0).reshape(-1, d, (c1 - c0) // d) for b, c0, c1 in pieces], dim=2)
                x = x.reshape(-1, x.shape[2])
            y = torch.mm(x, getattr(self, f"mix_{g}"))  # [R·d, mul_out (+1)]
            if g == self.angle_gemm:
                angle = y.narrow(1, mul_out, y.shape[1] - mul_out)
                y = y.narrow(1, 0, mul_out)
            outs.append(y.reshape(-1, d, mul_out).transpose(1, 2).reshape(-1, mul_out * d) if d > 1 else y)
        conv = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        if self.lin2_bias is not None:
            conv = conv + self.lin2_bias
        if angle is None:
            angle = receiver.new_zeros((num_receivers, 1))
        if self.angle_bias != 0.0:
            angle = angle + self.angle_bias
        return self.self_connection.mix(receiver, angle, conv)


def _block_paths(conv: nn.Module, keep=None):
    """Per sender irrep i with paths: (i, [(output irrep, [(instruction, weight offset), ...]), ...]), groups in
    sorted irrep order: the order of a DenseConvolution's aggregate rows and radial weight columns.  ``keep``
    (a set of ``o3.Irrep``): only the paths into mid irreps of those types."""
    by_input: dict = {}
    w_start = 0
    for ins in conv.tp.instructions:
        if ins.connection_mode != "uvu" or not ins.has_weight:
            raise ValueError("dense convolution: only weighted uvu paths are supported")
        if keep is None or conv.irreps_mid[ins.i_out].ir in keep:
            by_input.setdefault(ins.i_in1, []).append((ins, w_start))
        w_start += ins.path_shape[0]
    if w_start != conv.tp.weight_numel:
        raise ValueError("dense convolution: unexpected tensor-product weight layout")
    out = []
    for i in sorted(by_input):
        groups: dict = {}
        for ins, ws in by_input[i]:
            ir = conv.irreps_mid[ins.i_out].ir
            groups.setdefault((ir.l, ir.p), (ir, []))[1].append((ins, ws))
        out.append((i, [groups[k] for k in sorted(groups)]))
    return out


class DenseGate(nn.Module):
    """An e3nn Gate as column selections: ``cat[act(x[:, scalars]), x[:, gated] · act_g(x[:, gates])[:, owner] · c]``.

    The columns, owners and constants are read off the Gate itself (probing its split and product in float64).
    """

    def __init__(self, gate: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        dim = gate.irreps_in.dim
        with torch.no_grad():
            probe = torch.arange(dim, dtype=torch.float64).unsqueeze(0)
            scalars, gates, gated = (t[0].round().long() for t in gate.sc(probe))
            n_gates = gates.numel()
            if n_gates:
                ones = torch.ones(1, gated.numel(), dtype=torch.float64)
                coef = gate.mul(ones, torch.ones(1, n_gates, dtype=torch.float64))[0]
                owner = gate.mul(ones, torch.arange(1, n_gates + 1, dtype=torch.float64).unsqueeze(0))[0]
                owner = (owner / coef).round().long() - 1
        self.register_buffer("scalars", scalars)
        self.scalar_acts = self._segments(gate.act_scalars)
        self.gate_acts = self._segments(gate.act_gates) if n_gates else []
        self.has_gates = bool(n_gates)
        if n_gates:
            self.register_buffer("gates", gates)
            self.register_buffer("gated", gated)
            self.register_buffer("owner", owner)
            self.register_buffer("coef", None if bool((coef == 1).all()) else coef.to(dtype))

    @staticmethod
    def _segments(activation: nn.Module) -> List[Tuple[int, int, object, float]]:
        """(start, stop, f, constant) per e3nn Activation path (scalar irreps only)."""
        out = []
        start = 0
        for mul, (l, _), act in activation.paths:
            stop = start + mul * (2 * l + 1)
            if act is None:
                out.append((start, stop, None, 1.0))
            else:
                out.append((start, stop, act.f, 1.0 if act._is_id else float(act.cst)))
            start = stop
        return out

    @staticmethod
    def _act(x: Tensor, segments) -> Tensor:
        pieces = []
        for start, stop, f, cst in segments:
            y = x.narrow(1, start, stop - start) if len(segments) > 1 else x
            if f is not None:
                y = f(y)
                if cst != 1.0:
                    y = y * cst
            pieces.append(y)
        return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]

    def forward(self, x: Tensor) -> Tensor:
        s = self._act(x.index_select(1, self.scalars), self.scalar_acts)
        if not self.has_gates:
            return s
        g = self._act(x.index_select(1, self.gates), self.gate_acts).index_select(1, self.owner)
        gated = x.index_select(1, self.gated) * g
        if self.coef is not None:
            gated = gated * self.coef
        return torch.cat([s, gated], dim=1)


class TabulatedRadial(nn.Module):
    """Radial weights of every convolution of a stage from one piecewise-cubic table (module docstring).

    The table holds each convolution's MLP *before* its last (linear) layer, h(r), fitted in float64
    (:meth:`RadialTable.fit`); a cubic Hermite interpolant is linear in the tabulated values, so
    ``table_h(r) @ W_last`` is exactly the interpolant of ``w(r) = fc(basis(r))``.  When the composed table
    [n, 4, W] is small (``full_bytes`` at most :data:`FULL_TABLE_BYTES`) it is stored instead (``full``: no
    GEMM in the graph); otherwise the graph evaluates h and applies ``W_last`` per convolution.  Coefficients
    are held as four [n, ·] constants (four gathers and a Horner step, no [E, 4, ·] intermediate).

    forward(r [E] Å) → the stage's table rows [E, ·]; :meth:`weights` (rows, k) → convolution k's radial
    weights [E, W_k] in its DenseConvolution order.  ``error``: max |interpolated w − fc(basis(r))| at five
    points inside every interval and both ends (float64, absolute; ``scale`` = max |w| there); ``num_intervals``: n.
    """

    def __init__(self, convs, basis: nn.Module, cutoff: float, rtol: float = DEFAULT_RTOL,
                 dtype: torch.dtype = torch.float32, keeps: Optional[list] = None):
        super().__init__()
        basis64 = copy.deepcopy(basis).to(torch.float64)
        hidden, lasts = [], []
        for n, conv in enumerate(convs):
            layers = [copy.deepcopy(layer).to(torch.float64) for layer in conv.fc]
            hidden.append(layers[:-1])
            last = layers[-1]
            w = last.weight.detach() / (last.h_in * last.var_in / last.var_out) ** 0.5
            lasts.append(w.index_select(1, _weight_order(conv, keeps[n] if keeps else None)))

        def h_fn(r: Tensor) -> Tensor:
            emb = basis64(r)
            outs = []
            for layers in hidden:
                x = emb
                for layer in layers:
                    x = layer(x)
                outs.append(x)
            return torch.cat(outs, dim=1)

        with torch.no_grad():
            table = RadialTable.fit(h_fn, cutoff, rtol=rtol, dtype=torch.float64)
        widths_h = [w.shape[0] for w in lasts]
        widths = [w.shape[1] for w in lasts]
        n = table.num_intervals
        itemsize = torch.finfo(dtype).bits // 8
        self.full_bytes = n * 4 * sum(widths) * itemsize
        self.full = self.full_bytes <= FULL_TABLE_BYTES
        coef = table.coef.to(torch.float64)  # [n, 4, H]
        starts = [0]
        for wh in widths_h:
            starts.append(starts[-1] + wh)
        if self.full:  # compose once: [n, 4, H_k] @ [H_k, W_k] per convolution
            coef = torch.cat([coef[:, :, a:b] @ w for a, b, w in zip(starts[:-1], starts[1:], lasts)], dim=2)
            starts = [0]
            for w in widths:
                starts.append(starts[-1] + w)
        self.offsets = starts
        for k in range(4):
            self.register_buffer(f"c{k}", coef[:, k].contiguous().to(dtype))
        if not self.full:
            for k, w in enumerate(lasts):
                self.register_buffer(f"last_{k}", w.to(dtype))
        self.inv_h = float(table.inv_h)
        self.num_intervals = int(n)
        # the error on w itself, table rows (composed, or h then the last layers) against fc(basis(r)), at the
        # fit's probe points of every interval (and both ends), a few thousand lengths at a time
        frac = torch.tensor([0.125, 0.375, 0.5, 0.625, 0.875], dtype=torch.float64)
        r_all = ((torch.arange(n, dtype=torch.float64)[:, None] + frac) * (cutoff / n)).reshape(-1)
        r_all = torch.cat([r_all, torch.tensor([0.0, cutoff], dtype=torch.float64)])
        h_starts = [sum(widths_h[:k]) for k in range(len(lasts) + 1)]
        self.error = self.scale = 0.0
        with torch.no_grad():
            for r in torch.split(r_all, 2048):
                exact_h = h_fn(r)
                rows = self._rows([coef[:, k] for k in range(4)], r)
                for k, w in enumerate(lasts):
                    exact = exact_h[:, h_starts[k] : h_starts[k + 1]] @ w
                    approx = self._weights(rows, k, lasts)
                    self.error = max(self.error, float((approx - exact).abs().max()))
                    self.scale = max(self.scale, float(exact.abs().max()))

    def _rows(self, coef: List[Tensor], r: Tensor) -> Tensor:
        x = (r if r.dtype == coef[0].dtype else r.to(coef[0].dtype)) * self.inv_h  # no conversion node when equal
        i = torch.clamp(torch.floor(x), 0, self.num_intervals - 1)
        t = (x - i).unsqueeze(1)
        i = i.long()
        c0, c1, c2, c3 = (c.index_select(0, i) for c in coef)
        # Horner as multiply-adds (TorchScript runs them fused; torch.export decomposes them for ONNX)
        return torch.addcmul(c0, t, torch.addcmul(c1, t, torch.addcmul(c2, t, c3)))

    def _weights(self, rows: Tensor, k: int, lasts: Optional[List[Tensor]] = None) -> Tensor:
        part = rows.narrow(1, self.offsets[k], self.offsets[k + 1] - self.offsets[k])
        if self.full:
            return part
        return torch.mm(part, lasts[k] if lasts is not None else getattr(self, f"last_{k}"))

    def forward(self, r: Tensor) -> Tensor:
        return self._rows([getattr(self, f"c{k}") for k in range(4)], r)

    def weights(self, rows: Tensor, k: int) -> Tensor:
        """Convolution ``k``'s radial weights [E, W_k] from the stage's table rows (``forward``'s output)."""
        return self._weights(rows, k)


def _weight_order(conv: nn.Module, keep=None) -> Tensor:
    """fc output columns in a DenseConvolution's order (with the same ``keep``): per sender block, per output
    irrep group, per path, ``mul`` channels."""
    perm = []
    for i, groups in _block_paths(conv, keep):
        mul = conv.irreps_sender[i].mul
        for _, group in groups:
            for _, ws in group:
                perm.append(ws + torch.arange(mul))
    return torch.cat(perm)




class CaptureBackbone(nn.Module):
    """A trained ChargE3Net backbone's ``encode`` / ``decode`` in the dense form (module docstring).

    Same inputs, outputs and units as the backbone: encode(x [N, 119], edge_index [2, E], edge_vec [E, 3] Å)
    → per-layer atom features; decode(atom_layers, probe edge_index [2, Ep], probe edge_vec [Ep, 3], M) →
    [M, d_out].  Holds constants only (no parameters); ``table_error`` reports the radial tables' measured
    error on the radial weights (float64), relative to their largest magnitude.
    """

    def __init__(self, backbone: nn.Module, rtol: float = DEFAULT_RTOL, dtype: Optional[torch.dtype] = None,
                 probe_convs: Optional[nn.ModuleList] = None, custom_ops: Optional[dict] = None,
                 translations: Optional[dict] = None, torch_ops: Optional[dict] = None):
        super().__init__()
        dtype = dtype or next(backbone.parameters()).dtype
        self.irreps_sh = backbone.irreps_sh
        self.cutoff = float(backbone.cutoff)
        # probe_convs given (kernel_capture: --ops cdp): modules called with the edge lengths instead of
        # the stage's tabulated weights, their operators described by custom_ops / translations (ONNX) and
        # torch_ops (TorchScript)
        self.ops = "standard" if probe_convs is None else "cdp"
        self.custom_ops, self.translations, self.torch_ops = custom_ops, dict(translations or {}), torch_ops
        self.atom_convs = nn.ModuleList(DenseConvolution(c, dtype) for c in backbone.atom_convs)
        # the last probe layer: only the mid irreps the read outputs need (Backbone.read_only)
        keep = backbone._last_layer_keep()
        keeps = [None] * len(backbone.probe_convs)
        if keep is not None and keeps:
            keeps[-1] = backbone.probe_convs[-1].mid_types(keep)
        self.probe_convs = probe_convs if probe_convs is not None else nn.ModuleList(
            DenseConvolution(c, dtype, k) for c, k in zip(backbone.probe_convs, keeps))
        self.atom_gates = nn.ModuleList(DenseGate(g, dtype) for g in backbone.atom_gates)
        self.probe_gates = nn.ModuleList(DenseGate(g, dtype) for g in backbone.probe_gates)
        self.atom_radial = TabulatedRadial(backbone.atom_convs, backbone.atom_basis, self.cutoff, rtol, dtype)
        self.probe_radial = TabulatedRadial(backbone.probe_convs, backbone.probe_basis, self.cutoff, rtol, dtype,
                                            keeps if probe_convs is None else None)
        self.table_error = max(t.error / max(t.scale, 1e-300) for t in (self.atom_radial, self.probe_radial))

    def describe(self) -> dict:
        """What was captured, for an export's metadata: the form and each stage's radial table."""
        tables = {}
        for stage, t in (("atom", self.atom_radial), ("probe", self.probe_radial)):
            tables[stage] = {"intervals": t.num_intervals, "composed": bool(t.full),
                             "max_abs_error": t.error, "max_rel_error": t.error / max(t.scale, 1e-300)}
        out = {"form": "dense ChargE3Net (cdp.plugins.backbones.chargee3net.dense_conv)", "radial_tables": tables}
        if self.custom_ops:
            out["form"] += "; probe convolutions: " + ", ".join(f"{self.custom_ops['domain']}.{o}" for o in self.custom_ops["ops"])
            out["custom_ops"] = dict(self.custom_ops)
        if self.torch_ops:
            out["torch_ops"] = dict(self.torch_ops)
        return out

    def onnx_translations(self) -> dict:
        """ONNX translations of the custom operators this form calls (torch.onnx ``custom_translation_table``)."""
        return dict(self.translations)

    def _edge_features(self, edge_vec: Tensor) -> Tuple[Tensor, Tensor]:
        sh = o3.spherical_harmonics(self.irreps_sh, edge_vec, normalize=True, normalization="component")
        return sh, edge_vec.norm(dim=1)

    def encode(self, x: Tensor, edge_index: Tensor, edge_vec: Tensor) -> List[Tensor]:
        sh, r = self._edge_features(edge_vec)
        weights = self.atom_radial(r)
        layers: List[Tensor] = []
        h = x
        for n, (conv, gate) in enumerate(zip(self.atom_convs, self.atom_gates)):
            w = self.atom_radial.weights(weights, n)
            h = gate(conv(h, h, edge_index, sh, w))
            layers.append(h)
        return layers

    def decode(self, atom_layers: List[Tensor], edge_index: Tensor, edge_vec: Tensor, num_probes: int) -> Tensor:
        sh, r = self._edge_features(edge_vec)
        weights = self.probe_radial(r) if self.ops == "standard" else r
        p = edge_vec.new_zeros((num_probes, 1))
        for n, (conv, gate) in enumerate(zip(self.probe_convs, self.probe_gates)):
            w = self.probe_radial.weights(weights, n) if self.ops == "standard" else r
            p = gate(conv(atom_layers[n], p, edge_index, sh, w))
        return p


def capture_backbone(backbone: nn.Module, rtol: float = DEFAULT_RTOL) -> CaptureBackbone:
    """:class:`CaptureBackbone` of a (trained) ChargE3Net backbone, in its parameters' dtype, eval mode."""
    return CaptureBackbone(backbone, rtol=rtol).eval()
