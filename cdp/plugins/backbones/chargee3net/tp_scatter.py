"""The tensor-product–scatter seam of a ChargE3Net convolution and its interchangeable implementations.

A convolution (:class:`~cdp.plugins.backbones.chargee3net.conv.E3Convolution`) computes per receiver r

    M[r] = Σ_{e : dst_e = r} TP(h[src_e], Y_e; w_e)       (its e3nn ``TensorProduct``, channel-wise "uvu")

from the senders after lin1 (h), the edge harmonics Y and the radial weights w, then mixes M with its own
linears.  Everything between h and M sits behind this seam.  Implementations hold no parameters (the
convolution keeps them all, so every state_dict loads into every implementation) and compute the same
function; they differ in how:

    E3nnTPScatter     e3nn's TensorProduct on every edge, then index_add: the oracle; graph capture
    BlockedTPScatter  PyTorch: per sender irrep A = Y @ C (one GEMM for all of its paths), bmm with the
                      senders, radial weights broadcast over m_k, index_add — no per-path loop
    NativeTPScatter   the fused C kernel (``native.py``, kernels/uvu_conv.c): CG contraction × weight ×
                      scatter without any per-edge output; its backward is a second kernel

Interface (:class:`TPScatter`)
------------------------------
``layout``
    ``"e3nn"``: M in e3nn's order of ``irreps_mid`` [R, mid dim].  ``"channels_last"``: M per block of
    the simplified mid irreps (lin2's input irreps, :attr:`UvuPlan.mid_simple`), each block stored
    [d][mul], then zero slack columns: [R, :attr:`UvuPlan.acc_width`] (what the kernel writes).
``senders(h)``
    h [N, sender dim] (lin1's output, e3nn layout) → the implementation's sender operand: h itself
    (``"e3nn"``) or :attr:`UvuPlan.packed_width` columns, each sender irrep [m_i][mul padded to 8].
``__call__(x, sh, weight, src, dst, ptr, num_receivers)`` → M
    x: ``senders(h)`` (rows indexed by src); sh [E, sh dim] (component normalisation); weight [≥ E, ≥ W]:
    row e < E holds edge e's TensorProduct weights in e3nn's order (the radial MLP's output), and at
    least ACC_SLACK finite values must follow each edge's last weight — zero columns
    (:meth:`UvuPlan.radial_width`) or one extra row (``FastE3Convolution.radial_weights``), since the
    kernel reads whole 8-value vectors; src, dst [E] int64 with dst sorted ascending;
    ptr: R + 1 edge offsets of the receivers (a list of int, or None where the implementation does not
    need it); num_receivers R.  Gradients flow to x, sh and weight under autograd.

A capture-friendly implementation (torch.export / ONNX: no data-dependent Python, no ctypes) subclasses
:class:`TPScatter` with one of the two layouts and is installed with :func:`set_capture_implementation`
(a factory ``(plan, tp) → TPScatter``); :func:`select` returns it for mode ``"capture"`` and the
convolution then records the whole graph through it in one call (``ptr`` None, edges in any order,
weight [E, W] without slack).  Until one is installed, capture records :class:`E3nnTPScatter`, i.e.
e3nn's own convolution.

Mode
----
Whether the model is being recorded (``"capture"``), differentiated (``"autograd"``) or run for
inference (``"inference"``) is decided in one place, :func:`mode`; the convolution asks once per call and
passes the answer down.
"""

from __future__ import annotations

import bisect
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Callable, List, Optional, Tuple

import torch
from e3nn import o3
from torch import Tensor
from torch.autograd.function import once_differentiable

from cdp.plugins.backbones.chargee3net import native

MODES = ("capture", "autograd", "inference")
_pools: dict = {}


