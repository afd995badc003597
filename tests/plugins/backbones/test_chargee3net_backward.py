"""Training through the fused kernels: the backward kernel's gradients against e3nn autograd and finite differences."""

from __future__ import annotations

import pytest
import torch

from cdp.plugins.backbones.chargee3net import native
from cdp.plugins.backbones.chargee3net.conv import E3Convolution
from cdp.plugins.backbones.chargee3net.fast_conv import FastE3Convolution
from cdp.plugins.backbones.chargee3net.tp_scatter import BlockedTPScatter, FusedTPScatter, NativeTPScatter

from tests.helpers.chargee3net import _pair, _run, _structure

pytestmark = pytest.mark.skipif(native.load() is None, reason="no C compiler: the kernel cannot be built here")


def _conv_pair(dtype, sender="3x0e+2x1o+1x2e", receiver="2x0e+1x1e", out="4x0e+2x1o+2x1e+1x2e", lmax=2, seed=0):
    """(E3Convolution with perturbed weights, FastE3Convolution holding the same state_dict), tiny."""
    from e3nn import o3

    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        args = (sender, receiver, o3.Irreps.spherical_harmonics(lmax), out, 4, 3.0)
        ref = E3Convolution(*args, radial_neurons=6)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.3 * torch.randn_like(p))
        fast = FastE3Convolution(*args, radial_neurons=6)
    finally:
        torch.set_default_dtype(default)
    fast.load_state_dict(ref.state_dict())
    return ref.to(dtype), fast.to(dtype)


def _graph(num_senders=4, num_receivers=5, num_edges=17, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_senders, (num_edges,), generator=g)
    dst = torch.randint(0, num_receivers, (num_edges,), generator=g)
    dst[0] = num_receivers - 1  # unsorted, so the convolution sorts
    return torch.stack([src, dst])


def test_fused_function_gradcheck_float64():
    """dL/dx (packed senders), dL/dY and dL/dw of the kernel against finite differences (torch.autograd.gradcheck)."""
    _, fast = _conv_pair(torch.float64)
    edge_index = _graph()
    order = torch.argsort(edge_index[1], stable=True)
    src, dst = edge_index[0, order].contiguous(), edge_index[1, order].contiguous()
    num_receivers = 5
    ptr = torch.searchsorted(dst, torch.arange(num_receivers + 1)).tolist()
    g = torch.Generator().manual_seed(2)
    sender = torch.randn(4, fast.irreps_sender.dim, generator=g, dtype=torch.float64)
    impl = fast.implementation(sender, "autograd")
    assert isinstance(impl, NativeTPScatter)
    with torch.no_grad():
        x = impl.senders(fast.lin1(sender))
    x.requires_grad_()
    sh = torch.randn(len(src), fast.irreps_sh.dim, generator=g, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(len(src), 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        weight = fast.radial_weights(emb)
    weight.requires_grad_()

    def f(x, sh, weight):
        return FusedTPScatter.apply(x, sh, weight, impl, src, dst, ptr, num_receivers)

    assert torch.autograd.gradcheck(f, (x, sh, weight), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads,sender", [(1, "3x0e+2x1o+1x2e"), (3, "3x0e+2x1o+1x2e"), (1, "17x0e+9x1o+3x2e")])
def test_convolution_gradients_equal_e3nn(dtype, threads, sender):
    """Every input and parameter gradient of one convolution equals e3nn autograd's (float64: 1e-10);
    multiplicities above 8 take several 8-channel vectors per path in the float32 kernels."""
    ref, fast = _conv_pair(dtype, sender=sender, seed=3)
    edge_index = _graph(num_senders=6, num_receivers=7, num_edges=90, seed=4)
    g = torch.Generator().manual_seed(5)
    inputs = [torch.randn(6, ref.irreps_sender.dim, generator=g, dtype=torch.float64),
              torch.randn(7, ref.irreps_receiver.dim, generator=g, dtype=torch.float64),
              torch.randn(90, ref.irreps_sh.dim, generator=g, dtype=torch.float64),
              torch.randn(90, 4, generator=g, dtype=torch.float64)]
    weight = torch.randn(7, ref.irreps_out.dim, generator=g, dtype=torch.float64).to(dtype)
    grads = []
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for conv in (ref, fast):
            conv.zero_grad()
            xs = [t.to(dtype).requires_grad_() for t in inputs]
            out = conv(xs[0], xs[1], edge_index, xs[2], xs[3])
            (out * weight).sum().backward()
            grads.append({**{n: p.grad.double() for n, p in conv.named_parameters()},
                          **{f"input{i}": t.grad.double() for i, t in enumerate(xs)}, "out": out.detach().double()})
    finally:
        torch.set_num_threads(saved)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert grads[0].keys() == grads[1].keys()
    for k, want in grads[0].items():
        err = float((want - grads[1][k]).abs().max())
        assert err <= tol * float(want.abs().max().clamp_min(1e-6)), (k, err)


def test_training_runs_through_the_kernels(monkeypatch):
    """Under autograd the fused function carries the convolution (no per-edge PyTorch tensor product)."""
    _, fast = _pair(2, seed=20, dtype=torch.float32)
    calls = []
    original = NativeTPScatter.backward_kernel
    monkeypatch.setattr(NativeTPScatter, "backward_kernel", lambda self, *a: calls.append(1) or original(self, *a))
    monkeypatch.setattr(BlockedTPScatter, "__call__",
                        lambda *a: pytest.fail("the PyTorch tensor-product path ran under training"))
    layers, rho, pos = _run(fast, *_structure(seed=3), torch.float32, requires_grad=True)
    rho.square().sum().backward()
    assert len(calls) == len(fast.atom_convs) + len(fast.probe_convs)
    assert torch.isfinite(pos.grad).all()
