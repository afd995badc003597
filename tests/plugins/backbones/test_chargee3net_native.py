"""The fused C kernel of the fast ChargE3Net backend: same numbers as the PyTorch path, threads, fallback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cdp.plugins.backbones.chargee3net import native
from cdp.plugins.backbones.chargee3net.fast_conv import FastE3Convolution

from tests.helpers.chargee3net import _pair, _run, _structure

pytestmark = pytest.mark.skipif(native.load() is None, reason="no C compiler: the kernel cannot be built here")


def _set(model, **attrs):
    for m in model.modules():
        if isinstance(m, FastE3Convolution):
            for k, v in attrs.items():
                setattr(m, k, v)


def _both_paths(model, structure, dtype):
    out = []
    for use in (False, True):
        _set(model, use_native=use)
        with torch.no_grad():
            layers, rho, _ = _run(model, *structure, dtype)
        out.append([*layers, rho])
    _set(model, use_native=True)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lmax,mul", [(1, 9), (2, 24), (3, 40), (4, 61)])
def test_kernel_equals_pytorch_path(lmax, mul, dtype):
    # multiplicities that are not multiples of 8 exercise the zero-padded vector tails
    _, fast = _pair(lmax, mul=mul, seed=10 + lmax, dtype=dtype)
    s = _structure(seed=lmax, n_atoms=5, n_probes=37)
    torch_path, kernel = _both_paths(fast, s, dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for a, b in zip(torch_path, kernel):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= tol * a.abs().max()


def test_kernel_is_used_for_inference_and_training():
    _, fast = _pair(2, seed=20, dtype=torch.float32)
    conv = next(m for m in fast.modules() if isinstance(m, FastE3Convolution))
    x = torch.zeros(3, conv.irreps_sender.dim)
    assert conv.implementation(x, "inference").name == "native"
    assert conv.implementation(x, "autograd").name == "native"  # the kernels' autograd function
    assert conv.implementation(x.double(), "autograd").name == "native"
    assert conv.implementation(x.half(), "inference").name == "blocked"  # no kernel for this dtype
    assert conv.implementation(x, "capture").name == "e3nn"
    conv.use_native = False
    assert conv.implementation(x, "inference").name == "blocked"


@pytest.mark.parametrize("chunk", [3, 64, 10**6])
def test_threads_and_blocks_give_the_same_result(chunk):
    _, fast = _pair(2, mul=20, seed=21, dtype=torch.float64)
    s = _structure(seed=7, n_atoms=6, n_probes=50)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            _set(fast, edge_chunk=chunk)
            with torch.no_grad():
                layers, rho, _ = _run(fast, *s, torch.float64)
            results.append([*layers, rho])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert float((a - b).abs().max()) <= 1e-12 * float(a.abs().max())


@pytest.mark.slow  # ~30-50 s: runs in CI's slow step
def test_disabled_kernel_falls_back_with_same_numbers(tmp_path):
    code = (
        "import warnings, torch\n"
        "from cdp.plugins.backbones.chargee3net import native\n"
        "assert native.load() is None\n"
        "print('fallback ok')\n"
    )
    env = {"CDP_NATIVE": "0", "CDP_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "fallback ok" in proc.stdout


@pytest.mark.slow  # ~30-50 s: runs in CI's slow step
def test_missing_compiler_warns_once_and_falls_back(tmp_path):
    code = (
        "import warnings\n"
        "from cdp.plugins.backbones.chargee3net import native\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    assert native.load() is None and native.load() is None\n"
        "msgs = [str(x.message) for x in w]\n"
        "assert len(msgs) == 1 and 'PyTorch fast path' in msgs[0], msgs\n"
        "print('warned once')\n"
    )
    env = {"CC": str(tmp_path / "no-such-compiler"), "CDP_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warned once" in proc.stdout
    assert not list(tmp_path.glob("kernels/*.so")) and not list(tmp_path.glob("kernels/*.tmp"))


def test_compiled_library_is_cached_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    assert native.load() is not None
    built = list((tmp_path / "kernels").glob("uvu_conv-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_state", {})
    assert native.load() is not None  # second load reuses the library, no rebuild
    assert built[0].stat().st_mtime_ns == stamp
    assert not list((tmp_path / "kernels").glob("*.tmp"))


@pytest.mark.parametrize("use_native", [True, False])
def test_batch_touching_few_senders_equals_e3nn(use_native):
    # a probe batch in a large cell: 3 of 50 atoms send; only they go through lin1 (decoder memory flat in N)
    from e3nn import o3

    from cdp.plugins.backbones.chargee3net.conv import E3Convolution

    torch.manual_seed(4)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn keeps constants in the default dtype at build time
    args = ("6x0e+3x1o+2x2e", "4x0e", o3.Irreps.spherical_harmonics(2), "5x0e+2x1o+2x2e")
    kw = dict(num_basis=6, num_neighbors=3.0, radial_neurons=8)
    try:
        ref = E3Convolution(*args, **kw)
        fast = FastE3Convolution(*args, **kw)
    finally:
        torch.set_default_dtype(default)
    fast.load_state_dict(ref.state_dict())
    fast.use_native = use_native
    sender = torch.randn(50, ref.irreps_sender.dim, dtype=torch.float64)
    receiver = torch.randn(7, ref.irreps_receiver.dim, dtype=torch.float64)
    src = torch.tensor([3, 17, 40, 17, 3, 40, 40, 3])
    dst = torch.tensor([0, 0, 1, 2, 4, 4, 6, 6])
    vec = torch.randn(len(src), 3, dtype=torch.float64)
    sh = o3.spherical_harmonics(ref.irreps_sh, vec, normalize=True, normalization="component")
    emb = torch.rand(len(src), 6, dtype=torch.float64)
    with torch.no_grad():
        a = ref(sender, receiver, torch.stack([src, dst]), sh, emb)
        b = fast(sender, receiver, torch.stack([src, dst]), sh, emb)
    assert float((a - b).abs().max()) <= 1e-12 * float(a.abs().max())


# -- the kernel cache: per-ISA builds, verified before loading -------------------------------------------
def _fresh(monkeypatch, tmp_path, isa=None):
    monkeypatch.setenv("CDP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    if isa is None:
        monkeypatch.delenv("CDP_NATIVE_ISA", raising=False)
    else:
        monkeypatch.setenv("CDP_NATIVE_ISA", isa)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-sidecar"])
def test_damaged_cached_library_is_rebuilt_not_loaded(tmp_path, monkeypatch, damage):
    _fresh(monkeypatch, tmp_path)
    path = native.build("generic")  # built, never loaded in this process (damaging a mapped file is SIGBUS)
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        path.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    else:
        (path.parent / (path.name + ".sha256")).unlink()
    assert not native.verified(path)
    assert native.build("generic") == path and native.verified(path)
    assert len(path.read_bytes()) == len(good)
    assert not list(path.parent.glob("*.tmp"))


def test_cache_key_has_isa_flags_and_compiler_version(tmp_path, monkeypatch):
    _fresh(monkeypatch, tmp_path)
    cc = native.find_compiler()
    paths = {isa: native.library_path(cc, isa) for isa in native.available_isas()}
    assert len(set(paths.values())) == len(paths)
    assert all(f"-{native.machine()}-{isa}-" in p.name for isa, p in paths.items())
    monkeypatch.setattr(native, "compiler_version", lambda c: "cc 99.0")
    assert native.library_path(cc, "generic") != paths["generic"]
    assert "-march=native" not in native.compile_command(cc, native.available_isas()[0], "x")


def test_generic_build_compiles_the_plain_c_path():
    cc = native.find_compiler()

    def macros(isa):
        cmd = [cc, *native.isa_flags(isa), "-dM", "-E", "-x", "c", "/dev/null"]
        return set(line.split()[1] for line in subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines())

    assert "__AVX2__" not in macros("generic") and "__FMA__" not in macros("generic")
    if "avx2" in native.available_isas():
        assert {"__AVX2__", "__FMA__"} <= macros("avx2")
    if "avx512" in native.available_isas():
        assert {"__AVX2__", "__FMA__", "__AVX512F__"} <= macros("avx512")


def test_isa_selection_from_cpu_flags_and_machine(monkeypatch):
    monkeypatch.delenv("CDP_NATIVE_ISA", raising=False)
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(native, "cpu_flags", lambda: {"sse2", "avx", "avx2", "fma"})
    assert native.available_isas() == ["avx2", "generic"] and native.select_isa() == "avx2"
    monkeypatch.setenv("CDP_NATIVE_ISA", "avx512")
    with pytest.raises(RuntimeError, match="CDP_NATIVE_ISA=avx512: this CPU lacks its instructions"):
        native.select_isa()
    monkeypatch.setenv("CDP_NATIVE_ISA", "neon")
    with pytest.raises(RuntimeError, match="CDP_NATIVE_ISA=neon is not a build for x86_64"):
        native.select_isa()
    monkeypatch.delenv("CDP_NATIVE_ISA")
    monkeypatch.setattr(native, "cpu_flags", lambda: None)  # macOS: no /proc/cpuinfo flags line
    assert native.available_isas() == ["generic"]
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    assert native.available_isas() == ["generic"] and native.isa_flags("generic") == ()
    assert native.machine() == "aarch64"


@pytest.mark.parametrize("isa", native.available_isas())
def test_each_forced_isa_gives_the_e3nn_numbers(tmp_path, monkeypatch, isa):
    _fresh(monkeypatch, tmp_path, isa)
    assert native.load() is not None and native._state["isa"] == isa
    ref, fast = _pair(2, mul=20, seed=31, dtype=torch.float32)
    s = _structure(seed=3, n_atoms=5, n_probes=40)
    with torch.no_grad():
        a_layers, a, _ = _run(ref, *s, torch.float32)
        b_layers, b, _ = _run(fast, *s, torch.float32)
    for x, y in zip([*a_layers, a], [*b_layers, b]):
        assert float((x - y).abs().max()) <= 2e-6 * float(x.abs().max())
