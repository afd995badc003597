"""The tensor-product–scatter seam: every implementation computes e3nn's sum; selection; the kernel directly."""

from __future__ import annotations

import ctypes

import pytest
import torch
from e3nn import o3

from cdp.plugins.backbones.chargee3net import native
from cdp.plugins.backbones.chargee3net.conv import E3Convolution, _linear
from cdp.plugins.backbones.chargee3net.fast_conv import DenseLinear, FastE3Convolution, linear_channels_last
from cdp.plugins.backbones.chargee3net.tp_scatter import (
    BlockedTPScatter, E3nnTPScatter, NativeTPScatter, UvuPlan, loaded_library, mode, select,
    set_capture_implementation,
)

HAVE_KERNEL = native.load() is not None


def _conv(dtype=torch.float64, sender="5x0e+3x1o+2x1e+9x2e", lmax=2, out="4x0e+3x1o+2x1e+3x2e+1x2o"):
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return FastE3Convolution(sender, "2x0e", o3.Irreps.spherical_harmonics(lmax), out, 4, 3.0, radial_neurons=6)
    finally:
        torch.set_default_dtype(default)


def _inputs(conv, num_senders=6, num_receivers=5, num_edges=40, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(num_senders, conv.irreps_sender.dim, generator=g, dtype=dtype)
    vec = torch.randn(num_edges, 3, generator=g, dtype=dtype)
    sh = o3.spherical_harmonics(conv.irreps_sh, vec, normalize=True, normalization="component")
    weight = torch.nn.functional.pad(torch.randn(num_edges, conv.tp.weight_numel, generator=g, dtype=dtype),
                                     (0, conv.radial_width() - conv.tp.weight_numel))
    src = torch.randint(0, num_senders, (num_edges,), generator=g)
    dst = torch.randint(0, num_receivers, (num_edges,), generator=g).sort().values
    ptr = torch.searchsorted(dst, torch.arange(num_receivers + 1)).tolist()
    return h, sh, weight, src, dst, ptr, num_receivers


def _as_channels_last(plan: UvuPlan, m: torch.Tensor) -> torch.Tensor:
    out = m.new_zeros((m.shape[0], plan.acc_width))
    return out.index_copy(1, plan.channels_last_of_mid, m)


def _impls(conv):
    impls = [BlockedTPScatter(conv.plan)]
    if HAVE_KERNEL:
        impls.append(NativeTPScatter(conv.plan, loaded_library()))
    return impls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_implementation_equals_e3nn_values_and_gradients(dtype):
    conv = _conv(dtype)
    h, sh, weight, src, dst, ptr, r = _inputs(conv, dtype=dtype)
    probe = torch.randn(r, conv.plan.acc_width, dtype=dtype, generator=torch.Generator().manual_seed(3))
    results = []
    for impl in [E3nnTPScatter(conv.plan, conv.tp), *_impls(conv)]:
        xs = [t.clone().requires_grad_() for t in (h, sh, weight)]
        m = impl(impl.senders(xs[0]), xs[1], xs[2], src, dst, ptr, r)
        if impl.layout == "e3nn":
            m = _as_channels_last(conv.plan, m)
        assert m.shape == (r, conv.plan.acc_width)
        (m * probe).sum().backward()
        results.append((impl.name, m.detach(), [t.grad for t in xs]))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    name0, want, grads0 = results[0]
    assert not torch.equal(want, torch.zeros_like(want))
    for name, got, grads in results[1:]:
        assert (got - want).abs().max() <= tol * want.abs().max(), name
        for a, b in zip(grads0, grads):
            assert (a - b).abs().max() <= tol * a.abs().max(), name


@pytest.mark.parametrize("track", [False, True])
def test_linear_channels_last_equals_e3nn_linear(track):
    torch.manual_seed(2)
    lin = _linear("3x0e+2x1o+4x2e+1x1o", "2x0e+3x1o+2x2e").double()
    with torch.no_grad():
        lin.weight.normal_()
    x = torch.randn(7, lin.irreps_in.dim, dtype=torch.float64)
    # channels-last copy of x with 5 slack columns
    cols = []
    for sl, (mul, ir) in zip(lin.irreps_in.slices(), lin.irreps_in):
        cols.append(x[:, sl].view(7, mul, ir.dim).transpose(1, 2).reshape(7, -1))
    acc = torch.cat(cols + [torch.full((7, 5), 1e3, dtype=torch.float64)], dim=1)
    got = linear_channels_last(lin, acc, 0.5, track)
    assert (got - 0.5 * lin(x)).abs().max() <= 1e-12 * lin(x).abs().max()


def test_dense_linear_equals_e3nn_linears_side_by_side():
    """[lin_a | lin_b] as one matrix gathered from e3nn's weight views: values and weight gradients."""
    torch.manual_seed(3)
    lin_a = _linear("3x0e+2x1o+4x2e+1x1o", "2x0e+3x1o+2x2e").double()
    lin_b = _linear("3x0e+2x1o+4x2e+1x1o", "0e").double()
    x = torch.randn(6, lin_a.irreps_in.dim, dtype=torch.float64)
    dense = DenseLinear([lin_a, lin_b], lin_a.irreps_in.dim, lin_a.irreps_out.dim + 1, False,
                        [None, torch.tensor([lin_a.irreps_out.dim])])
    got = x @ dense.matrix(x)
    want = torch.cat([lin_a(x), lin_b(x)], dim=1)
    assert (got - want).abs().max() <= 1e-12 * want.abs().max()
    probe = torch.randn_like(want)
    grads = []
    for out in (got, want):
        lin_a.zero_grad()
        lin_b.zero_grad()
        (out * probe).sum().backward(retain_graph=True)
        grads.append(torch.cat([lin_a.weight.grad, lin_b.weight.grad]))
    assert (grads[0] - grads[1]).abs().max() <= 1e-12 * grads[1].abs().max()


def test_selection_is_one_decision():
    conv = _conv(torch.float32)
    x = torch.zeros(2, conv.irreps_sender.dim)
    assert isinstance(select(conv.plan, conv.tp, "capture", x), E3nnTPScatter)
    assert isinstance(select(conv.plan, conv.tp, "inference", x, backend="e3nn"), E3nnTPScatter)
    assert isinstance(select(conv.plan, conv.tp, "inference", x, backend="blocked"), BlockedTPScatter)
    assert isinstance(select(conv.plan, conv.tp, "inference", x.half()), BlockedTPScatter)
    if HAVE_KERNEL:
        assert isinstance(select(conv.plan, conv.tp, "autograd", x), NativeTPScatter)
    with pytest.raises(ValueError, match="unknown mode"):
        select(conv.plan, conv.tp, "train", x)


def test_mode_inference_autograd_capture():
    seen = []
    with torch.no_grad():
        seen.append(mode())
    seen.append(mode())

    def f(t):
        seen.append(mode())
        return t * 2

    torch.jit.trace(f, torch.ones(2), check_trace=False)
    assert seen == ["inference", "autograd", "capture"]


@pytest.mark.skipif(not HAVE_KERNEL, reason="no C compiler: the kernel cannot be built here")
def test_forward_never_loads_the_library(monkeypatch):
    """The library is loaded when the convolution is built; forward and backward only use it."""
    conv = _conv(torch.float64)
    monkeypatch.setattr(native, "load", lambda: pytest.fail("native.load() called from forward"))
    h, sh, weight, src, dst, ptr, r = _inputs(conv)
    emb = torch.randn(len(src), 4, dtype=torch.float64)
    receiver = torch.randn(r, 2, dtype=torch.float64)
    with torch.no_grad():
        a = conv(h, receiver, torch.stack([src, dst]), sh, emb)
    b = conv(h.requires_grad_(), receiver, torch.stack([src, dst]), sh, emb)
    b.sum().backward()
    ref = E3Convolution(conv.irreps_sender, "2x0e", conv.irreps_sh, conv.irreps_out, 4, 3.0, radial_neurons=6).double()
    ref.load_state_dict(conv.state_dict())
    with torch.no_grad():
        want = ref(h, receiver, torch.stack([src, dst]), sh, emb)
    assert (a - want).abs().max() <= 1e-12 * want.abs().max()
    assert (b.detach() - want).abs().max() <= 1e-12 * want.abs().max()


@pytest.mark.skipif(not HAVE_KERNEL, reason="no C compiler: the kernel cannot be built here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_entry_directly(dtype):
    """The C entry point on a hand-written plan: one path 0e ⊗ 1o → 1o (mul 3, coefficient c per m):
    acc[dst, m, u] += w[e, u] · c · Y[e, m] · x[src, u], against that sum written out."""
    fn = native.entry(loaded_library(), dtype)
    mul, pad = 3, native.padded(3)
    c = 0.7
    num_edges, num_senders, num_receivers = 5, 2, 3
    g = torch.Generator().manual_seed(0)
    src = torch.tensor([1, 0, 1, 1, 0])
    dst = torch.tensor([0, 0, 1, 2, 2])
    y = torch.randn(num_edges, 4, generator=g, dtype=dtype)  # harmonics 0e + 1o
    w = torch.zeros(num_edges, native.round_up(mul + native.ACC_SLACK, 16), dtype=dtype)
    w[:, :mul] = torch.randn(num_edges, mul, generator=g, dtype=dtype)
    x = torch.zeros(num_senders, pad, dtype=dtype)
    x[:, :mul] = torch.randn(num_senders, mul, generator=g, dtype=dtype)
    acc = torch.zeros(num_receivers, native.round_up(3 * mul + native.ACC_SLACK, 16), dtype=dtype)
    # path: mul, d_k, x_off, w_off, acc_off, row stride, first pair, end pair; pairs: m_k, m_i·pad, terms
    paths = torch.tensor([[mul, 3, 0, 0, 0, mul, 0, 3]], dtype=torch.int32)
    pairs = torch.tensor([[m, 0, m, m + 1] for m in range(3)], dtype=torch.int32)
    mj = torch.tensor([1, 2, 3], dtype=torch.int32)
    coeff = torch.full((3,), c, dtype=dtype)
    status = fn(0, num_edges, src.data_ptr(), dst.data_ptr(), y.data_ptr(), 4, w.data_ptr(), w.shape[1],
                x.data_ptr(), pad, acc.data_ptr(), acc.shape[1], 1, paths.data_ptr(), pairs.data_ptr(),
                mj.data_ptr(), coeff.data_ptr())
    assert status == 0
    want = torch.zeros(num_receivers, 3, mul, dtype=torch.float64)
    for e in range(num_edges):
        for m in range(3):
            want[dst[e], m] += w[e, :mul].double() * c * y[e, 1 + m].double() * x[src[e], :mul].double()
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    assert (acc[:, : 3 * mul].double().view(num_receivers, 3, mul) - want).abs().max() <= tol * want.abs().max()
    assert not acc[:, 3 * mul :].any()  # slack columns gain exact zeros
    assert isinstance(fn, ctypes._CFuncPtr)


def test_a_capture_implementation_plugs_into_the_seam():
    """An installed capture implementation is what tracing records (here the blocked PyTorch one, whose
    operations trace), and the traced convolution computes e3nn's function on other inputs too."""
    conv = _conv(torch.float64)
    ref = E3Convolution(conv.irreps_sender, "2x0e", conv.irreps_sh, conv.irreps_out, 4, 3.0, radial_neurons=6).double()
    ref.load_state_dict(conv.state_dict())

    def args(seed, num_edges):
        h, sh, _, src, dst, _, r = _inputs(conv, num_edges=num_edges, seed=seed)
        g = torch.Generator().manual_seed(seed)
        return (h, torch.randn(r, 2, generator=g, dtype=torch.float64), torch.stack([src, dst]), sh,
                torch.randn(len(src), 4, generator=g, dtype=torch.float64))

    made = []
    previous = set_capture_implementation(lambda plan, tp: made.append(1) or BlockedTPScatter(plan))
    try:
        with torch.no_grad():
            traced = torch.jit.trace(conv, args(1, 40), check_trace=False)
    finally:
        set_capture_implementation(previous)
    assert made  # the seam's capture implementation was recorded, not e3nn's convolution
    with torch.no_grad():
        for seed, num_edges in ((1, 40), (2, 40)):
            a = args(seed, num_edges)
            want = ref(*a)
            assert (traced(*a) - want).abs().max() <= 1e-12 * want.abs().max()


def test_cached_e3nn_modules_equal_fresh_constructions():
    """Copies of e3nn modules built once (no e3nn function patched) equal new constructions: the same
    weights from the same seed, the same normalisation constants, the same outputs."""
    from e3nn import o3
    from e3nn.nn import FullyConnectedNet, Gate

    from cdp.plugins.backbones.chargee3net import _build_cache

    for _ in range(2):  # the second round copies the cached templates
        torch.manual_seed(3)
        cached = _build_cache.fully_connected_net([6, 16, 40], torch.nn.functional.silu)
        after_cached = torch.rand(3)
        torch.manual_seed(3)
        fresh = FullyConnectedNet([6, 16, 40], torch.nn.functional.silu)
        after_fresh = torch.rand(3)
        assert torch.equal(after_cached, after_fresh)  # the random stream is where a construction leaves it
        x = torch.randn(5, 6)
        assert torch.equal(cached(x), fresh(x))
        args = (o3.Irreps("4x0e+2x0o"), [torch.nn.functional.silu, torch.tanh], o3.Irreps("3x0e"),
                [torch.sigmoid], o3.Irreps("3x1o"))
        g_cached, g_fresh = _build_cache.gate(*args), Gate(*args)
        y = torch.randn(5, g_fresh.irreps_in.dim)
        assert torch.equal(g_cached(y), g_fresh(y))
