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
import copy
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Tuple

import torch
from e3nn import o3
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from cdp.nn.radial_table import MIN_INTERVALS, RadialTable
from cdp.plugins.backbones.chargee3net import native
from cdp.plugins.backbones.chargee3net.conv import E3Convolution

DEFAULT_EDGE_CHUNK = 512
LIN1_ROWS = 4096  # sender rows through lin1 at once when packing for the kernel
FEATURE_WINDOW = 65_536  # edges whose harmonics and embedding exist at once when computed from vectors
DENSE_MAX = 1 << 16  # training: an equivariant linear map with at most this many matrix entries runs as one GEMM
TABLE_MAX_INTERVALS = 2048  # a radial network needing more knots than this is not tabulated (kept as the MLP)
EdgeFeatures = Callable[[Tensor], Tuple[Tensor, Tensor]]
Radial = Callable[[Tensor], Tensor]  # per-edge radial input of a block → weights [E, width] in kernel layout
_pools: dict = {}


def capturing() -> bool:
    """True while TorchScript, tracing or torch.export/compile records the module."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


class _EdgeSlices:
    """(sh, embedding) of edges [e0, e1) from precomputed tensors."""

    def __init__(self, sh: Tensor, emb: Tensor):
        self.sh, self.emb = sh, emb

    def __call__(self, e0: int, e1: int) -> Tuple[Tensor, Tensor]:
        return self.sh[e0:e1], self.emb[e0:e1]


class _EdgeWindow:
    """(sh, embedding) of edges [e0, e1) computed from the edge vectors ``FEATURE_WINDOW`` edges at a time
    (blocks arrive in increasing order, so each edge's features are computed once)."""

    def __init__(self, vec: Tensor, features: EdgeFeatures):
        self.vec, self.features = vec, features
        self.start, self.stop = 0, -1  # no window yet: the first block always computes one
        self.sh = self.emb = vec

    def __call__(self, e0: int, e1: int) -> Tuple[Tensor, Tensor]:
        if not (self.start <= e0 and e1 <= self.stop):
            stop = min(self.vec.shape[0], e0 + max(FEATURE_WINDOW, e1 - e0))
            self.sh, self.emb = self.features(self.vec[e0:stop])
            self.start, self.stop = e0, stop
        return self.sh[e0 - self.start : e1 - self.start], self.emb[e0 - self.start : e1 - self.start]


def _pool(n: int) -> ThreadPoolExecutor:
    """A shared pool of ``n`` threads for kernel calls (ctypes releases the GIL)."""
    if n not in _pools:
        _pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cdp-uvu")
    return _pools[n]


def _receiver_bounds(ptr: List[int], num_edges: int, num_receivers: int) -> List[Tuple[int, int]]:
    """Edge ranges [a, b) for the kernel threads, cut at receiver boundaries (each owns whole rows of acc)."""
    threads = max(1, min(torch.get_num_threads(), num_receivers, num_edges // 32))
    if threads == 1:
        return [(0, num_edges)]
    cuts = [0]
    for t in range(1, threads):
        r = bisect.bisect_left(ptr, t * num_edges // threads)
        cuts.append(max(cuts[-1], ptr[min(r, len(ptr) - 1)]))
    cuts.append(num_edges)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def table_weights(table: RadialTable, r: Tensor) -> Tensor:
    """``table(r)`` [E, W] by Horner's rule in place (at most two [E, W] temporaries instead of [E, 4, W]).

    The same arithmetic as :func:`cdp.nn.radial_table.evaluate` except that the interval and the offset
    t in it come from r in float64: with float32 arithmetic r·inv_h (up to n) would round t by
    n·2⁻²⁴, a second rounding of r on top of the one the MLP sees."""
    coef = table.coef
    x = r.to(torch.float64) * table.inv_h
    i = torch.clamp(torch.floor(x), 0, coef.shape[0] - 1)
    t = (x - i).to(coef.dtype).unsqueeze(-1)
    i = i.long()
    out = coef[:, 3].index_select(0, i)
    tmp = torch.empty_like(out)
    for k in (2, 1, 0):
        out.mul_(t).add_(torch.index_select(coef[:, k], 0, i, out=tmp))
    return out


class DenseMap:
    """A linear map between irrep layouts whose matrix is built from a module's flat weight each call:
    ``D = (cat(weight, 0)[index] · coef).view(rows, cols)``, so ``x @ D`` is one GEMM with an ordinary
    autograd graph (the weight's gradient gathers back through ``index``).  For small maps under training,
    where the per-block operations of e3nn's Linear cost more in dispatch than in arithmetic.
    """

    def __init__(self, rows: int, cols: int, entries: List[Tuple[Tensor, Tensor, Tensor, Tensor]], numel: int):
        index = torch.full((rows * cols,), numel, dtype=torch.long)
        coef = torch.zeros(rows * cols, dtype=torch.float64)
        for r, c, w, k in entries:
            pos = r * cols + c
            if bool((index[pos] != numel).any()) or pos.unique().numel() != pos.numel():
                raise ValueError("overlapping entries")
            index[pos], coef[pos] = w, k
        self.rows, self.cols, self.index, self.coef64 = rows, cols, index, coef
        self._coef: dict = {}

    def matrix(self, weight: Tensor) -> Tensor:
        key = (weight.dtype, weight.device)
        if key not in self._coef:
            self._coef[key] = (self.index.to(weight.device), self.coef64.to(weight.device, weight.dtype))
        index, coef = self._coef[key]
        return (torch.cat([weight, weight.new_zeros(1)])[index] * coef).view(self.rows, self.cols)


def _linear_entries(lin: o3.Linear, scale: float = 1.0, channels_last_in: bool = False, col_map=None,
                    col_offset: int = 0):
    """(row, col, flat weight index, coefficient) per matrix entry of an e3nn Linear without biases, or None.

    Rows index the input in e3nn layout ([mul][d] per block) or channels-last ([d][mul]); columns index
    its output, remapped by ``col_map`` (output column → column, -1: dropped) and shifted by ``col_offset``."""
    entries = []
    flat = 0
    in_slices, out_slices = lin.irreps_in.slices(), lin.irreps_out.slices()
    for ins in lin.instructions:
        if ins.i_in < 0:
            return None
        mul_in, mul_out = ins.path_shape
        d = lin.irreps_in[ins.i_in].ir.dim
        u, w, m = torch.meshgrid(torch.arange(mul_in), torch.arange(mul_out), torch.arange(d), indexing="ij")
        u, w, m = u.reshape(-1), w.reshape(-1), m.reshape(-1)
        rows = in_slices[ins.i_in].start + (m * mul_in + u if channels_last_in else u * d + m)
        cols = out_slices[ins.i_out].start + w * d + m
        if col_map is not None:
            cols = col_map[cols]
            keep = cols >= 0
            u, w, rows, cols = u[keep], w[keep], rows[keep], cols[keep]
        entries.append((rows, cols + col_offset, flat + u * mul_out + w,
                        torch.full((rows.numel(),), float(ins.path_weight) * scale, dtype=torch.float64)))
        flat += mul_in * mul_out
    return entries


class FusedConvolution(torch.autograd.Function):
    """The fused kernel as an autograd function: (packed senders x, harmonics Y, radial weights w) → aggregate.

    Forward is :meth:`FastE3Convolution._kernel_forward`; backward is one pass of the backward kernel
    (``cdp_uvu_conv_backward_*``), giving dL/dx, dL/dY and dL/dw without per-edge tensor-product outputs.
    float32 and float64; the slack columns of w and of the aggregate carry zero gradient.
    """

    @staticmethod
    def forward(ctx, x, sh, weight, conv, src, dst, ptr, num_receivers):
        x, sh, weight = x.contiguous(), sh.contiguous(), weight.contiguous()
        src, dst = src.contiguous(), dst.contiguous()
        fn = native.entry(native.load(), weight.dtype)
        acc = conv._kernel_forward(fn, x, src, dst, sh, weight, ptr, num_receivers)
        ctx.save_for_backward(x, sh, weight, src, dst)
        ctx.conv, ctx.ptr = conv, ptr
        return acc

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, sh, weight, src, dst = ctx.saved_tensors
        gx, gsh, gw = ctx.conv._kernel_backward(grad, x, src, dst, sh, weight, ctx.ptr,
                                                ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return gx, gsh, gw, None, None, None, None, None


class FastE3Convolution(E3Convolution):
    """:class:`E3Convolution` with the tensor product, weighting and scatter fused per receiver block."""

    def __init__(self, *args, edge_chunk: int = DEFAULT_EDGE_CHUNK, **kwargs):
        super().__init__(*args, **kwargs)
        self.edge_chunk = int(edge_chunk)
        self.use_native = True  # the fused C kernels where they apply (CPU inference and training); False: PyTorch only
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
        # the kernel accumulates in the simplified mid irreps (lin2's input), each block channels-last
        # [d][mul_block]: a path's rows start at block start + its channel offset, stride mul_block
        simple = self.lin2.irreps_in
        simple_slices = simple.slices()
        native_at: dict = {}
        b = 0
        for k, (mul_k, ir_k) in enumerate(self.irreps_mid):
            while not (simple_slices[b].start <= mid_slices[k].start < simple_slices[b].stop):
                b += 1
            if simple[b].ir != ir_k:
                raise RuntimeError("fast convolution: lin2 input is not the simplified mid irreps")
            native_at[k] = (simple_slices[b].start + (mid_slices[k].start - simple_slices[b].start) // ir_k.dim,
                            simple[b].mul)
        paths_native: List[List[int]] = []  # per path: mul, d_k, x_off, w_off, acc_off, row stride, pairs
        pairs_native: List[List[int]] = []  # per (m_k, m_i) pair: m_k, m_i * padded mul, first term, end term
        terms_mj: List[int] = []
        terms_c: List[float] = []
        x_off = 0
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
                    coeff = ins.path_weight * w3j.permute(1, 2, 0)  # [d_j, d_k, d_i]
                    cg[sh_slices[ins.i_in2], k_off : k_off + d_k, :] = coeff
                    first_pair = len(pairs_native)
                    for m_k in range(d_k):
                        for m_i in range(ir_in.dim):
                            nz = [(m_j, float(coeff[m_j, m_k, m_i])) for m_j in range(coeff.shape[0])
                                  if abs(float(coeff[m_j, m_k, m_i])) > 1e-12]
                            if nz:
                                pairs_native.append([m_k, m_i * native.padded(mul), len(terms_mj), len(terms_mj) + len(nz)])
                                terms_mj.extend(sh_slices[ins.i_in2].start + m_j for m_j, _ in nz)
                                terms_c.extend(c for _, c in nz)
                    paths_native.append([mul, d_k, x_off, w_offset + g * mul, *native_at[ins.i_out],
                                         first_pair, len(pairs_native)])
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
            x_off += native.padded(mul) * ir_in.dim
        self.agg_dim = agg_offset
        # sparse plan of the fused kernel (native.py); int32 tables, coefficients kept in float64
        self._plan_paths = torch.tensor(paths_native, dtype=torch.int32).reshape(-1, 8)
        self._plan_pairs = torch.tensor(pairs_native, dtype=torch.int32).reshape(-1, 4)
        self._plan_mj = torch.tensor(terms_mj, dtype=torch.int32)
        self._plan_c64 = torch.tensor(terms_c, dtype=torch.float64)
        self._lin2_plan = self._linear_plan(self.lin2)
        self._lin3_plan = self._linear_plan(self.lin3)
        self.register_buffer("mid_perm", mid_perm, persistent=False)
        self.register_buffer("w_perm", w_perm, persistent=False)
        # coefficients kept in float64 (not buffers, so a float32 round trip cannot truncate them);
        # cast once per (dtype, device) on first use
        self._cg64 = cgs
        self._cg_cache: dict = {}
        self._dense = self._dense_maps()

    def _dense_maps(self) -> dict:
        """Single-GEMM forms of lin1 + kernel packing, sc, and lin2/lin3 of the aggregate, where small
        (``DENSE_MAX`` entries); used under training only (inference keeps its own, unchanged, arithmetic)."""
        maps: dict = {}
        packed_width = sum(d_i * native.padded(mul) for _, mul, d_i, _, _ in self.blocks)
        col_map = torch.full((self.lin1.irreps_out.dim,), -1, dtype=torch.long)
        col = 0
        for start, mul, d_i, _, _ in self.blocks:
            u, m = torch.meshgrid(torch.arange(mul), torch.arange(d_i), indexing="ij")
            col_map[start + u * d_i + m] = col + m * native.padded(mul) + u
            col += d_i * native.padded(mul)
        acc_width = native.round_up(self.agg_dim + native.ACC_SLACK, 16)
        lin2_dim = self.lin2.irreps_out.dim
        specs = {
            "lin1": (self.lin1, self.lin1.irreps_in.dim, packed_width, lambda: _linear_entries(self.lin1, col_map=col_map)),
            "sc": (self.sc, self.sc.irreps_in.dim, self.sc.irreps_out.dim, lambda: _linear_entries(self.sc)),
        }
        for name, (lin, rows, cols, entries) in specs.items():
            if rows * cols <= DENSE_MAX:
                found = entries()
                if found is not None:
                    maps[name] = DenseMap(rows, cols, found, lin.weight.numel())
        if acc_width * (lin2_dim + 1) <= DENSE_MAX and self._lin2_plan is not None and self._lin3_plan is not None:
            # [lin2 | lin3] of the channels-last aggregate; the scales (1/√n, 0.1/√n) are applied to the product
            e2 = _linear_entries(self.lin2, channels_last_in=True)
            e3 = _linear_entries(self.lin3, channels_last_in=True, col_offset=lin2_dim)
            n2 = self.lin2.weight.numel()
            e3 = [(r, c, w + n2, k) for r, c, w, k in e3]
            maps["mix"] = DenseMap(acc_width, lin2_dim + 1, e2 + e3, n2 + self.lin3.weight.numel())
        return maps

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

    def _radial_weights(self, emb: Tensor, slack: int = 0, fold: bool = False) -> Tensor:
        """MLP(R_e) with the last layer's columns in block order (the same numbers as ``self.fc``).

        ``slack`` > 0 appends at least that many zero columns, up to a multiple of 16 (the kernel reads whole
        vectors past a row's last weight; MKL's GEMM runs ~1.7x faster on 64-byte multiple rows here).
        ``fold`` (training through the kernels): see below.
        """
        layers = list(self.fc)
        x = emb
        if fold and torch.is_grad_enabled() and all(hasattr(layer.act, "cst") for layer in layers[:-1]):
            # training: each hidden layer's output scale (the activation's normalising constant times
            # √var_out) moved into the next layer's weight, so no scaling pass over [E, hidden] either way
            scale = 1.0
            for layer in layers[:-1]:
                x = layer.act.f(x @ (layer.weight * (scale / (layer.h_in * layer.var_in) ** 0.5)))
                scale = (1.0 if layer.act._is_id else layer.act.cst) * layer.var_out**0.5
            return x @ (self._last_layer(x.dtype, slack) * scale)
        for layer in layers[:-1]:
            x = layer(x)
        return x @ self._last_layer(x.dtype, slack)

    # -- tabulated radial network (inference) -----------------------------------------------------------
    def radial_width(self) -> int:
        """Columns of the radial weights in kernel layout: W in block order, then ≥ ACC_SLACK zero columns."""
        return native.round_up(self.tp.weight_numel + native.ACC_SLACK, 16)

    def radial_function(self, basis: nn.Module) -> Callable[[Tensor], Tensor]:
        """r [K] float64 (Å) → ``fc(basis(r))`` [K, :meth:`radial_width`] in kernel layout, computed by float64
        copies of the radial network and of ``basis`` (the module embedding this convolution's edges)."""
        fc = copy.deepcopy(self.fc).to(device="cpu", dtype=torch.float64)
        emb = copy.deepcopy(basis).to(device="cpu", dtype=torch.float64)
        perm = self.w_perm.cpu()
        pad = self.radial_width() - self.tp.weight_numel

        def fn(r: Tensor) -> Tensor:
            return torch.nn.functional.pad(fc(emb(r)).index_select(1, perm), (0, pad))

        return fn

    def _radial_version(self, basis: nn.Module) -> tuple:
        """Identity and in-place version of every tensor the radial function reads (a table is stale when
        one changes: an optimiser step, ``load_state_dict``, ``.to()``)."""
        tensors = list(self.fc.parameters()) + list(basis.buffers()) + list(basis.parameters())
        return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)

    def radial_table(self, basis: nn.Module, dtype: torch.dtype, device: torch.device, rtol: float,
                     max_bytes: Optional[int] = None) -> Optional[RadialTable]:
        """The piecewise-cubic table of :meth:`radial_function` over [0, cutoff] (``rtol`` · max|w|, measured),
        stored in ``dtype`` on ``device``; built once per (dtype, device) and parameter version, never under
        autograd.  None (and the MLP is used) when the function needs more than ``TABLE_MAX_INTERVALS``
        knots, or a table larger than ``max_bytes``, or is not finite (e.g. a basis singular at r = 0).
        The build time, size and measured error are reported by ``extra_repr``."""
        key = (dtype, torch.device(device), max_bytes)
        version = self._radial_version(basis)
        tables = self.__dict__.setdefault("_radial_tables", {})  # plain dict: never part of the state_dict
        hit = tables.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        if any(v[0] != version for v in tables.values()):
            tables.clear()  # parameters changed: every stored table is stale
        t0 = time.perf_counter()
        row_bytes = 4 * self.radial_width() * torch.empty((), dtype=dtype).element_size()
        max_intervals = TABLE_MAX_INTERVALS
        if max_bytes is not None:
            fits = max_bytes // row_bytes
            max_intervals = min(max_intervals, 1 << (fits.bit_length() - 1)) if fits > 0 else 0
        table = None
        with torch.no_grad():
            try:
                if max_intervals < MIN_INTERVALS:
                    raise ValueError(f"{MIN_INTERVALS} intervals would exceed {max_bytes >> 10} KiB")
                fn = self.radial_function(basis)
                cutoff = float(basis.cutoff)
                if not bool(torch.isfinite(fn(torch.linspace(0.0, cutoff, 33, dtype=torch.float64))).all()):
                    raise ValueError("the radial network is not finite on [0, cutoff]")
                table = RadialTable.fit(fn, cutoff, rtol=rtol, dtype=torch.float64, max_intervals=max_intervals)
                table = table.to(device=device, dtype=dtype)
                scale = float(table.coef[:, 0].abs().max()) or 1.0
                report = (f"radial=table({table.num_intervals} intervals, {table.num_intervals * row_bytes >> 10} KiB, "
                          f"measured error {table.error / scale:.1e}·max|w| (rtol {rtol:.1e}), "
                          f"built in {time.perf_counter() - t0:.2f} s)")
            except ValueError as exc:
                capped = max_bytes is not None and max_intervals < TABLE_MAX_INTERVALS
                reason = (f"more than {max_intervals} intervals ({max_bytes >> 10} KiB) needed for rtol {rtol:.1e}"
                          if capped and "intervals would exceed" not in str(exc) else str(exc))
                report = f"radial=mlp (not tabulated: {reason})"
        self.__dict__["_radial_report"] = report
        tables[key] = (version, table)
        return table

    def drop_radial_tables(self) -> None:
        """Forget every radial table (rebuilt on the next inference that asks for one)."""
        self.__dict__.pop("_radial_tables", None)

    def extra_repr(self) -> str:
        return self.__dict__.get("_radial_report", "")

    def _last_layer(self, dtype: torch.dtype, slack: int) -> Tensor:
        """The radial MLP's last weight, columns in block order, scaled, zero-padded; cached for inference."""
        last = list(self.fc)[-1]
        key = (last.weight.data_ptr(), last.weight._version, dtype, last.weight.requires_grad)
        cached = self._cg_cache.get(("radial", slack))
        if cached is not None and cached[0] == key and not torch.is_grad_enabled():
            return cached[1]
        w = last.weight.index_select(1, self.w_perm) / (last.h_in * last.var_in / last.var_out) ** 0.5
        if slack:
            w = torch.nn.functional.pad(w, (0, native.round_up(w.shape[1] + slack, 16) - w.shape[1]))
        if not torch.is_grad_enabled():
            self._cg_cache[("radial", slack)] = (key, w)
        return w

    def _aggregate(self, h: List[Tensor], src: Tensor, dst: Tensor, sh: Tensor, weight: Tensor, num_receivers: int) -> Tensor:
        """Σ_{e→r} TP(h_src, Y_e; w_e) for one block of edges, in the e3nn mid layout [R, mid].

        ``weight``: the block's radial weights [E, ≥ W] in block order (:meth:`_radial_weights` or a table)."""
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

    def _plan(self, like: Tensor) -> tuple:
        """Kernel tables (paths, pairs, m_j, coefficients in ``like``'s dtype), cached per dtype."""
        key = ("plan", like.dtype)
        if key not in self._cg_cache:
            self._cg_cache[key] = (self._plan_paths.contiguous(), self._plan_pairs.contiguous(),
                                   self._plan_mj.contiguous(), self._plan_c64.to(like.dtype).contiguous())
        return self._cg_cache[key]

    def _native_fn(self, *tensors: Tensor):
        """The fused kernel entry for these inputs, or None (non-CPU, other dtype, no compiler); under autograd
        the kernel runs through :class:`FusedConvolution`, whose backward is a fused kernel too."""
        if not self.use_native or tensors[0].device.type != "cpu":
            return None
        if self._plan_paths.numel() == 0 or int(self._plan_paths[:, 0].max()) > native.MAX_MUL:
            return None
        if self._lin2_plan is None or self._lin3_plan is None:
            return None  # biased linears are not folded into the channels-last form
        if not (isinstance(self.lin2, o3.Linear) and isinstance(self.lin3, o3.Linear)):
            return None  # e3nn's export compilation replaced them (traced or scripted copies)
        lib = native.load()
        return None if lib is None else native.entry(lib, tensors[0].dtype)

    def _aggregate_native(self, fn, x: Tensor, src: Tensor, dst: Tensor, sh: Tensor, weight: Tensor,
                          ptr: List[int], num_receivers: int) -> Tensor:
        """:meth:`_aggregate` through the fused C kernel: no per-edge tensor-product output is written.

        ``weight``: [E, :meth:`radial_width`] radial weights in kernel layout (zero slack columns).
        Under autograd the kernel runs as :class:`FusedConvolution` (gradients for the packed senders,
        the harmonics and the radial weights from the backward kernel)."""
        if torch.is_grad_enabled() and (x.requires_grad or sh.requires_grad or weight.requires_grad):
            return FusedConvolution.apply(x, sh, weight, self, src, dst, ptr, num_receivers)
        return self._kernel_forward(fn, x, src, dst, sh, weight, ptr, num_receivers)

    def _kernel_forward(self, fn, x: Tensor, src: Tensor, dst: Tensor, sh: Tensor, weight: Tensor,
                        ptr: List[int], num_receivers: int) -> Tensor:
        """The fused kernel's aggregate [R, agg_dim + slack], channels-last per mid block (see module doc)."""
        sh = sh.contiguous()
        # row slack for the kernel's whole-vector tails, rows a multiple of 64 bytes for the lin2 matmuls
        acc = weight.new_zeros((num_receivers, native.round_up(self.agg_dim + native.ACC_SLACK, 16)))
        paths, pairs, mj, coeff = self._plan(weight)
        src = src.contiguous()
        dst = dst.contiguous()
        args = (src.data_ptr(), dst.data_ptr(), sh.data_ptr(), sh.shape[1], weight.data_ptr(), weight.shape[1],
                x.data_ptr(), x.shape[1], acc.data_ptr(), acc.shape[1], paths.shape[0], paths.data_ptr(),
                pairs.data_ptr(), mj.data_ptr(), coeff.data_ptr())
        bounds = _receiver_bounds(ptr, src.shape[0], num_receivers)
        if len(bounds) == 1:
            status = [fn(bounds[0][0], bounds[0][1], *args)]
        else:
            status = list(_pool(len(bounds)).map(lambda ab: fn(ab[0], ab[1], *args), bounds))
        if any(status):
            raise RuntimeError("fused ChargE3Net kernel: multiplicity above its limit")
        return acc

    def _kernel_backward(self, grad: Tensor, x: Tensor, src: Tensor, dst: Tensor, sh: Tensor, weight: Tensor,
                         ptr: List[int], need_x: bool, need_sh: bool):
        """(dL/dx or None, dL/dsh or None, dL/dweight) of :meth:`_kernel_forward` from dL/dacc, by the
        backward kernel: one pass over the edges; each thread owns whole receivers and its own dL/dx."""
        fn = native.entry_backward(native.load(), weight.dtype)
        grad = grad.contiguous()
        gw = torch.zeros_like(weight)
        gsh = torch.zeros_like(sh) if need_sh else None
        paths, pairs, mj, coeff = self._plan(weight)
        bounds = _receiver_bounds(ptr, src.shape[0], grad.shape[0])
        gxs = [torch.zeros_like(x) for _ in bounds] if need_x else []

        def call(k: int) -> int:
            a, b = bounds[k]
            return fn(a, b, src.data_ptr(), dst.data_ptr(), sh.data_ptr(), sh.shape[1], weight.data_ptr(),
                      weight.shape[1], x.data_ptr(), x.shape[1], grad.data_ptr(), grad.shape[1],
                      gxs[k].data_ptr() if need_x else None, gw.data_ptr(),
                      gsh.data_ptr() if need_sh else None, paths.shape[0], paths.data_ptr(), pairs.data_ptr(),
                      mj.data_ptr(), coeff.data_ptr())

        if len(bounds) == 1:
            status = [call(0)]
        else:
            status = list(_pool(len(bounds)).map(call, range(len(bounds))))
        if any(status):
            raise RuntimeError("fused ChargE3Net backward kernel: multiplicity above its limit")
        gx = None
        if need_x:
            gx = gxs[0]
            for other in gxs[1:]:
                gx.add_(other)
        return gx, gsh, gw

    @staticmethod
    def _linear_plan(lin: o3.Linear):
        """(output dim, per weighted instruction of an e3nn Linear: (in start, out start, mul_in, mul_out,
        path_weight, d, flat weight offset)); None when it has biases (not folded into the channels-last form)."""
        plan = []
        flat = 0
        in_slices, out_slices = lin.irreps_in.slices(), lin.irreps_out.slices()
        for ins in lin.instructions:
            if ins.i_in < 0:
                return None
            mul_in, mul_out = ins.path_shape
            plan.append((in_slices[ins.i_in].start, out_slices[ins.i_out].start, mul_in, mul_out,
                         float(ins.path_weight), lin.irreps_in[ins.i_in].ir.dim, flat))
            flat += mul_in * mul_out
        return lin.irreps_out.dim, plan

    @staticmethod
    def _linear_channels_last(lin: o3.Linear, plan, acc: Tensor, scale: float) -> Tensor:
        """``lin(M)`` for M held channels-last per irrep block ([d][mul], as the kernel writes it), times scale.

        The same sum as e3nn's Linear (per instruction path_weight · x @ W) as one 2-D GEMM per block.
        """
        rows = acc.shape[0]
        out_dim, entries = plan
        out = acc.new_zeros((rows, out_dim))
        for in_start, out_start, mul_in, mul_out, path_weight, d, flat in entries:
            weight = lin.weight[flat : flat + mul_in * mul_out].view(mul_in, mul_out)
            # [rows·d, mul_in] (a compact copy) @ [mul_in, mul_out]
            x = acc.narrow(1, in_start, mul_in * d).reshape(rows * d, mul_in)
            y = torch.mm(x, weight * (path_weight * scale)).view(rows, d, mul_out)
            out.narrow(1, out_start, mul_out * d).view(rows, mul_out, d).add_(y.transpose(1, 2))
        return out

    def _mix_channels_last(self, acc: Tensor, norm: float) -> Tuple[Tensor, Tensor]:
        """(lin2(M)·norm, lin3(M)·0.1·norm) of a channels-last aggregate, for autograd: ``acc`` is split once
        into its irrep blocks (one gradient concatenation instead of a zero-filled full-size gradient per
        narrowed block) and each output is assembled by concatenation instead of in-place writes."""
        rows = acc.shape[0]
        in_slices = self.lin2.irreps_in.slices()
        widths = [sl.stop - sl.start for sl in in_slices]
        widths.append(acc.shape[1] - sum(widths))  # the kernel's slack columns
        pieces = {sl.start: piece for sl, piece in zip(in_slices, torch.split(acc, widths, dim=1))}
        outs = []
        for lin, (out_dim, entries), scale in ((self.lin2, self._lin2_plan, norm), (self.lin3, self._lin3_plan, 0.1 * norm)):
            by_out = {}
            for in_start, out_start, mul_in, mul_out, path_weight, d, flat in entries:
                weight = lin.weight[flat : flat + mul_in * mul_out].view(mul_in, mul_out)
                y = torch.mm(pieces[in_start].reshape(rows * d, mul_in), weight * (path_weight * scale))
                y = y.view(rows, d, mul_out).transpose(1, 2).reshape(rows, mul_out * d)
                by_out[out_start] = by_out[out_start] + y if out_start in by_out else y
            blocks = [by_out.get(sl.start) for sl in lin.irreps_out.slices()]
            blocks = [acc.new_zeros((rows, sl.stop - sl.start)) if b is None else b
                      for b, sl in zip(blocks, lin.irreps_out.slices())]
            outs.append(torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0])
        return outs[0], outs[1]

    def _packed_senders(self, sender: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        """lin1 of the sender rows (``rows``: a subset, in that order) in the kernel's layout, per irrep
        [m_i][mul padded to 8 with zeros]; computed in row blocks, so only the packed tensor is ever whole."""
        n = sender.shape[0] if rows is None else rows.shape[0]
        widths = [d_i * native.padded(mul) for _, mul, d_i, _, _ in self.blocks]
        packed = sender.new_zeros((n, sum(widths)))
        for r0 in range(0, n, LIN1_ROWS):
            r1 = min(n, r0 + LIN1_ROWS)
            lin1 = self.lin1(sender[r0:r1] if rows is None else sender.index_select(0, rows[r0:r1]))
            col = 0
            for (start, mul, d_i, _, _), width in zip(self.blocks, widths):
                target = packed[r0:r1, col : col + width].view(r1 - r0, d_i, width // d_i)[:, :, :mul]
                target.copy_(lin1[:, start : start + mul * d_i].view(r1 - r0, mul, d_i).transpose(1, 2))
                col += width
        return packed

    def forward(
        self,
        sender: Tensor,
        receiver: Tensor,
        edge_index: Tensor,
        edge_sh: Tensor,
        edge_embedding: Tensor,
    ) -> Tensor:
        if capturing():
            # graph capture (export, tracing) records the plain e3nn form: same parameters, same function
            return super().forward(sender, receiver, edge_index, edge_sh, edge_embedding)
        return self._blocks(sender, receiver, edge_index, (edge_sh, edge_embedding), None)

    def forward_from_vectors(
        self, sender: Tensor, receiver: Tensor, edge_index: Tensor, edge_vec: Tensor, features: EdgeFeatures,
        radial: Optional[Radial] = None,
    ) -> Tensor:
        """:meth:`forward` with ``(edge_sh, edge_radial) = features(edge_vec)`` computed a window of edges
        at a time: in inference the encoder never holds them for every atom edge.  Autograd and graph
        capture compute them once for all edges and take the plain path.  ``radial``: see :meth:`infer`."""
        if capturing() or torch.is_grad_enabled():
            return self.forward(sender, receiver, edge_index, *features(edge_vec))
        return self._blocks(sender, receiver, edge_index, (edge_vec,), features, radial)

    def infer(self, sender: Tensor, receiver: Tensor, edge_index: Tensor, edge_sh: Tensor, edge_radial: Tensor,
              radial: Optional[Radial] = None) -> Tensor:
        """:meth:`forward` for inference, with the radial weights ``radial(edge_radial)`` per block of edges.

        ``radial`` None: ``edge_radial`` is the embedding [E, num_basis] and the weights come from the MLP;
        otherwise ``edge_radial`` is what ``radial`` reads (for a table: the edge lengths [E], Å) and it
        returns [E, :meth:`radial_width`] weights in kernel layout (see :meth:`radial_table`)."""
        return self._blocks(sender, receiver, edge_index, (edge_sh, edge_radial), None, radial)

    def _blocks(self, sender: Tensor, receiver: Tensor, edge_index: Tensor, edge_data: Tuple[Tensor, ...],
                features, radial: Optional[Radial] = None) -> Tensor:
        """The convolution in blocks of whole receivers; ``edge_data`` is (sh, radial input), or (vectors,)
        with ``features`` turning vectors into (sh, radial input); ``radial`` as in :meth:`infer`."""
        num_receivers = receiver.shape[0]
        src, dst = edge_index[0], edge_index[1]
        used = None
        if 0 < src.numel() < sender.shape[0]:
            # a probe batch of a large cell: only the atoms it touches go through lin1 and the layout
            # change, so decoder time and memory per batch do not grow with the number of atoms
            used, src = torch.unique(src, return_inverse=True)
        fn = self._native_fn(sender, *edge_data)
        if radial is None:
            radial = (lambda e: self._radial_weights(e, slack=native.ACC_SLACK, fold=True)) if fn is not None \
                else self._radial_weights
        x_packed, h = None, []
        dense = self._dense if torch.is_grad_enabled() and fn is not None else {}
        if "lin1" in dense:
            x_packed = (sender if used is None else sender.index_select(0, used)) @ dense["lin1"].matrix(self.lin1.weight)
        elif fn is not None:
            x_packed = self._packed_senders(sender, used)
        else:
            if used is not None:
                sender = sender.index_select(0, used)
            lin1 = self.lin1(sender)
            # sender irreps channels last, [N, d_i, mul] per block, once per call (node level)
            h = [lin1[:, start : start + mul * d_i].view(-1, mul, d_i).transpose(1, 2).contiguous()
                 for start, mul, d_i, _, _ in self.blocks]
            del lin1
        if dst.numel() > 1 and not bool((dst[1:] >= dst[:-1]).all()):
            order = torch.argsort(dst, stable=True)
            src, dst = src[order], dst[order]
            edge_data = tuple(t[order] for t in edge_data)
        edge_block = _EdgeWindow(edge_data[0], features) if features is not None else _EdgeSlices(*edge_data)
        ptr = torch.searchsorted(dst, torch.arange(num_receivers + 1, device=dst.device)).tolist()
        norm = 1.0 / self.num_neighbors**0.5
        mask = self.sc_mask.to(sender.dtype)
        # inference writes block by block into the output, so no other per-receiver tensor exists for all
        # receivers at once; under autograd the blocks are concatenated (out= does not differentiate)
        track = torch.is_grad_enabled()
        out = sender.new_empty((0 if track else num_receivers, self.irreps_out.dim))
        blocks: List[Tensor] = []
        # training through the kernels keeps the radial weights and the aggregate for the backward pass
        # anyway, so blocking would save no memory: all receivers at once (fewer, larger operations)
        chunk = max(self.edge_chunk, src.shape[0], num_receivers) if track and fn is not None else self.edge_chunk
        r0 = 0
        while r0 < num_receivers:
            # the largest run of whole receivers holding at most edge_chunk edges (at least one receiver)
            r1 = max(r0 + 1, bisect.bisect_right(ptr, ptr[r0] + chunk, lo=r0 + 1) - 1)
            r1 = min(r1, r0 + chunk)  # receivers without edges count too (bounded aggregate)
            e0, e1 = ptr[r0], ptr[r1]
            sh, rad = edge_block(e0, e1)
            weight = radial(rad)
            del rad
            if fn is not None:
                local_ptr = [p - e0 for p in ptr[r0 : r1 + 1]]
                acc = self._aggregate_native(fn, x_packed, src[e0:e1], dst[e0:e1] - r0, sh, weight, local_ptr, r1 - r0)
                if "mix" in dense:
                    weight = torch.cat([self.lin2.weight, self.lin3.weight])
                    mixed = acc @ dense["mix"].matrix(weight)
                    conv, angle = mixed[:, :-1] * norm, mixed[:, -1:] * (0.1 * norm)
                elif track:
                    conv, angle = self._mix_channels_last(acc, norm)
                else:
                    conv = self._linear_channels_last(self.lin2, self._lin2_plan, acc, norm)
                    angle = self._linear_channels_last(self.lin3, self._lin3_plan, acc, 0.1 * norm)
            else:
                agg = self._aggregate(h, src[e0:e1], dst[e0:e1] - r0, sh, weight, r1 - r0) * norm
                conv = self.lin2(agg)
                angle = 0.1 * self.lin3(agg)
            sin = (1.0 - mask) + angle.sin() * mask
            if track:
                sc = receiver[r0:r1] @ dense["sc"].matrix(self.sc.weight) if "sc" in dense else self.sc(receiver[r0:r1])
                blocks.append(torch.addcmul(sin * conv, angle.cos(), sc))
            else:
                torch.addcmul(sin * conv, angle.cos(), self.sc(receiver[r0:r1]), out=out[r0:r1])
            r0 = r1
        if track and blocks:
            return torch.cat(blocks, dim=0) if len(blocks) > 1 else blocks[0]
        return out
