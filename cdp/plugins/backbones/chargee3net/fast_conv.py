"""Fast ChargE3Net convolution: the same function as :class:`E3Convolution`, in receiver blocks behind a seam.

The convolution keeps every parameter of :class:`E3Convolution` (it inherits them: a state_dict loads into
either backend) and delegates "M = Σ_edges TP(lin1(x)[src], Y; w) scattered to the receivers" to a
tensor-product–scatter implementation chosen once per call (:mod:`.tp_scatter`: e3nn, blocked PyTorch, the
fused C kernel; :func:`.tp_scatter.select`).  Around it, this module does what is layout-independent:

* edges sorted by receiver and processed in blocks of whole receivers, so in inference the per-edge
  intermediates (radial weights, harmonics) and the aggregate exist for one block at a time (peak memory
  set by ``edge_chunk``, not by the number of edges or receivers);
* radial weights per block: ``fc(embedding)`` (e3nn's FullyConnectedNet, called as a module) or, in CPU
  inference, a table of the edge length (:meth:`FastE3Convolution.radial_table`);
* lin2/lin3 of a channels-last aggregate as one GEMM per instruction, with the weights and path weights
  read through e3nn's public ``Linear.weight_views`` (:func:`linear_channels_last`, tested against e3nn).
"""

from __future__ import annotations

import bisect
import copy
import time
from typing import Callable, List, Optional, Tuple

import torch
from e3nn import o3
from torch import Tensor, nn

from cdp.core.components import building_for_capture
from cdp.nn.radial_table import MIN_INTERVALS, KnotTable, RadialTable
from cdp.plugins.backbones.chargee3net import native
from cdp.plugins.backbones.chargee3net.conv import E3Convolution
from cdp.plugins.backbones.chargee3net.tp_scatter import (  # noqa: F401  (capturing, mode: re-exported)
    E3nnTPScatter, FusedTPScatter, NativeTPScatter, TPScatter, UvuPlan, capturing, mode, restricted_plan, select,
)

DEFAULT_EDGE_CHUNK = 512
LIN1_ROWS = 4096  # sender rows through lin1 at once when packing for the kernel
FEATURE_WINDOW = 65_536  # edges whose harmonics and embedding exist at once when computed from vectors
DENSE_MAX = 1 << 16  # training: a linear map with at most this many matrix entries runs as one GEMM
TABLE_MAX_INTERVALS = 2048  # a radial network needing more knots than this is not tabulated (kept as the MLP)
EdgeFeatures = Callable[[Tensor], Tuple[Tensor, Tensor]]
Radial = Callable[[Tensor], Tensor]  # radial input of a block of E edges → the seam's weight operand (tp_scatter)
#: bytes of per-edge and per-receiver intermediates one receiver block may hold on a GPU (or another non-CPU
#: device): blocks of ``edge_chunk`` edges, sized for CPU caches, would make a GPU wait on kernel launches
DEVICE_BLOCK_BYTES = 1 << 30
KERNEL_TABLE_CHUNK = 4096  # edges per block when the kernel reads the radial table itself (no [E, W] weights)


class KernelTable:
    """Radial weights that the fused kernel evaluates per edge from ``table`` (inference, native seam):
    the radial input of a block is then the edge lengths [E] (Å) and no weight array is formed.  Called
    like any :data:`Radial` (the same weights, through PyTorch) where the kernel is not used."""

    def __init__(self, table: RadialTable, restricted: Optional[tuple] = None, keep: Optional[frozenset] = None):
        self.table = table
        #: (plan, table, blocks) of :meth:`FastE3Convolution.restricted` when the table holds only the columns
        #: of the paths outputs of the types ``keep`` need (then it is read by the kernel only)
        self.restricted, self.keep = restricted, keep

    def __call__(self, r: Tensor) -> Tensor:
        return table_weights(self.table, r)
FusedConvolution = FusedTPScatter  # the kernels' autograd function, under its former name


class _EdgeSlices:
    """(sh, radial input) of edges [e0, e1) from precomputed tensors."""

    def __init__(self, sh: Tensor, emb: Tensor):
        self.sh, self.emb = sh, emb

    def __call__(self, e0: int, e1: int) -> Tuple[Tensor, Tensor]:
        return self.sh[e0:e1], self.emb[e0:e1]