def capturing() -> bool:
    """True while TorchScript, tracing or torch.export/compile records the module."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def mode() -> str:
    """``"capture"`` (graph capture records the module), ``"autograd"`` (gradients are being recorded) or
    ``"inference"``.  Capture is tested first: under torch.export ``is_grad_enabled`` is not meaningful."""
    if capturing():
        return "capture"
    return "autograd" if torch.is_grad_enabled() else "inference"


def loaded_library():
    """The kernel library if it has been loaded (``native.load()``, called when a model is set up), else
    None; never compiles, so no forward pass pays for (or fails on) a build."""
    loaded = getattr(native, "loaded", None)
    if loaded is not None:
        return loaded()
    return native._state.get("lib")  # until native.loaded() exists: the same cache, read without loading


class UvuPlan:
    """Index tables of one convolution's uvu tensor product, shared by the implementations.

    Built from the e3nn ``TensorProduct`` and lin2's input irreps only (public attributes: instructions,
    irreps, ``wigner_3j``).  Per sender irrep i, its paths ordered by output dimension d_k:
    ``blocks[n] = (start of i in h, mul, d_i, K_i = Σ d_k, groups)``, ``groups`` = (K offset, paths,
    d_k, weight columns [paths·mul] in e3nn order); ``cg[n]`` [sh dim, K_i·d_i] float64.
    """

    def __init__(self, tp: o3.TensorProduct, irreps_mid_simple: o3.Irreps):
        self.irreps_sender, self.irreps_sh, self.irreps_mid = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        self.mid_simple = o3.Irreps(irreps_mid_simple)
        self.weight_numel = tp.weight_numel
        sender_slices, sh_slices = self.irreps_sender.slices(), self.irreps_sh.slices()
        mid_slices, simple_slices = self.irreps_mid.slices(), self.mid_simple.slices()
        by_input: dict = {}
        w_start = 0
        for ins in tp.instructions:
            if ins.connection_mode != "uvu" or not ins.has_weight:
                raise ValueError("tensor-product seam: only weighted uvu paths")
            by_input.setdefault(ins.i_in1, []).append((ins, w_start))
            w_start += ins.path_shape[0]
        if w_start != tp.weight_numel:
            raise ValueError("tensor-product seam: unexpected weight layout")
        # where each mid block sits in the channels-last layout: (first column of channel 0, row stride)
        channels_last: dict = {}
        b = 0
        for k, (mul_k, ir_k) in enumerate(self.irreps_mid):
            while not (simple_slices[b].start <= mid_slices[k].start < simple_slices[b].stop):
                b += 1
            if self.mid_simple[b].ir != ir_k:
                raise ValueError("tensor-product seam: lin2's input is not the simplified mid irreps")
            channels_last[k] = (simple_slices[b].start + (mid_slices[k].start - simple_slices[b].start) // ir_k.dim,
                                self.mid_simple[b].mul)
        self.blocks: List[Tuple[int, int, int, int, list]] = []
        self.cg: List[Tensor] = []
        paths_native: List[List[int]] = []  # per path: mul, d_k, x_off, w_off, acc_off, row stride, pairs
        pairs_native: List[List[int]] = []  # per (m_k, m_i) pair: m_k, m_i · padded mul, first term, end term
        terms_mj: List[int] = []
        terms_c: List[float] = []
        blocked_cols = []  # per sender irrep: channels-last column of each (k, u) of its [K_i, mul] output
        x_off = 0
        for i in sorted(by_input):
            mul, ir_in = self.irreps_sender[i]
            paths = sorted(by_input[i], key=lambda pw: self.irreps_mid[pw[0].i_out].ir.dim)
            k_total = sum(self.irreps_mid[ins.i_out].ir.dim for ins, _ in paths)
            cg = torch.zeros(self.irreps_sh.dim, k_total, ir_in.dim, dtype=torch.float64)
            cols = torch.empty(k_total, mul, dtype=torch.long)
            groups = []
            k_off = 0
            for d_k in sorted({self.irreps_mid[ins.i_out].ir.dim for ins, _ in paths}):
                group = [(ins, ws) for ins, ws in paths if self.irreps_mid[ins.i_out].ir.dim == d_k]
                w_cols = torch.cat([torch.arange(ws, ws + mul) for _, ws in group])
                groups.append((k_off, len(group), d_k, w_cols))
                for ins, ws in group:
                    ir_sh, ir_out = self.irreps_sh[ins.i_in2].ir, self.irreps_mid[ins.i_out].ir
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
                    start, stride = channels_last[ins.i_out]
                    paths_native.append([mul, d_k, x_off, ws, start, stride, first_pair, len(pairs_native)])
                    cols[k_off : k_off + d_k] = start + torch.arange(d_k)[:, None] * stride + torch.arange(mul)[None, :]
                    k_off += d_k
            self.cg.append(cg.reshape(self.irreps_sh.dim, k_total * ir_in.dim))
            self.blocks.append((sender_slices[i].start, mul, ir_in.dim, k_total, groups))
            blocked_cols.append(cols.reshape(-1))
            x_off += native.padded(mul) * ir_in.dim
        self.packed_width = x_off
        self.acc_width = native.round_up(self.mid_simple.dim + native.ACC_SLACK, 16)
        # per path: (first column, width d·mul) of its mid_simple block in a channels-last row; a
        # "blocks" aggregate holds block b as [R, d_b, mul_b] starting at R · (first column of b)
        starts = [sl.start for sl in simple_slices]
        path_block = []
        for path in paths_native:
            b = bisect.bisect_right(starts, path[4]) - 1
            path_block.append([starts[b], simple_slices[b].stop - starts[b]])
        self.path_block = torch.tensor(path_block, dtype=torch.int64).reshape(-1, 2)
        self.blocked_cols = torch.cat(blocked_cols) if blocked_cols else torch.zeros(0, dtype=torch.long)
        # the kernel's sparse plan (native.py); int32 tables, coefficients kept in float64
        self.paths = torch.tensor(paths_native, dtype=torch.int32).reshape(-1, 8)
        self.pairs = torch.tensor(pairs_native, dtype=torch.int32).reshape(-1, 4)
        self.terms_mj = torch.tensor(terms_mj, dtype=torch.int32)
        self.terms_c64 = torch.tensor(terms_c, dtype=torch.float64)
        # packed sender column → h column (the zero column h.shape[1] fills the padding)
        dim = self.irreps_sender.dim
        pack = torch.full((self.packed_width,), dim, dtype=torch.long)
        col = 0
        for start, mul, d_i, _, _ in self.blocks:
            u, m = torch.meshgrid(torch.arange(mul), torch.arange(d_i), indexing="ij")
            pack[col + m * native.padded(mul) + u] = start + u * d_i + m
            col += d_i * native.padded(mul)
        self.pack_index = pack
        # channels-last column of every e3nn mid column (a permutation of the first mid_simple.dim columns)
        to_e3nn = torch.empty(self.irreps_mid.dim, dtype=torch.long)
        for k, (mul_k, ir_k) in enumerate(self.irreps_mid):
            start, stride = channels_last[k]
            u, m = torch.meshgrid(torch.arange(mul_k), torch.arange(ir_k.dim), indexing="ij")
            to_e3nn[mid_slices[k].start + u * ir_k.dim + m] = start + m * stride + u
        self.channels_last_of_mid = to_e3nn
        self._cache: dict = {}

    def path_acc(self, num_receivers: int) -> Tensor:
        """[P, 2] int64 (offset, receiver stride) of each path in a "blocks" aggregate of ``num_receivers``
        rows (:func:`native.entry_receivers`): block b of the mid irreps is [R, d_b, mul_b] contiguous at
        R · (its first channels-last column), so each block is a plain [R·d_b, mul_b] matrix for lin2."""
        start, width = self.path_block[:, 0], self.path_block[:, 1]
        offset = num_receivers * start + (self.paths[:, 4].long() - start)
        return torch.stack([offset, width], dim=1).contiguous()

    def block_views(self, flat: Tensor, num_receivers: int) -> List[Tensor]:
        """The mid blocks [R, d_b, mul_b] of a "blocks" aggregate ``flat`` [R · mid dim] (views)."""
        views, at = [], 0
        for mul, ir in self.mid_simple:
            n = num_receivers * mul * ir.dim
            views.append(flat[at : at + n].view(num_receivers, ir.dim, mul))
            at += n
        return views

    def radial_width(self) -> int:
        """Columns of the radial weights the implementations read: W, then ≥ ACC_SLACK zero columns."""
        return native.round_up(self.weight_numel + native.ACC_SLACK, 16)

    def native_ok(self) -> bool:
        """True when the kernel can run this plan (some path, multiplicities within its buffer)."""
        return self.paths.numel() > 0 and int(self.paths[:, 0].max()) <= native.MAX_MUL

    def on(self, like: Tensor, name: str):
        """Cached device/dtype copies of tables (``cg``, ``kernel``, ``pack``, ``blocked``)."""
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            dev = like.device
            if name == "cg":
                value = [c.to(device=dev, dtype=like.dtype) for c in self.cg]
            elif name == "kernel":
                value = (self.paths.contiguous(), self.pairs.contiguous(), self.terms_mj.contiguous(),
                         self.terms_c64.to(like.dtype).contiguous())
            elif name == "pack":
                value = self.pack_index.to(dev)
            elif name == "blocked":
                value = (self.blocked_cols.to(dev),
                         [[w.to(dev) for *_, w in groups] for *_, groups in self.blocks])
            else:
                raise KeyError(name)
            self._cache[key] = value
        return self._cache[key]

    def pack(self, h: Tensor) -> Tensor:
        """h [N, sender dim] → [N, packed_width]: each sender irrep [m_i][mul padded with zeros to 8]."""
        index = self.on(h, "pack")
        return torch.cat([h, h.new_zeros((h.shape[0], 1))], dim=1).index_select(1, index)


def restricted_plan(tp: o3.TensorProduct, irreps_mid_simple: o3.Irreps, keep) -> Tuple["UvuPlan", Tensor, List[int]]:
    """The plan of ``tp``'s paths into mid irreps of the types ``keep`` only (a set of ``o3.Irrep``): its mid
    layout holds only the blocks of ``irreps_mid_simple`` of those types, in order (so the kernel writes
    nothing else); also the columns of ``tp``'s weights [W'] those paths read, in order, and the index in
    ``irreps_mid_simple`` of each block it keeps.  For a convolution whose other mid irreps nothing
    downstream reads (the last probe layer under a scalar readout)."""
    kept_out = [k for k, (_, ir) in enumerate(tp.irreps_out) if ir in keep]
    new_out = {k: n for n, k in enumerate(kept_out)}
    kept, cols, start = [], [], 0
    for ins in tp.instructions:
        width = ins.path_shape[0]
        if ins.i_out in new_out:
            kept.append(ins._replace(i_out=new_out[ins.i_out]))
            cols.append(torch.arange(start, start + width))
        start += width
    blocks = [b for b, (_, ir) in enumerate(irreps_mid_simple) if ir in keep]
    view = SimpleNamespace(irreps_in1=tp.irreps_in1, irreps_in2=tp.irreps_in2,
                           irreps_out=o3.Irreps([tp.irreps_out[k] for k in kept_out]),
                           instructions=kept, weight_numel=sum(len(c) for c in cols))
    plan = UvuPlan(view, o3.Irreps([irreps_mid_simple[b] for b in blocks]))
    return plan, (torch.cat(cols) if cols else torch.zeros(0, dtype=torch.long)), blocks


class TPScatter:
    """Base of the implementations (module docstring: interface and layouts)."""

    layout = "channels_last"
    name = "base"

    def __init__(self, plan: UvuPlan):
        self.plan = plan

    def senders(self, h: Tensor) -> Tensor:
        return self.plan.pack(h)

    def __call__(self, x: Tensor, sh: Tensor, weight: Tensor, src: Tensor, dst: Tensor, ptr: Optional[List[int]],
                 num_receivers: int) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class E3nnTPScatter(TPScatter):
    """e3nn's TensorProduct per edge, then index_add (e3nn layout): exactly :class:`E3Convolution`'s sum."""

    layout = "e3nn"
    name = "e3nn"

    def __init__(self, plan: UvuPlan, tp: o3.TensorProduct):
        super().__init__(plan)
        self.tp = tp

    def senders(self, h: Tensor) -> Tensor:
        return h

    def __call__(self, x, sh, weight, src, dst, ptr, num_receivers):
        if weight.shape != (src.shape[0], self.plan.weight_numel):
            weight = weight[: src.shape[0], : self.plan.weight_numel].contiguous()
        messages = self.tp(x[src], sh, weight)
        return messages.new_zeros((num_receivers, messages.shape[1])).index_add(0, dst, messages)


class BlockedTPScatter(TPScatter):
    """PyTorch: per sender irrep, T = bmm(Y @ C_i, x_i[src]) [E, K_i, mul], weights broadcast over m_k,
    index_add per receiver, then placed in the channels-last layout (one column gather)."""

    name = "blocked"

    def __call__(self, x, sh, weight, src, dst, ptr, num_receivers):
        plan = self.plan
        cols, w_cols = plan.on(x, "blocked")
        num_edges = src.shape[0]
        parts = []
        col = 0
        for (start, mul, d_i, k_total, groups), cg, w_idx in zip(plan.blocks, plan.on(x, "cg"), w_cols):
            width = d_i * native.padded(mul)
            xi = x[:, col : col + width].view(-1, d_i, native.padded(mul))[:, :, :mul].index_select(0, src)
            col += width
            t = torch.bmm((sh @ cg).view(num_edges, k_total, d_i), xi)  # [E, K_i, mul]
            scaled = []
            for (k_off, n_paths, d_k, _), idx in zip(groups, w_idx):
                w = weight[:num_edges].index_select(1, idx).view(num_edges, n_paths, 1, mul)
                scaled.append((t[:, k_off : k_off + n_paths * d_k].view(num_edges, n_paths, d_k, mul) * w)
                              .reshape(num_edges, n_paths * d_k * mul))
            t = torch.cat(scaled, dim=1) if len(scaled) > 1 else scaled[0]
            parts.append(t.new_zeros((num_receivers, k_total * mul)).index_add(0, dst, t))
        agg = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        out = agg.new_zeros((num_receivers, plan.acc_width))
        return out.index_copy(1, cols, agg)


def _pool(n: int) -> ThreadPoolExecutor:
    """A shared pool of ``n`` threads for kernel calls (ctypes releases the GIL)."""
    if n not in _pools:
        _pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cdp-uvu")
    return _pools[n]


def receiver_ranges(ptr: List[int], num_edges: int, num_receivers: int) -> List[Tuple[int, int]]:
    """Receiver ranges [r0, r1) for the kernel threads, covering all receivers, with about as many edges each."""
    threads = max(1, min(torch.get_num_threads(), num_receivers, num_edges // 32))
    if threads == 1:
        return [(0, num_receivers)] if num_receivers else []
    cuts = [0]
    for t in range(1, threads):
        cuts.append(max(cuts[-1], min(num_receivers, bisect.bisect_left(ptr, t * num_edges // threads))))
    cuts.append(num_receivers)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def receiver_bounds(ptr: List[int], num_edges: int, num_receivers: int) -> List[Tuple[int, int]]:
    """Edge ranges [a, b) for the kernel threads, cut at receiver boundaries (each owns whole rows of M):
    the edges of :func:`receiver_ranges`; one empty range when there is no edge."""
    bounds = [(ptr[r0], ptr[r1]) for r0, r1 in receiver_ranges(ptr, num_edges, num_receivers) if ptr[r1] > ptr[r0]]
    return bounds or [(0, num_edges)]


def _run_blocks(fn, args: tuple, bounds: List[Tuple[int, int]]) -> List[int]:
    """``fn(e0, e1, *args)`` for each edge range of ``bounds`` (threads of the shared pool when several;
    ctypes releases the GIL); the kernels' status codes."""
    if len(bounds) <= 1:  # nothing to run, or one range here
        return [fn(a, b, *args) for a, b in bounds]
    return list(_pool(len(bounds)).map(lambda ab: fn(ab[0], ab[1], *args), bounds))


