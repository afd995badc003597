"""ChargE3Net's probe decoder for export with cdp's onnxruntime operator (``--ops cdp``).

:class:`KernelConvolution` is a probe convolution whose aggregate is one call of the fused kernel —
``torch.ops.cdp.uvu_conv_table``, recorded by graph capture as a single node and written to ONNX as
``ai.cdp.UvuConvTable`` (:mod:`.ort_ops`) — instead of the dense form (:mod:`.dense_conv`), which writes
every edge's tensor-product output [E, Σ d_k·mul] and reads it back.  Around the call it is the fast
backend's inference path (:meth:`FastE3Convolution._blocks` with the kernel reading the radial table):
lin1 and the sender packing as one matrix, the radial table the fast backend builds (same knots, same
error bound), lin2/lin3 as one GEMM per instruction on the kernel's "blocks" aggregate
(:func:`.fast_conv.linear_blocks`), and the dense self-connection.

A TorchScript export (``cdp export --format torchscript --ops cdp``) records the call of
``cdp::uvu_conv_table`` itself: the file loads in a process where this module has registered the operator
(cdp's runtime does it through :func:`torch_ops`, the provider ``cdp_export.json`` names).  The operator
checks its inputs as the ONNX one does (shapes, dtypes, the plan's tables and every edge index), so a
malformed call is an error naming the operator, never a read out of bounds.
"""

from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor, nn

from cdp.core.operators import torch_ops_provider
from cdp.core.types import CdpError
from cdp.plugins.backbones.chargee3net import native
from cdp.plugins.backbones.chargee3net.dense_conv import (
    DEFAULT_RTOL, CaptureBackbone, DenseSelfConnection, _maybe_bias, linear_matrix,
)
from cdp.plugins.backbones.chargee3net.fast_conv import FastE3Convolution, _scaled_weights


@torch.library.custom_op("cdp::uvu_conv_table", mutates_args=())
def uvu_conv_table(x: Tensor, sh: Tensor, r: Tensor, src: Tensor, dst: Tensor, slots: Tensor, coef: Tensor,
                   inv_h: float, paths: Tensor, pairs: Tensor, mj: Tensor, c: Tensor, path_block: Tensor,
                   mid_dim: int) -> Tensor:
    """The aggregate M [R · mid_dim] ("blocks" layout) of one convolution: the same function as the ONNX
    operator ``ai.cdp.UvuConvTable`` (kernels/ort_ops.cc), here through the kernel library (float32, CPU).
    Edges in any order; R = len(slots); ``coef``: the radial table's knots [n + 1, 2, W].  Raises
    RuntimeError (``cdp::uvu_conv_table: ...``) for inputs that do not match the signature or the plan, an
    edge index out of range, or without the kernel library."""
    lib = native.load()
    fn = None if lib is None else native.entry_receivers(lib, torch.float32)
    if fn is None:
        raise RuntimeError("cdp::uvu_conv_table needs the fused kernel library (a C compiler)")
    check_inputs(x, sh, r, src, dst, slots, coef, inv_h, paths, pairs, mj, c, path_block, mid_dim)
    num_receivers = slots.shape[0]
    order = torch.argsort(dst, stable=True)
    src_s, sh_s, r_s = src[order].contiguous(), sh[order].contiguous(), r[order].to(coef.dtype).contiguous()
    ptr = torch.searchsorted(dst[order], torch.arange(num_receivers + 1, dtype=dst.dtype)).contiguous()
    start = path_block[:, 0]
    path_acc = torch.stack([num_receivers * start + (paths[:, 4].long() - start), path_block[:, 1]], 1).contiguous()
    flat = coef.new_empty((num_receivers * mid_dim,))
    x = x.contiguous()
    status = fn(0, num_receivers, ptr.data_ptr(), src_s.data_ptr(), sh_s.data_ptr(), sh_s.shape[1], r_s.data_ptr(),
                coef.data_ptr(), coef.shape[0] - 1, float(inv_h), coef.shape[2], x.data_ptr(), x.shape[1], flat.data_ptr(),
                path_acc.data_ptr(), paths.shape[0], paths.data_ptr(), pairs.data_ptr(), mj.data_ptr(), c.data_ptr())
    if status:
        raise RuntimeError(f"cdp::uvu_conv_table: kernel status {status}")
    return flat