class _EdgeWindow:
    """(sh, radial input) of edges [e0, e1) computed from the edge vectors ``FEATURE_WINDOW`` edges at a time
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


def table_weights(table, r: Tensor) -> Tensor:
    """``table(r)`` [E, W] of a :class:`RadialTable` (Horner's rule in place: at most two [E, W] temporaries
    instead of [E, 4, W]) or a :class:`KnotTable` (its Hermite basis, in place).

    The same arithmetic as :func:`cdp.nn.radial_table.evaluate` / ``evaluate_knots`` except that the
    interval and the offset t in it come from r in float64: with float32 arithmetic r·inv_h (up to n) would
    round t by n·2⁻²⁴, a second rounding of r on top of the one the MLP sees."""
    x = r.to(torch.float64) * table.inv_h
    i = torch.clamp(torch.floor(x), 0, table.num_intervals - 1)
    if isinstance(table, KnotTable):
        knots = table.knots
        t = (x - i).unsqueeze(-1)
        u = 1.0 - t
        i = i.long()
        out = knots[:, 0].index_select(0, i)
        out.mul_(((1.0 + 2.0 * t) * u * u).to(knots.dtype))
        for row, offset, weight in ((1, 0, t * u * u), (0, 1, t * t * (3.0 - 2.0 * t)), (1, 1, t * t * (t - 1.0))):
            out.addcmul_(knots[:, row].index_select(0, i + offset), weight.to(knots.dtype))
        return out
    coef = table.coef
    t = (x - i).to(coef.dtype).unsqueeze(-1)
    i = i.long()
    out = coef[:, 3].index_select(0, i)
    tmp = torch.empty_like(out)
    for k in (2, 1, 0):
        out.mul_(t).add_(torch.index_select(coef[:, k], 0, i, out=tmp))
    return out


def linear_channels_last(lin: o3.Linear, acc: Tensor, scale: float, track: bool) -> Tensor:
    """``lin(M) · scale`` for M held channels-last per block of ``lin.irreps_in`` ([d][mul], the seam's
    ``"channels_last"`` layout; columns past ``lin.irreps_in.dim`` ignored).

    The sum e3nn's Linear computes (per instruction, path_weight · x @ W), with W and path_weight read
    through its public ``weight_views(yield_instruction=True)``: one [rows·d, mul_in] @ [mul_in, mul_out]
    GEMM per instruction.  ``track`` (autograd): M is split once into its blocks (one gradient
    concatenation instead of a zero-filled full-size gradient per narrowed block) and the output is
    assembled by concatenation; otherwise instruction results are added into one output in place.
    """
    rows = acc.shape[0]
    in_slices, out_slices = lin.irreps_in.slices(), lin.irreps_out.slices()
    if track:
        widths = [sl.stop - sl.start for sl in in_slices]
        widths.append(acc.shape[1] - sum(widths))
        pieces = dict(zip([sl.start for sl in in_slices], torch.split(acc, widths, dim=1)))
        by_out: dict = {}
    else:
        out = acc.new_zeros((rows, lin.irreps_out.dim))
    for _, ins, weight in lin.weight_views(yield_instruction=True):
        mul_in, mul_out = ins.path_shape
        d = lin.irreps_in[ins.i_in].ir.dim
        start = in_slices[ins.i_in].start
        x = pieces[start] if track else acc.narrow(1, start, mul_in * d)
        y = torch.mm(x.reshape(rows * d, mul_in), weight * (ins.path_weight * scale)).view(rows, d, mul_out)
        if track:
            y = y.transpose(1, 2).reshape(rows, mul_out * d)
            by_out[ins.i_out] = by_out[ins.i_out] + y if ins.i_out in by_out else y
        else:
            out.narrow(1, out_slices[ins.i_out].start, mul_out * d).view(rows, mul_out, d).add_(y.transpose(1, 2))
    if not track:
        return out
    blocks = [by_out[k] if k in by_out else acc.new_zeros((rows, sl.stop - sl.start)) for k, sl in enumerate(out_slices)]
    return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]


def _scaled_weights(lin: o3.Linear, scale: float, like: Tensor) -> list:
    """Per instruction of ``lin``: (instruction, weight · path_weight · scale) in ``like``'s dtype; kept on the
    module (not a parameter or buffer) until its weights change, so inference does not rescale them per call."""
    version = (lin.weight._version, lin.weight.data_ptr(), like.dtype, like.device, scale)
    cache = lin.__dict__.setdefault("_cdp_scaled_weights", {})
    hit = cache.get(scale)
    if hit is None or hit[0] != version:
        with torch.no_grad():
            weights = [(ins, (w * (ins.path_weight * scale)).to(like.dtype).contiguous())
                       for _, ins, w in lin.weight_views(yield_instruction=True)]
        hit = cache[scale] = (version, weights)
    return hit[1]


def linear_blocks(lin: o3.Linear, blocks: List[Tensor], scale: float, keep=None) -> Tensor:
    """``lin(M) · scale`` (inference) for M in the seam's "blocks" layout: block b of ``lin.irreps_in`` as a
    contiguous [R, d_b, mul_b] tensor (:meth:`UvuPlan.block_views`), so each instruction is one
    [R·d, mul_in] @ [mul_in, mul_out] GEMM on the block as it lies; the same sum as
    :func:`linear_channels_last`.  Returns [R, lin.irreps_out.dim] in e3nn's layout.  ``keep`` (a set of
    ``o3.Irrep``): only outputs of those types are computed (the others are zero), and only blocks of those
    types are read (a linear connects equal irreps; the others may be None)."""
    first = next(b for b in blocks if b is not None)
    rows = first.shape[0]
    out_slices = lin.irreps_out.slices()
    weights = _scaled_weights(lin, scale, first)
    if keep is not None:
        weights = [(ins, w) for ins, w in weights if lin.irreps_out[ins.i_out].ir in keep]
    out = first.new_empty((rows, lin.irreps_out.dim))
    written = set()
    for k, sl in enumerate(out_slices):  # an output no instruction reaches is zero
        if all(ins.i_out != k for ins, _ in weights):
            out[:, sl] = 0
    for ins, weight in weights:
        block = blocks[ins.i_in]
        d, mul_in = block.shape[1], block.shape[2]
        y = torch.mm(block.view(rows * d, mul_in), weight)
        mul_out = y.shape[1]
        target = out.narrow(1, out_slices[ins.i_out].start, mul_out * d).view(rows, mul_out, d)
        y = y.view(rows, d, mul_out).transpose(1, 2)
        if ins.i_out in written:
            target.add_(y)
        else:  # the first instruction into an output writes it: no zero fill, no read
            target.copy_(y)
            written.add(ins.i_out)
    return out


class DenseLinear:
    """One or more e3nn Linears (no biases) side by side as a dense matrix built from their weights:
    ``D = cat(path_weight · weight view for every instruction, 0)[index].view(rows, cols)``, read through
    e3nn's public ``Linear.weight_views(yield_instruction=True)``; ``x @ D`` equals ``cat([lin(x) ...])``.

    Rows index the input in e3nn layout ([mul][d] per block) or ``channels_last`` ([d][mul]); output
    columns of lin k go through ``col_maps[k]`` (a [out dim] index, -1 drops a column; a 1-element map
    is an offset) — e.g. the seam's sender packing.
    """

    def __init__(self, lins, rows: int, cols: int, channels_last: bool, col_maps):
        self.lins = lins
        index = torch.full((rows * cols,), -1, dtype=torch.long)
        flat = 0
        for lin, col_map in zip(lins, col_maps):
            in_slices, out_slices = lin.irreps_in.slices(), lin.irreps_out.slices()
            for _, ins, weight in lin.weight_views(yield_instruction=True):
                mul_in, mul_out = ins.path_shape
                d = lin.irreps_in[ins.i_in].ir.dim
                u, w, m = torch.meshgrid(torch.arange(mul_in), torch.arange(mul_out), torch.arange(d), indexing="ij")
                u, w, m = u.reshape(-1), w.reshape(-1), m.reshape(-1)
                r = in_slices[ins.i_in].start + (m * mul_in + u if channels_last else u * d + m)
                c = out_slices[ins.i_out].start + w * d + m
                if col_map is not None:
                    c = c + col_map if col_map.numel() == 1 else col_map[c]
                keep = c >= 0
                pos = r[keep] * cols + c[keep]
                if bool((index[pos] >= 0).any()):
                    raise ValueError("overlapping entries")
                index[pos] = flat + (u * mul_out + w)[keep]
                flat += mul_in * mul_out
        index[index < 0] = flat  # the appended zero
        self.index, self.rows, self.cols = index, rows, cols

    def matrix(self, like: Tensor) -> Tensor:
        parts = [weight.reshape(-1) * ins.path_weight
                 for lin in self.lins for _, ins, weight in lin.weight_views(yield_instruction=True)]
        flat = torch.cat(parts + [parts[0].new_zeros(1)])
        if self.index.device != flat.device:
            self.index = self.index.to(flat.device)
        return flat[self.index].view(self.rows, self.cols).to(like.dtype)


class FastE3Convolution(E3Convolution):
    """:class:`E3Convolution` computed in receiver blocks, its tensor product and scatter behind the seam."""

    def __init__(self, *args, edge_chunk: int = DEFAULT_EDGE_CHUNK, **kwargs):
        super().__init__(*args, **kwargs)
        self.edge_chunk = int(edge_chunk)
        self.use_native = True  # the fused C kernels where they apply (CPU inference and training); False: PyTorch only
        if any(ins.i_in < 0 for ins in list(self.lin2.instructions) + list(self.lin3.instructions)):
            raise RuntimeError("fast convolution: lin2/lin3 with biases")
        self.plan = UvuPlan(self.tp, self.lin2.irreps_in)
        if not building_for_capture():  # a model built only to be exported never runs the kernel
            native.load()  # compiled (once per machine) and loaded here, at model set-up: never from forward

    def kernel_reads_tables(self, like: Tensor) -> bool:
        """True when inference on inputs like ``like`` runs the fused kernel and it has a table entry for
        their dtype (then the radial table is evaluated inside the kernel, whatever its size)."""
        impl = self.implementation(like, "inference")
        return impl.name == "native" and native.entry_table(impl.lib, like.dtype) is not None

    def implementation(self, like: Tensor, run_mode: str) -> TPScatter:
        """The tensor-product–scatter implementation for inputs like ``like`` in ``run_mode``
        (:func:`.tp_scatter.select`; ``use_native = False`` keeps the PyTorch ones)."""
        if run_mode != "capture" and not (isinstance(self.lin2, o3.Linear) and isinstance(self.lin3, o3.Linear)):
            run_mode = "capture"  # e3nn's export compilation replaced them (traced or scripted copies)
        return select(self.plan, self.tp, run_mode, like, "fast" if self.use_native else "blocked")

    def restricted_plan(self, keep: frozenset):
        """(plan, weight columns, blocks) of :func:`.tp_scatter.restricted_plan` for the mid irreps lin2 needs for
        outputs of the types ``keep`` and lin3's input, or None when that is every mid irrep; built once per
        ``keep``."""
        cache = self.__dict__.setdefault("_restricted_plans", {})
        if keep not in cache:
            mids = self.mid_types(keep)
            whole = all(ir in mids for _, ir in self.plan.mid_simple)
            cache[keep] = None if whole else restricted_plan(self.tp, self.plan.mid_simple, mids)
        return cache[keep]

    def restricted(self, keep: frozenset, basis: nn.Module, dtype: torch.dtype, device, rtol: float):
        """(plan, table, blocks) computing only what outputs of the types ``keep`` need (:meth:`restricted_plan`):
        the kernel's plan, the :class:`KnotTable` of only its weight columns (fitted to them: ``radial_table(...,
        keep=keep)``; the whole table is never built), and the lin2 input block of each of its mid blocks.  None
        when nothing would be saved, the kernel cannot run the plan, or the columns cannot be tabulated."""
        found = self.restricted_plan(keep)
        if found is None or not found[0].native_ok():
            return None
        table = self.radial_table(basis, dtype, device, rtol, knots=True, keep=keep)
        return None if table is None else (found[0], table, found[2])

    def block_edges(self, like: Tensor) -> int:
        """Edges per receiver block for inputs like ``like``: ``edge_chunk`` on the CPU; on other devices as
        many as ``DEVICE_BLOCK_BYTES`` of intermediates allow (counting one receiver per 8 edges)."""
        if like.device.type == "cpu":
            return self.edge_chunk
        per_edge = self.bytes_per_edge(like.element_size()) + self.bytes_per_receiver(like.element_size()) // 8
        return max(self.edge_chunk, DEVICE_BLOCK_BYTES // per_edge)

    def block_receivers(self, like: Tensor) -> int:
        """Most receivers in one block for inputs like ``like`` (receivers without edges count too): the edge
        budget on the CPU; on other devices as many as ``DEVICE_BLOCK_BYTES`` of per-receiver aggregates allow
        (probes in vacuum would otherwise fill a block of ``block_edges`` receivers)."""
        if like.device.type == "cpu":
            return self.block_edges(like)
        return max(1, DEVICE_BLOCK_BYTES // self.bytes_per_receiver(like.element_size()))

    def bytes_per_edge(self, itemsize: int = 4) -> int:
        """Peak bytes of per-edge intermediates in one block (radial weights + largest T_i and its weighting)."""
        largest = max((mul * k for _, mul, _, k, _ in self.plan.blocks), default=0)
        return itemsize * (self.radial_width() + self.fc.hs[1] + 3 * largest + self.irreps_sh.dim)

    def bytes_per_receiver(self, itemsize: int = 4) -> int:
        """Bytes of the per-receiver aggregate (held for one block)."""
        return itemsize * (2 * self.plan.acc_width + self.irreps_out.dim)

    def radial_weights(self, emb: Tensor) -> Tensor:
        """``fc(emb)`` for the E edges of ``emb`` [E, num_basis] and one zero-embedding row after them:
        [E + 1, W], the seam's weight operand (the kernel reads a few values past a row's last weight;
        the extra row makes those finite without copying [E, W] into a wider array)."""
        return self.fc(torch.cat([emb, emb.new_zeros((1, emb.shape[1]))]))

    # -- tabulated radial network (inference) -----------------------------------------------------------
    def radial_width(self) -> int:
        """Columns of the radial weights the seam reads: W in e3nn order, then ≥ ACC_SLACK zero columns."""
        return self.plan.radial_width()

    def radial_function(self, basis: nn.Module, columns: Optional[Tuple[Tensor, int]] = None) -> Callable[[Tensor], Tensor]:
        """r [K] float64 (Å) → ``fc(basis(r))`` [K, :meth:`radial_width`] in the seam's layout (e3nn order, zero slack), computed by float64
        copies of the radial network and of ``basis`` (the module embedding this convolution's edges).
        ``columns`` (index [W'], width): only those weight columns, then zero slack up to ``width``."""
        fc = copy.deepcopy(self.fc).to(device="cpu", dtype=torch.float64)
        emb = copy.deepcopy(basis).to(device="cpu", dtype=torch.float64)
        cols, width = (None, self.radial_width()) if columns is None else columns
        pad = width - (self.tp.weight_numel if cols is None else cols.numel())

        def fn(r: Tensor) -> Tensor:
            w = fc(emb(r))
            return torch.nn.functional.pad(w if cols is None else w.index_select(1, cols), (0, pad))

        return fn

    def _radial_version(self, basis: nn.Module) -> tuple:
        """Identity and in-place version of every tensor the radial function reads (a table is stale when
        one changes: an optimiser step, ``load_state_dict``, ``.to()``)."""
        tensors = list(self.fc.parameters()) + list(basis.buffers()) + list(basis.parameters())
        return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)

    def radial_table(self, basis: nn.Module, dtype: torch.dtype, device: torch.device, rtol: float,
                     max_bytes: Optional[int] = None, knots: bool = False, keep: Optional[frozenset] = None):
        """The piecewise-cubic table of :meth:`radial_function` over [0, cutoff] (``rtol`` · max|w|, measured),
        stored in ``dtype`` on ``device``; built once per (dtype, device) and parameter version, never under
        autograd.  None (and the MLP is used) when the function needs more than ``TABLE_MAX_INTERVALS``
        knots, or a table larger than ``max_bytes``, or is not finite (e.g. a basis singular at r = 0).
        ``knots``: the :class:`KnotTable` of the same interpolant (half the memory; what the fused kernel
        reads).  The build time, size and measured error are reported by ``extra_repr``.  ``keep``: the table
        of only the weight columns :meth:`restricted_plan` ``(keep)`` reads (its own knot count)."""
        key = (dtype, torch.device(device), max_bytes, knots, keep)
        columns = None
        if keep is not None:
            plan, cols, _ = self.restricted_plan(keep)
            columns = (cols, plan.radial_width())
        version = self._radial_version(basis)
        tables = self.__dict__.setdefault("_radial_tables", {})  # plain dict: never part of the state_dict
        hit = tables.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        if any(v[0] != version for v in tables.values()):
            tables.clear()  # parameters changed: every stored table is stale
        t0 = time.perf_counter()
        width = self.radial_width() if columns is None else columns[1]
        row_bytes = (2 if knots else 4) * width * torch.empty((), dtype=dtype).element_size()
        max_intervals = TABLE_MAX_INTERVALS
        if max_bytes is not None:
            fits = max_bytes // row_bytes
            max_intervals = min(max_intervals, 1 << (fits.bit_length() - 1)) if fits > 0 else 0
        table = None
        with torch.no_grad():
            try:
                if max_intervals < MIN_INTERVALS:
                    raise ValueError(f"{MIN_INTERVALS} intervals would exceed {max_bytes >> 10} KiB")
                fn = self.radial_function(basis, columns)
                cutoff = float(basis.cutoff)
                if not bool(torch.isfinite(fn(torch.linspace(0.0, cutoff, 33, dtype=torch.float64))).all()):
                    raise ValueError("the radial network is not finite on [0, cutoff]")
                # built in ``dtype`` a block of intervals at a time (fitted and measured in float64 per block)
                table = RadialTable.fit(fn, cutoff, rtol=rtol, dtype=dtype, max_intervals=max_intervals, knots=knots)
                table = table.to(device=device)
                scale = table.max_abs_value() or 1.0
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

    # -- forward ----------------------------------------------------------------------------------------
    def forward(
        self,
        sender: Tensor,
        receiver: Tensor,
        edge_index: Tensor,
        edge_sh: Tensor,
        edge_embedding: Tensor,
    ) -> Tensor:
        run_mode = mode()
        if run_mode == "capture":
            impl = self.implementation(sender, run_mode)
            if isinstance(impl, E3nnTPScatter):
                # graph capture (export, tracing) records the plain e3nn form: same parameters, same function
                return super().forward(sender, receiver, edge_index, edge_sh, edge_embedding)
            return self._forward_whole(impl, sender, receiver, edge_index, edge_sh, edge_embedding)
        return self._blocks(sender, receiver, edge_index, (edge_sh, edge_embedding), None, None, run_mode)

    def _forward_whole(self, impl: TPScatter, sender: Tensor, receiver: Tensor, edge_index: Tensor,
                       edge_sh: Tensor, edge_embedding: Tensor) -> Tensor:
        """The convolution in one call of ``impl`` over all edges, as graph capture records it: no sort,
        no receiver blocks, no Python decision on a tensor's value."""
        norm = 1.0 / self.num_neighbors**0.5
        x = impl.senders(self.lin1(sender))
        acc = impl(x, edge_sh, self.fc(edge_embedding), edge_index[0], edge_index[1], None, receiver.shape[0])
        conv, angle = self._mix(impl, acc, norm, True)
        mask = self.sc_mask.to(angle.dtype)
        sin = (1.0 - mask) + angle.sin() * mask
        return angle.cos() * self.sc(receiver) + sin * conv

    def _mix(self, impl: TPScatter, acc: Tensor, norm: float, track: bool) -> Tuple[Tensor, Tensor]:
        """(lin2(M)·norm, 0.1·lin3(M)·norm) of an aggregate in ``impl``'s layout (channels-last or e3nn)."""
        if impl.layout == "channels_last":
            return linear_channels_last(self.lin2, acc, norm, track), linear_channels_last(self.lin3, acc, 0.1 * norm, track)
        acc = acc * norm
        return self.lin2(acc), 0.1 * self.lin3(acc)

    def forward_from_vectors(
        self, sender: Tensor, receiver: Tensor, edge_index: Tensor, edge_vec: Tensor, features: EdgeFeatures,
        radial: Optional[Radial] = None,
    ) -> Tensor:
        """Inference with ``(edge_sh, edge_radial) = features(edge_vec)`` computed a window of edges at a
        time, so the encoder never holds them for every atom edge.  ``radial``: see :meth:`infer`."""
        return self._blocks(sender, receiver, edge_index, (edge_vec,), features, radial, "inference")

    def infer(self, sender: Tensor, receiver: Tensor, edge_index: Tensor, edge_sh: Tensor, edge_radial: Tensor,
              radial: Optional[Radial] = None) -> Tensor:
        """:meth:`forward` for inference (the caller is outside autograd and capture), with the radial
        weights ``radial(edge_radial)`` per block of edges.

        ``radial`` None: ``edge_radial`` is the embedding [E, num_basis] and the weights come from the MLP;
        otherwise ``edge_radial`` is what ``radial`` reads (for a table: the edge lengths [E], Å) and it
        returns [E, :meth:`radial_width`] weights (see :meth:`radial_table`).  A :class:`KernelTable` made
        from :meth:`restricted` computes only the paths, weights and lin2 outputs of its ``keep`` types; the
        other output channels are then ``cos(angle) · sc(receiver)``."""
        return self._blocks(sender, receiver, edge_index, (edge_sh, edge_radial), None, radial, "inference")

    def _dense_maps(self, impl: TPScatter, like: Tensor) -> dict:
        """Training through the kernel: the small linear maps as single matrices, so each is one GEMM
        instead of e3nn's per-instruction operations (which cost more in dispatch than in arithmetic here):
        ``lin1`` followed by the seam's sender packing, ``sc``, and [lin2 | lin3] with rows in the seam's
        channels-last aggregate layout.  Each matrix gathers its entries from e3nn's public
        ``weight_views`` times the path weights (:class:`DenseLinear`), so gradients reach the weights;
        maps above ``DENSE_MAX`` entries keep the per-instruction forms."""
        plans = self.__dict__.get("_dense_plans")
        if plans is None:
            plans = self.__dict__["_dense_plans"] = {}
            plan = self.plan
            packed_col = torch.full((self.lin1.irreps_out.dim + 1,), -1, dtype=torch.long)
            packed_col[plan.pack_index] = torch.arange(plan.packed_width)
            lin2_dim = self.lin2.irreps_out.dim
            specs = {
                "lin1": ([self.lin1], self.lin1.irreps_in.dim, plan.packed_width, False, [packed_col[:-1]]),
                "sc": ([self.sc], self.sc.irreps_in.dim, self.sc.irreps_out.dim, False, [None]),
                "mix": ([self.lin2, self.lin3], plan.acc_width, lin2_dim + 1, True,
                        [None, torch.full((1,), lin2_dim, dtype=torch.long)]),
            }
            for name, (lins, rows, cols, channels_last, col_maps) in specs.items():
                if rows * cols <= DENSE_MAX:
                    plans[name] = DenseLinear(lins, rows, cols, channels_last, col_maps)
        if impl.layout != "channels_last":
            return {}
        return {name: dense.matrix(like) for name, dense in plans.items()}

    def _senders(self, impl: TPScatter, sender: Tensor, rows: Optional[Tensor], track: bool,
                 dense: Optional[dict] = None) -> Tensor:
        """``impl.senders(lin1(sender[rows]))``; in inference in blocks of ``LIN1_ROWS`` rows, so only the
        result is ever whole."""
        if track:
            sender = sender if rows is None else sender.index_select(0, rows)
            if dense and "lin1" in dense:
                return sender @ dense["lin1"]
            return impl.senders(self.lin1(sender))
        n = sender.shape[0] if rows is None else rows.shape[0]
        out = None
        for r0 in range(0, max(n, 1), LIN1_ROWS):
            r1 = min(n, r0 + LIN1_ROWS)
            part = impl.senders(self.lin1(sender[r0:r1] if rows is None else sender.index_select(0, rows[r0:r1])))
            if out is None:
                if r1 == n:
                    return part
                out = part.new_empty((n, part.shape[1]))
            out[r0:r1] = part
        return out

    def _blocks(self, sender: Tensor, receiver: Tensor, edge_index: Tensor, edge_data: Tuple[Tensor, ...],
                features, radial: Optional[Radial], run_mode: str) -> Tensor:
        """The convolution in blocks of whole receivers; ``edge_data`` is (sh, radial input), or (vectors,)
        with ``features`` turning vectors into (sh, radial input); ``radial`` as in :meth:`infer`."""
        track = run_mode == "autograd"
        impl = self.implementation(sender, run_mode)
        lin_keep = None
        if isinstance(radial, KernelTable) and radial.restricted is not None:  # see :meth:`restricted`
            if run_mode != "inference" or impl.name != "native":
                raise RuntimeError("a restricted radial table is for the fused kernel's inference only")
            plan, _, kept_blocks = radial.restricted
            impl, lin_keep = NativeTPScatter(plan, impl.lib), radial.keep
        num_receivers = receiver.shape[0]
        src, dst = edge_index[0], edge_index[1]
        used = None
        if 0 < src.numel() < sender.shape[0]:
            # a probe batch of a large cell: only the atoms it touches go through lin1 and the layout
            # change, so decoder time and memory per batch do not grow with the number of atoms
            used, src = torch.unique(src, return_inverse=True)
        dense = self._dense_maps(impl, sender) if track and impl.name == "native" else {}
        x = self._senders(impl, sender, used, track, dense)
        if dst.numel() > 1 and not bool((dst[1:] >= dst[:-1]).all()):
            order = torch.argsort(dst, stable=True)
            src, dst = src[order], dst[order]
            edge_data = tuple(t[order] for t in edge_data)
        edge_block = _EdgeWindow(edge_data[0], features) if features is not None else _EdgeSlices(*edge_data)
        if radial is None:
            radial = self.radial_weights
        ptr = torch.searchsorted(dst, torch.arange(num_receivers + 1, device=dst.device)).tolist()
        norm = 1.0 / self.num_neighbors**0.5
        mask = self.sc_mask.to(sender.dtype)
        # inference writes block by block into the output, so no other per-receiver tensor exists for all
        # receivers at once; under autograd the blocks are concatenated (out= does not differentiate)
        out = sender.new_empty((0 if track else num_receivers, self.irreps_out.dim))
        blocks: List[Tensor] = []
        # training through the kernels keeps the radial weights and the aggregate for the backward pass
        # anyway, so blocking would save no memory: all receivers at once (fewer, larger operations)
        chunk = max(self.edge_chunk, src.shape[0], num_receivers) if track and impl.name == "native" else self.block_edges(sender)
        in_kernel = isinstance(radial, KernelTable) and impl.name == "native"
        if in_kernel:  # no per-edge weights are held: larger blocks, fewer calls (acc is [receivers, acc_width])
            chunk = max(chunk, KERNEL_TABLE_CHUNK)
        max_receivers = chunk if sender.device.type == "cpu" else min(chunk, self.block_receivers(sender))
        r0 = 0
        while r0 < num_receivers:
            # the largest run of whole receivers holding at most edge_chunk edges (at least one receiver)
            r1 = max(r0 + 1, bisect.bisect_right(ptr, ptr[r0] + chunk, lo=r0 + 1) - 1)
            r1 = min(r1, r0 + max_receivers)  # receivers without edges count too (bounded aggregate)
            e0, e1 = ptr[r0], ptr[r1]
            sh, rad = edge_block(e0, e1)
            local_ptr = [p - e0 for p in ptr[r0 : r1 + 1]]
            if in_kernel:
                acc = None
                mid = impl.forward_table(x, sh, rad, radial.table, src[e0:e1], dst[e0:e1] - r0, local_ptr, r1 - r0)
                if lin_keep is not None:  # lin2/lin3 index the whole mid irreps: the skipped blocks are None
                    whole: List[Optional[Tensor]] = [None] * len(self.plan.mid_simple)
                    for b, view in zip(kept_blocks, mid):
                        whole[b] = view
                    mid = whole
            else:
                weight = radial(rad)
                acc = impl(x, sh, weight, src[e0:e1], dst[e0:e1] - r0, local_ptr, r1 - r0)
                del weight
            del rad
            if acc is None:  # the kernel's "blocks" aggregate
                conv = linear_blocks(self.lin2, mid, norm, lin_keep)
                angle = linear_blocks(self.lin3, mid, 0.1 * norm)
                del mid
            elif "mix" in dense:
                mixed = acc @ dense["mix"]
                conv, angle = mixed[:, :-1] * norm, mixed[:, -1:] * (0.1 * norm)
            else:
                conv, angle = self._mix(impl, acc, norm, track)
            sin = (1.0 - mask) + angle.sin() * mask
            if track:
                sc = receiver[r0:r1] @ dense["sc"] if "sc" in dense else self.sc(receiver[r0:r1])
                blocks.append(torch.addcmul(sin * conv, angle.cos(), sc))
            else:
                torch.addcmul(sin * conv, angle.cos(), self.sc(receiver[r0:r1]), out=out[r0:r1])
            # this block's temporaries go before the next block allocates its own (peak memory)
            acc = conv = angle = sin = None
            r0 = r1
        if track and blocks:
            return torch.cat(blocks, dim=0) if len(blocks) > 1 else blocks[0]
        return out