class NativeTPScatter(TPScatter):
    """The fused C kernel (forward :meth:`forward_kernel`, backward :meth:`backward_kernel`), with the
    library loaded beforehand (``native.load()`` at model set-up; see :func:`loaded_library`)."""

    name = "native"

    def __init__(self, plan: UvuPlan, lib):
        super().__init__(plan)
        self.lib = lib

    def __call__(self, x, sh, weight, src, dst, ptr, num_receivers):
        if torch.is_grad_enabled() and (x.requires_grad or sh.requires_grad or weight.requires_grad):
            return FusedTPScatter.apply(x, sh, weight, self, src, dst, ptr, num_receivers)
        return self.forward_kernel(x.contiguous(), sh.contiguous(), weight.contiguous(), src.contiguous(),
                                   dst.contiguous(), ptr, num_receivers)

    def forward_kernel(self, x, sh, weight, src, dst, ptr, num_receivers) -> Tensor:
        """M [R, acc_width] channels-last (contiguous inputs)."""
        fn = native.entry(self.lib, weight.dtype)
        acc = weight.new_zeros((num_receivers, self.plan.acc_width))
        paths, pairs, mj, coeff = self.plan.on(weight, "kernel")
        args = (src.data_ptr(), dst.data_ptr(), sh.data_ptr(), sh.shape[1], weight.data_ptr(), weight.shape[1],
                x.data_ptr(), x.shape[1], acc.data_ptr(), acc.shape[1], paths.shape[0], paths.data_ptr(),
                pairs.data_ptr(), mj.data_ptr(), coeff.data_ptr())
        if any(_run_blocks(fn, args, receiver_bounds(ptr, src.shape[0], num_receivers))):
            raise RuntimeError("fused ChargE3Net kernel: multiplicity above its limit")
        return acc

    def forward_table(self, x, sh, r, table, src, dst, ptr, num_receivers) -> List[Tensor]:
        """M in the "blocks" layout — one [R, d_b, mul_b] tensor per block of the simplified mid irreps
        (:meth:`UvuPlan.block_views`) — with the radial weights evaluated per edge inside the kernel from
        ``table`` (a :class:`cdp.nn.radial_table.KnotTable` over the seam's weight columns) at the edge
        lengths ``r`` [E] (Å): no [E, W] weight array exists, and M is written whole, never zero-filled.
        Inference only (no backward); each thread owns a range of receivers.  ``dst`` is implied by ``ptr``."""
        knots = table.knots  # a KnotTable: [n + 1, 2, W]
        fn = native.entry_receivers(self.lib, knots.dtype)
        x, sh, src = x.contiguous(), sh.contiguous(), src.contiguous()
        r = r.to(knots.dtype).contiguous()
        flat = knots.new_empty((num_receivers * self.plan.mid_simple.dim,))
        paths, pairs, mj, coeff = self.plan.on(knots, "kernel")
        ptr_t = torch.tensor(ptr, dtype=torch.int64)
        path_acc = self.plan.path_acc(num_receivers)
        args = (ptr_t.data_ptr(), src.data_ptr(), sh.data_ptr(), sh.shape[1], r.data_ptr(), knots.data_ptr(),
                table.num_intervals, float(table.inv_h), table.width, x.data_ptr(), x.shape[1], flat.data_ptr(),
                path_acc.data_ptr(), paths.shape[0], paths.data_ptr(), pairs.data_ptr(), mj.data_ptr(),
                coeff.data_ptr())
        status = _run_blocks(fn, args, receiver_ranges(ptr, src.shape[0], num_receivers))
        if any(status):
            raise RuntimeError(f"fused ChargE3Net table kernel: status {max(status)} (1: multiplicity above its "
                               f"limit, 2: out of memory, 3: weight columns beyond the table)")
        return self.plan.block_views(flat, num_receivers)

    def backward_kernel(self, grad, x, sh, weight, src, dst, ptr, need_x: bool, need_sh: bool):
        """(dL/dx or None, dL/dsh or None, dL/dweight) from dL/dM: one pass of the backward kernel; each
        thread owns whole receivers and its own dL/dx."""
        fn = native.entry_backward(self.lib, weight.dtype)
        grad = grad.contiguous()
        gw = torch.zeros_like(weight)
        gsh = torch.zeros_like(sh) if need_sh else None
        paths, pairs, mj, coeff = self.plan.on(weight, "kernel")
        bounds = receiver_bounds(ptr, src.shape[0], grad.shape[0])
        gxs = [torch.zeros_like(x) for _ in bounds] if need_x else []

        def call(k: int) -> int:
            a, b = bounds[k]
            return fn(a, b, src.data_ptr(), dst.data_ptr(), sh.data_ptr(), sh.shape[1], weight.data_ptr(),
                      weight.shape[1], x.data_ptr(), x.shape[1], grad.data_ptr(), grad.shape[1],
                      gxs[k].data_ptr() if need_x else None, gw.data_ptr(),
                      gsh.data_ptr() if need_sh else None, paths.shape[0], paths.data_ptr(), pairs.data_ptr(),
                      mj.data_ptr(), coeff.data_ptr())

        status = [call(0)] if len(bounds) == 1 else list(_pool(len(bounds)).map(call, range(len(bounds))))
        if any(status):
            raise RuntimeError("fused ChargE3Net backward kernel: multiplicity above its limit")
        gx = None
        if need_x:
            gx = gxs[0]
            for other in gxs[1:]:
                gx.add_(other)
        return gx, gsh, gw