def _require(ok, what: str) -> None:
    if not bool(ok):
        raise RuntimeError(f"cdp::uvu_conv_table: {what}")


def check_inputs(x: Tensor, sh: Tensor, r: Tensor, src: Tensor, dst: Tensor, slots: Tensor, coef: Tensor, inv_h: float,
                 paths: Tensor, pairs: Tensor, mj: Tensor, c: Tensor, path_block: Tensor, mid_dim: int) -> None:
    """The checks of the ONNX operator (kernels/ort_ops.cc) before the kernel reads anything: dtypes (float32,
    int64 edges and blocks, int32 tables), CPU tensors, shapes, ``inv_h``, the plan's tables against the
    widths they index, ``mid_dim`` against the plan, and every edge index.  Raises RuntimeError (one line)."""
    f32, i32, i64 = torch.float32, torch.int32, torch.int64
    tensors = (x, sh, r, src, dst, slots, coef, paths, pairs, mj, c, path_block)
    _require(all(t.device.type == "cpu" for t in tensors), "inputs must be CPU tensors")
    _require([t.dtype for t in tensors] == [f32, f32, f32, i64, i64, f32, f32, i32, i32, i32, f32, i64],
             "input dtypes do not match the operator's signature (float32, int64 edges and path blocks, int32 tables)")
    _require(x.dim() == 2 and sh.dim() == 2 and r.dim() == 1 and src.dim() == 1 and dst.dim() == 1 and slots.dim() == 1
             and coef.dim() == 3 and coef.shape[1] == 2 and coef.shape[0] >= 2 and paths.dim() == 2 and paths.shape[1] == 8
             and pairs.dim() == 2 and pairs.shape[1] == 4 and mj.dim() == 1 and c.dim() == 1 and mj.shape[0] == c.shape[0]
             and path_block.dim() == 2 and path_block.shape[1] == 2 and path_block.shape[0] == paths.shape[0],
             "input shapes do not match the operator's signature")
    n_send, x_width, n_edges, y_dim, n_recv = x.shape[0], x.shape[1], sh.shape[0], sh.shape[1], slots.shape[0]
    _require(r.shape[0] == n_edges and src.shape[0] == n_edges and dst.shape[0] == n_edges,
             "sh, r, src and dst disagree on the edge count")
    _require(math.isfinite(inv_h) and inv_h > 0, "inv_h must be finite and positive")
    p = paths.long()
    mul, d_k, n_cols, n_pairs = p[:, 0], p[:, 1], coef.shape[2], pairs.shape[0]
    padmul = (mul + 7) // 8 * 8
    _require(((mul >= 1) & (mul <= 1024) & (d_k >= 1) & (d_k <= 9) & (d_k % 2 == 1) & (p[:, 2] >= 0) & (p[:, 3] >= 0)
              & (p[:, 3] + mul <= n_cols) & (p[:, 6] >= 0) & (p[:, 6] <= p[:, 7]) & (p[:, 7] <= n_pairs)
              & (p[:, 5] >= mul)).all(), "path table out of range")
    counts = p[:, 7] - p[:, 6]
    owner = torch.repeat_interleave(torch.arange(p.shape[0]), counts)
    first = torch.cumsum(counts, 0) - counts
    q = pairs.long()[p[owner, 6] + torch.arange(owner.shape[0]) - first[owner]]
    _require(((q[:, 0] >= 0) & (q[:, 0] < d_k[owner]) & (q[:, 1] >= 0) & (q[:, 1] % padmul[owner] == 0)
              & (q[:, 1] // padmul[owner] < 9) & (p[owner, 2] + q[:, 1] + padmul[owner] <= x_width) & (q[:, 2] >= 0)
              & (q[:, 2] <= q[:, 3]) & (q[:, 3] <= mj.shape[0])).all(), "pair table out of range")
    _require(((mj >= 0) & (mj < y_dim)).all(), "harmonic index out of range")
    mid = int((mul * d_k).sum())
    _require(mid == mid_dim, f"mid_dim {mid_dim} does not match the path table ({mid})")
    start, width = path_block[:, 0], path_block[:, 1]
    col = p[:, 4] - start
    _require(((start >= 0) & (width >= 1) & (start + width <= mid) & (col >= 0)
              & (col + (d_k - 1) * p[:, 5] + mul <= width)).all(), "path blocks out of range")
    if n_edges:
        _require(int(src.min()) >= 0 and int(src.max()) < n_send, "a sender index is out of range")
        _require(int(dst.min()) >= 0 and int(dst.max()) < n_recv, "a receiver index is out of range")


@uvu_conv_table.register_fake
def _(x, sh, r, src, dst, slots, coef, inv_h, paths, pairs, mj, c, path_block, mid_dim):
    return x.new_empty((slots.shape[0] * mid_dim,))


ONNX_INPUTS = (("x", "tensor(float)"), ("sh", "tensor(float)"), ("r", "tensor(float)"), ("src", "tensor(int64)"),
               ("dst", "tensor(int64)"), ("slots", "tensor(float)"), ("coef", "tensor(float)"),
               ("inv_h", "tensor(float)"), ("paths", "tensor(int32)"), ("pairs", "tensor(int32)"),
               ("m_j", "tensor(int32)"), ("c", "tensor(float)"), ("path_block", "tensor(int64)"))


def onnx_schema():
    """The ONNX schema of ``ai.cdp.UvuConvTable`` (kernels/ort_ops.cc), registered with onnx once (the
    exporter builds nodes against schemas)."""
    import onnx  # noqa: PLC0415  (optional dependency, only while exporting)
    from onnx.defs import OpSchema  # noqa: PLC0415

    if not onnx.defs.has("UvuConvTable", "ai.cdp"):
        schema = OpSchema("UvuConvTable", "ai.cdp", 1, doc="ChargE3Net convolution aggregate (cdp's fused kernel)",
                          inputs=[OpSchema.FormalParameter(n, t) for n, t in ONNX_INPUTS],
                          outputs=[OpSchema.FormalParameter("aggregate", "tensor(float)")])
        onnx.defs.register_schema(schema)
    return onnx.defs.get_schema("UvuConvTable", 1, "ai.cdp")


def onnx_translation(x, sh, r, src, dst, slots, coef, inv_h: float, paths, pairs, mj, c, path_block, mid_dim: int):
    """``cdp::uvu_conv_table`` as the node ``ai.cdp.UvuConvTable`` (torch.onnx custom translation)."""
    from onnxscript import opset18 as op  # noqa: PLC0415  (optional dependency, only while exporting)
    from onnxscript import values  # noqa: PLC0415

    node = values.Op(values.Opset("ai.cdp", 1), "UvuConvTable", onnx_schema())
    return node(x, sh, r, src, dst, slots, coef, op.Constant(value_floats=[float(inv_h)]), paths, pairs, mj, c,
                path_block)


class KernelConvolution(nn.Module):
    """One probe convolution (a :class:`FastE3Convolution`) around ``cdp::uvu_conv_table`` (module docstring).

    ``forward(sender [Ns, ds], receiver [R, dr], edge_index [2, E], sh [E, dY], r [E] Å)`` → the pre-gate
    output [R, d_out]; float32 (the kernel's table dtype).  Raises RuntimeError when the convolution has no
    radial table (a radial network that cannot be tabulated) or the kernel cannot run its plan."""

    def __init__(self, conv: nn.Module, basis: nn.Module, rtol: float, keep=None):
        super().__init__()
        dtype = torch.float32
        plan = conv.plan
        if not plan.native_ok():
            raise RuntimeError("this convolution's multiplicities exceed the kernel's limit")
        # ``keep``: only outputs of these irreps types are read (the last probe layer under a scalar readout):
        # the kernel then runs the paths they need only (FastE3Convolution.restricted); the others are zero
        whole_mid = int(plan.mid_simple.dim)
        cpu = torch.device("cpu")
        restricted = conv.restricted(frozenset(keep), basis, dtype, cpu, rtol) if keep is not None else None
        kept_blocks = list(range(len(plan.mid_simple)))
        if restricted is not None:
            plan, table, kept_blocks = restricted
        else:
            table = conv.radial_table(basis, dtype, cpu, rtol, knots=True)
        if table is None:
            raise RuntimeError(f"no radial table ({conv.extra_repr()})")
        position = {b: j for j, b in enumerate(kept_blocks)}
        norm = 1.0 / float(conv.num_neighbors) ** 0.5
        lin1, b1 = linear_matrix(conv.lin1, conv.irreps_sender.dim)
        pack = plan.pack_index  # packed column → lin1 output column (lin1.irreps_out.dim: a zero column)
        lin1 = torch.cat([lin1, lin1.new_zeros((lin1.shape[0], 1))], dim=1)[:, pack]
        b1 = torch.cat([b1, b1.new_zeros(1)])[pack]
        self.register_buffer("lin1", lin1.to(dtype))
        bias = _maybe_bias(b1)
        self.register_buffer("lin1_bias", None if bias is None else bias.to(dtype))
        paths, pairs, mj, c = plan.on(table.knots, "kernel")
        self.register_buffer("knots", table.knots.detach().clone())
        self.register_buffer("paths", paths.clone())
        self.register_buffer("pairs", pairs.clone())
        self.register_buffer("mj", mj.clone())
        self.register_buffer("c", c.to(dtype).clone())
        self.register_buffer("path_block", plan.path_block.clone())
        self.inv_h = float(table.inv_h)
        self.mid = [(mul, ir.dim) for mul, ir in plan.mid_simple]
        self.mid_dim = int(plan.mid_simple.dim)
        # lin2 and lin3 per instruction on the mid blocks (1/√n and lin3's 0.1 folded in), their biases
        like = torch.empty(0, dtype=dtype)
        self.lin2_ins, self.lin3_ins = [], []
        for name, lin, scale, out in (("lin2", conv.lin2, norm, self.lin2_ins), ("lin3", conv.lin3, 0.1 * norm, self.lin3_ins)):
            used = [(ins, w) for ins, w in _scaled_weights(lin, scale, like)
                    if ins.i_in in position and (name == "lin3" or keep is None or lin.irreps_out[ins.i_out].ir in keep)]
            for n, (ins, w) in enumerate(used):
                self.register_buffer(f"{name}_{n}", w.detach().clone())
                out.append((position[ins.i_in], ins.i_out))
        _, b2 = linear_matrix(conv.lin2, whole_mid, torch.zeros(0, dtype=torch.long))
        _, b3 = linear_matrix(conv.lin3, whole_mid, torch.zeros(0, dtype=torch.long))
        bias = _maybe_bias(b2)
        self.register_buffer("lin2_bias", None if bias is None else bias.to(dtype))
        self.angle_bias = float(0.1 * b3[0])
        self.out2 = [(mul, ir.dim) for mul, ir in conv.lin2.irreps_out]
        self.self_connection = DenseSelfConnection(conv, dtype)

    def _linear(self, name: str, instructions, outs, blocks: List[Tensor], rows) -> Tensor:
        pieces: List[Tensor] = []
        for k, (mul_out, d) in enumerate(outs):
            y = None
            for n, (i_in, i_out) in enumerate(instructions):
                if i_out != k:
                    continue
                block = blocks[i_in]
                part = (block.reshape(-1, block.shape[2]) @ getattr(self, f"{name}_{n}")).reshape(rows, d, mul_out)
                y = part if y is None else y + part
            if y is None:
                pieces.append(blocks[0].new_zeros((rows, mul_out * d)))
            else:
                pieces.append(y.transpose(1, 2).reshape(rows, mul_out * d) if d > 1 else y.reshape(rows, mul_out))
        return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]

    def forward(self, sender: Tensor, receiver: Tensor, edge_index: Tensor, sh: Tensor, r: Tensor) -> Tensor:
        rows = receiver.shape[0]
        x = sender @ self.lin1
        if self.lin1_bias is not None:
            x = x + self.lin1_bias
        slots = receiver[:, 0]
        flat = torch.ops.cdp.uvu_conv_table(x, sh, r, edge_index[0], edge_index[1], slots, self.knots, self.inv_h,
                                            self.paths, self.pairs, self.mj, self.c, self.path_block, self.mid_dim)
        blocks: List[Tensor] = []
        at = 0
        for mul, d in self.mid:
            blocks.append(flat[at * rows : (at + mul * d) * rows].reshape(rows, d, mul))
            at += mul * d
        conv = self._linear("lin2", self.lin2_ins, self.out2, blocks, rows)
        if self.lin2_bias is not None:
            conv = conv + self.lin2_bias
        angle = self._linear("lin3", self.lin3_ins, [(1, 1)], blocks, rows)
        if self.angle_bias != 0.0:
            angle = angle + self.angle_bias
        return self.self_connection.mix(receiver, angle, conv)