class FusedTPScatter(torch.autograd.Function):
    """:class:`NativeTPScatter` as an autograd function: (packed senders x, harmonics Y, radial weights w) → M.

    Backward is one pass of the backward kernel (``cdp_uvu_conv_backward_*``), giving dL/dx, dL/dY and
    dL/dw without per-edge tensor-product outputs; slack columns of w and M carry zero gradient.
    """

    @staticmethod
    def forward(ctx, x, sh, weight, impl, src, dst, ptr, num_receivers):
        x, sh, weight = x.contiguous(), sh.contiguous(), weight.contiguous()
        src, dst = src.contiguous(), dst.contiguous()
        acc = impl.forward_kernel(x, sh, weight, src, dst, ptr, num_receivers)
        ctx.save_for_backward(x, sh, weight, src, dst)
        ctx.impl, ctx.ptr = impl, ptr
        return acc

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, sh, weight, src, dst = ctx.saved_tensors
        gx, gsh, gw = ctx.impl.backward_kernel(grad, x, sh, weight, src, dst, ctx.ptr,
                                               ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return gx, gsh, gw, None, None, None, None, None


_capture: Optional[Callable[[UvuPlan, o3.TensorProduct], TPScatter]] = None


def set_capture_implementation(factory: Optional[Callable[[UvuPlan, o3.TensorProduct], TPScatter]]):
    """Install the implementation graph capture records (``factory(plan, tp)``; None: e3nn's); returns the
    previous factory."""
    global _capture
    previous, _capture = _capture, factory
    return previous


#: the fast backend's implementation on a GPU (or another non-CPU device): "blocked" or "e3nn"
DEVICE_IMPLEMENTATION = "blocked"


def select(plan: UvuPlan, tp: o3.TensorProduct, run_mode: str, like: Tensor, backend: str = "fast") -> TPScatter:
    """The implementation for this call — the one place where backend, mode, device and dtype decide:

    capture → the installed capture implementation, else :class:`E3nnTPScatter`; backend ``"e3nn"`` →
    :class:`E3nnTPScatter`; CPU float32/float64 with the kernel library loaded and the plan within its
    limits → :class:`NativeTPScatter` (inference and autograd alike); otherwise → :class:`BlockedTPScatter`
    (on a GPU unless ``DEVICE_IMPLEMENTATION`` says ``"e3nn"``: measured 1.6 s against 6.3–7.5 s for
    100,000 probes at paper size on an H200, ``python -m benchmarks gpu --device-tp``).
    """
    if run_mode not in MODES:
        raise ValueError(f"unknown mode {run_mode!r}")
    if run_mode == "capture" and _capture is not None:
        return _capture(plan, tp)
    if run_mode == "capture" or backend == "e3nn":
        return E3nnTPScatter(plan, tp)
    if like.device.type != "cpu" and DEVICE_IMPLEMENTATION == "e3nn" and backend != "native":
        return E3nnTPScatter(plan, tp)
    if backend == "native" or backend == "fast":
        lib = loaded_library() if like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64) else None
        if lib is not None and plan.native_ok():
            return NativeTPScatter(plan, lib)
        if backend == "native":
            raise RuntimeError("the native tensor-product kernel is not available for these inputs")
    return BlockedTPScatter(plan)