CUSTOM_OPS = {"domain": "ai.cdp", "ops": ["UvuConvTable"], "provider": "cdp.plugins.backbones.chargee3net.ort_ops:build"}
TORCH_OPS = {"namespace": "cdp", "ops": ["uvu_conv_table"], "provider": "cdp.plugins.backbones.chargee3net.kernel_capture:torch_ops"}


@torch_ops_provider
def torch_ops() -> List[str]:
    """The PyTorch operators this module registers when imported (``cdp::uvu_conv_table``), once the fused
    kernel library they run is loaded (compiled on first use).  Raises RuntimeError when it cannot be."""
    if native.load() is None:
        raise RuntimeError("the fused kernel library cannot be built or loaded here (a C compiler is needed; "
                           "CDP_NATIVE=0 disables it)")
    return ["cdp::uvu_conv_table"]


def capture_with_kernel(backbone: nn.Module, rtol: float = DEFAULT_RTOL) -> CaptureBackbone:
    """The capture form with every probe convolution a :class:`KernelConvolution` (``--ops cdp``); float32
    and the fast backend only.  Raises CdpError when the kernel cannot run this model."""
    if next(backbone.parameters()).dtype != torch.float32:
        raise CdpError("--ops cdp exports float32 models only (the kernel's radial tables are float32)")
    if not all(isinstance(c, FastE3Convolution) for c in backbone.probe_convs):
        raise CdpError(f"--ops cdp exports ChargE3Net with backend 'fast' only (this one has backend "
                       f"'{backbone.backend}'); use --ops standard")
    native.load()
    try:
        last, keep = len(backbone.probe_convs) - 1, backbone._last_layer_keep()
        convs = nn.ModuleList(KernelConvolution(c, backbone.probe_basis, backbone.radial_rtol, keep if i == last else None)
                              for i, c in enumerate(backbone.probe_convs))
    except RuntimeError as exc:
        raise CdpError(f"--ops cdp: {exc}") from None
    return CaptureBackbone(backbone, rtol=rtol, probe_convs=convs, custom_ops=CUSTOM_OPS, torch_ops=TORCH_OPS,
                           translations={torch.ops.cdp.uvu_conv_table.default: onnx_translation}).eval()
