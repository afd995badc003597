"""The fused C kernel of the fast ChargE3Net backend: same numbers as the PyTorch path, threads, fallback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_table_kernel_threads_split_receivers_without_changing_a_bit():
    """float32 inference reads radial tables in the receiver-major kernel; 1 and 3 threads (receiver ranges)
    give the same numbers exactly, and they equal the e3nn backend's to float32 rounding."""
    ref, fast = _pair(2, mul=20, seed=22, dtype=torch.float32)
    ref.eval(), fast.eval()
    s = _structure(seed=9, n_atoms=6, n_probes=70)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            with torch.no_grad():
                layers, rho, _ = _run(fast, *s, torch.float32)
            results.append([*layers, rho])
    finally:
        torch.set_num_threads(threads)
    assert any("radial=table" in conv.extra_repr() for conv in fast.probe_convs)  # the table path ran
    for a, b in zip(*results):
        assert torch.equal(a, b)
    with torch.no_grad():
        want = _run(ref, *s, torch.float32)[1]
    assert float((results[0][-1] - want).abs().max()) <= 2e-5 * float(want.abs().max())


@pytest.mark.slow  # ~30-50 s: runs in CI's slow step
def test_disabled_kernel_falls_back_with_same_numbers(tmp_path):
    code = (
        "import torch\n"
        "from cdp.plugins.backbones.chargee3net import native\n"
        "from cdp.plugins.backbones.chargee3net.fast_conv import FastE3Convolution\n"
        "from tests.helpers.chargee3net import _pair, _run, _structure\n"
        "assert native.load() is None\n"
        "ref, fast = _pair(2, mul=20, seed=22, dtype=torch.float64)\n"
        "conv = next(m for m in fast.modules() if isinstance(m, FastE3Convolution))\n"
        "assert conv.implementation(torch.zeros(3, dtype=torch.float64), 'inference').name == 'blocked'\n"
        "s = _structure(seed=8, n_atoms=5, n_probes=40)\n"
        "with torch.no_grad():\n"
        "    a, b = _run(ref, *s, torch.float64), _run(fast, *s, torch.float64)\n"
        "for x, y in zip([*a[0], a[1]], [*b[0], b[1]]):\n"
        "    assert float((x - y).abs().max()) <= 1e-12 * float(x.abs().max()), float((x - y).abs().max())\n"
        "print('fallback equals e3nn')\n"
    )
    from tests.helpers.paths import REPO

    env = {"CDP_NATIVE": "0", "CDP_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert "fallback equals e3nn" in proc.stdout


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
    assert native.available_isas() == ["neon", "generic"] and native.select_isa() == "neon"
    assert native.isa_flags("neon") == () and native.isa_flags("generic") == ("-DCDP_PLAIN",)
    assert native.machine() == "aarch64"
    monkeypatch.setattr(native.platform, "machine", lambda: "riscv64")
    assert native.available_isas() == ["generic"]


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


# -- the C entry points called directly on hand-made arrays, against numpy ------------------------------
def _plan(rng, blocks=((13, 3), (21, 1), (8, 5)), paths=((0, 3), (0, 1), (1, 5), (2, 3), (2, 1)), y_dim=9):
    """Kernel tables for sender irreps ``blocks`` (mul, d_i) and ``paths`` (block, d_k) with random sparse
    coefficients; packed weight columns in path order, output rows [d_k][mul] per path."""
    x_offs, x_width = [], 0
    for mul, d_i in blocks:
        x_offs.append(x_width)
        x_width += d_i * native.padded(mul)
    path_rows, pair_rows, mj, c = [], [], [], []
    w_off = acc_off = 0
    for b, d_k in paths:
        mul, d_i = blocks[b]
        first = len(pair_rows)
        for m_k in range(d_k):
            for m_i in range(d_i):
                if rng.random() < 0.3:
                    continue
                js = rng.choice(y_dim, size=int(rng.integers(1, 4)), replace=False)
                pair_rows.append([m_k, m_i * native.padded(mul), len(mj), len(mj) + len(js)])
                mj.extend(int(j) for j in js)
                c.extend(rng.standard_normal(len(js)).tolist())
        path_rows.append([mul, d_k, x_offs[b], w_off, acc_off, mul, first, len(pair_rows)])
        w_off += mul
        acc_off += d_k * mul
    return (np.array(path_rows, np.int32), np.array(pair_rows, np.int32).reshape(-1, 4), np.array(mj, np.int32),
            np.array(c), x_width, w_off, acc_off)


def _reference(paths, pairs, mj, c, y, w, x, src, dst, n_recv, acc_width):
    """acc[dst, acc_off + m_k·stride + u] += w[e, w_off + u] · Σ_(m_k, m_i) (Σ_t c_t y[e, m_j]) x[src, x_off + m_i·pad + u]."""
    acc = np.zeros((n_recv, acc_width))
    for mul, d_k, x_off, w_off, acc_off, stride, q0, q1 in paths:
        for m_k in range(d_k):
            t = np.zeros((len(src), mul))
            for q in range(q0, q1):
                if pairs[q, 0] != m_k:
                    continue
                a = y[:, mj[pairs[q, 2] : pairs[q, 3]]] @ c[pairs[q, 2] : pairs[q, 3]]
                t += a[:, None] * x[src, x_off + pairs[q, 1] : x_off + pairs[q, 1] + mul]
            np.add.at(acc, (dst[:, None], acc_off + m_k * stride + np.arange(mul)[None, :]), w[:, w_off : w_off + mul] * t)
    return acc


def _edges(rng, n_send=7, n_recv=9):
    counts = rng.integers(0, 7, n_recv)  # 0 to 6 edges per receiver: groups of 1-4 edges, empty receivers
    dst = np.repeat(np.arange(n_recv), counts).astype(np.int64)
    return rng.integers(0, n_send, len(dst)).astype(np.int64), dst


def _call(fn, args, bounds):
    return [fn(a, b, *args) for a, b in bounds]


def _ptr(t):
    return t.ctypes.data


def _isa_libs():
    return [(isa, native.load_isa(isa)) for isa in native.available_isas()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_entry_equals_numpy_formula(dtype):
    rng = np.random.default_rng(5)
    paths, pairs, mj, c, x_width, w_width, acc_width = _plan(rng)
    src, dst = _edges(rng)
    n_recv, y_dim = 9, 9
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    y = rng.standard_normal((len(src), y_dim)).astype(np_dtype)
    w = np.zeros((len(src), w_width + native.ACC_SLACK), np_dtype)
    w[:, :w_width] = rng.standard_normal((len(src), w_width))
    x = np.zeros((7, x_width), np_dtype)  # padding columns stay zero, as the kernel's layout requires
    block_cols = np.zeros(x_width, bool)
    off = 0
    for mul, d_i in ((13, 3), (21, 1), (8, 5)):
        for m_i in range(d_i):
            block_cols[off + m_i * native.padded(mul) : off + m_i * native.padded(mul) + mul] = True
        off += d_i * native.padded(mul)
    x[:, block_cols] = rng.standard_normal((7, int(block_cols.sum())))
    want = _reference(paths, pairs, mj, c.astype(np_dtype).astype(np.float64), y.astype(np.float64),
                      w.astype(np.float64), x.astype(np.float64), src, dst, n_recv, acc_width)
    cc = c.astype(np_dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for isa, lib in _isa_libs():
        fn = native.entry(lib, dtype)
        acc = np.zeros((n_recv, acc_width + native.ACC_SLACK), np_dtype)
        args = (_ptr(src), _ptr(dst), _ptr(y), y_dim, _ptr(w), w.shape[1], _ptr(x), x_width, _ptr(acc), acc.shape[1],
                len(paths), _ptr(paths), _ptr(pairs), _ptr(mj), _ptr(cc))
        cut = int(np.searchsorted(dst, 4))  # two calls split at a receiver boundary, as threads are
        assert _call(fn, args, [(0, cut), (cut, len(src))]) == [0, 0]
        assert np.abs(acc[:, :acc_width] - want).max() <= tol * np.abs(want).max(), isa
        assert not acc[:, acc_width:].any(), isa  # slack columns gain exact zeros
        bad = paths.copy()
        bad[0, 0] = native.MAX_MUL + 1
        args_bad = args[:11] + (_ptr(bad),) + args[12:]
        assert fn(0, len(src), *args_bad) == 1, isa


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_table_entry_equals_weight_rows_from_the_same_table(dtype):
    """knots [n + 1, 2, W] random (values, h·slopes); the table entry against the w-row entry fed with w
    evaluated in numpy with the cubic Hermite basis."""
    rng = np.random.default_rng(6)
    paths, pairs, mj, c, x_width, w_width, acc_width = _plan(rng)
    src, dst = _edges(rng)
    n_recv, y_dim, n_int, r_max = 9, 9, 37, 4.0
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    # the table's columns in another order than the packed rows: a shuffled permutation of the paths' blocks
    order = rng.permutation(len(paths))
    table_start = np.zeros(len(paths), np.int64)
    col = 3  # and three unused leading columns
    for p in order:
        table_start[p] = col
        col += int(paths[p, 0])
    n_cols = col + 2
    w_perm = torch.empty(w_width, dtype=torch.long)
    for p, (mul, _, _, w_off, *_rest) in enumerate(paths):
        w_perm[w_off : w_off + mul] = torch.arange(int(table_start[p]), int(table_start[p]) + mul)
    tpaths = native.table_paths(torch.from_numpy(paths), w_perm).numpy()
    assert (tpaths[:, 3] == table_start).all() and (np.delete(tpaths, 3, 1) == np.delete(paths, 3, 1)).all()

    coef = rng.standard_normal((n_int + 1, 2, n_cols)).astype(np_dtype)
    r = rng.uniform(0, r_max, len(src))
    r[:3] = [0.0, r_max, 1.3 * r_max]  # both ends and an extrapolated length (the last cubic)
    r = r.astype(np_dtype)
    inv_h = n_int / r_max
    s = r * np_dtype(inv_h)  # the interval and t in the table's dtype, as the kernel and radial_table.evaluate
    i = np.clip(np.floor(s), 0, n_int - 1)
    t = (s - i.astype(np_dtype)).astype(np.float64)[:, None]
    k0, k1 = coef.astype(np.float64)[i.astype(np.int64)], coef.astype(np.float64)[i.astype(np.int64) + 1]
    u = 1.0 - t
    w_table = ((1 + 2 * t) * u * u * k0[:, 0] + t * u * u * k0[:, 1] + t * t * (3 - 2 * t) * k1[:, 0]
               + t * t * (t - 1) * k1[:, 1])  # [E, n_cols], network order
    w = np.zeros((len(src), w_width + native.ACC_SLACK), np_dtype)
    w[:, :w_width] = w_table[:, w_perm.numpy()]  # the packed rows the w-row entry reads

    y = rng.standard_normal((len(src), y_dim)).astype(np_dtype)
    x = rng.standard_normal((7, x_width)).astype(np_dtype)
    off = 0
    for mul, d_i in ((13, 3), (21, 1), (8, 5)):
        for m_i in range(d_i):
            x[:, off + m_i * native.padded(mul) + mul : off + (m_i + 1) * native.padded(mul)] = 0
        off += d_i * native.padded(mul)
    cc = c.astype(np_dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for isa, lib in _isa_libs():
        rows, table = (np.zeros((n_recv, acc_width + native.ACC_SLACK), np_dtype) for _ in range(2))
        common = (_ptr(src), _ptr(dst), _ptr(y), y_dim)
        assert native.entry(lib, dtype)(0, len(src), *common, _ptr(w), w.shape[1], _ptr(x), x_width, _ptr(rows),
                                        rows.shape[1], len(paths), _ptr(paths), _ptr(pairs), _ptr(mj), _ptr(cc)) == 0
        fn = native.entry_table(lib, dtype)
        targs = (*common, _ptr(r), _ptr(coef), n_int, inv_h, n_cols, _ptr(x), x_width, _ptr(table), table.shape[1],
                 len(paths), _ptr(tpaths), _ptr(pairs), _ptr(mj), _ptr(cc))
        cut = int(np.searchsorted(dst, 5))
        assert _call(fn, targs, [(0, cut), (cut, len(src))]) == [0, 0]
        assert np.abs(table - rows).max() <= tol * np.abs(rows).max(), isa
        # a path whose columns run past the table's width is refused, not read out of bounds
        short = (*common, _ptr(r), _ptr(coef), n_int, inv_h, int(tpaths[:, 3].max()), *targs[9:])
        assert fn(0, len(src), *short) == 3, isa


SMALL_L = (((13, 3), (21, 1), (8, 5)), ((0, 3), (0, 1), (1, 5), (2, 3), (2, 1)))
LARGE_L = (((6, 11), (9, 3)), ((0, 11), (0, 3), (1, 11), (1, 1)))  # l = 5: no register tile, plain C order


@pytest.mark.parametrize("layout", [SMALL_L, LARGE_L], ids=["l<=4", "l=5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_receivers_entry_writes_the_table_entrys_sums_in_any_layout(dtype, layout):
    """The receiver-major entry against the edge-major table entry on the same arrays: receivers with no
    edge, with more edges than one chunk (16), split between two calls; rows written whole into garbage in
    a channels-last layout and in the "blocks" layout, and nothing outside the paths' values touched."""
    rng = np.random.default_rng(8)
    block_list, path_list = layout
    paths, pairs, mj, c, x_width, w_width, acc_width = _plan(rng, blocks=block_list, paths=path_list)
    counts = np.array([3, 0, 37, 1, 16, 17, 0, 5, 2])
    n_recv, y_dim, n_int, r_max = len(counts), 9, 29, 4.0
    dst = np.repeat(np.arange(n_recv), counts).astype(np.int64)
    src = rng.integers(0, 7, len(dst)).astype(np.int64)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    coef = rng.standard_normal((n_int + 1, 2, w_width)).astype(np_dtype)  # knots
    r = rng.uniform(0, r_max, len(src)).astype(np_dtype)
    y = rng.standard_normal((len(src), y_dim)).astype(np_dtype)
    x = rng.standard_normal((7, x_width)).astype(np_dtype)
    off = 0
    for mul, d_i in block_list:
        for m_i in range(d_i):
            x[:, off + m_i * native.padded(mul) + mul : off + (m_i + 1) * native.padded(mul)] = 0
        off += d_i * native.padded(mul)
    cc = c.astype(np_dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    # the "blocks" layout: path p as its own [R, d_k, mul] block, blocks in path order
    sizes = paths[:, 0].astype(np.int64) * paths[:, 1]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    layouts = {"channels_last": np.stack([paths[:, 4].astype(np.int64), np.full(len(paths), acc_width + 5)], 1),
               "blocks": np.stack([n_recv * starts, sizes], 1)}
    for isa, lib in _isa_libs():
        want = np.zeros((n_recv, acc_width + native.ACC_SLACK), np_dtype)
        targs = (_ptr(src), _ptr(dst), _ptr(y), y_dim, _ptr(r), _ptr(coef), n_int, n_int / r_max, w_width, _ptr(x),
                 x_width, _ptr(want), want.shape[1], len(paths), _ptr(paths), _ptr(pairs), _ptr(mj), _ptr(cc))
        assert native.entry_table(lib, dtype)(0, len(src), *targs) == 0
        fn = native.entry_receivers(lib, dtype)
        for name, path_acc in layouts.items():
            path_acc = np.ascontiguousarray(path_acc, dtype=np.int64)
            size = n_recv * (acc_width + 5) if name == "channels_last" else n_recv * int(sizes.sum())
            acc = np.full(size + 64, np.nan, np_dtype)
            written = np.zeros(size + 64, bool)
            for p, (mul, d_k, *_rest) in enumerate(paths):
                for rr in range(n_recv):
                    for m_k in range(d_k):
                        at = path_acc[p, 0] + rr * path_acc[p, 1] + m_k * paths[p, 5]
                        written[at : at + mul] = True
            acc[~written] = 7.0  # a sentinel the kernel must leave alone
            args = (_ptr(ptr), _ptr(src), _ptr(y), y_dim, _ptr(r), _ptr(coef), n_int, n_int / r_max, w_width,
                    _ptr(x), x_width, _ptr(acc), _ptr(path_acc), len(paths), _ptr(paths), _ptr(pairs), _ptr(mj),
                    _ptr(cc))
            assert _call(fn, args, [(0, 4), (4, n_recv)]) == [0, 0], (isa, name)
            assert (acc[~written] == 7.0).all(), (isa, name)
            got = np.zeros_like(want)
            for p, (mul, d_k, _, _, acc_off, stride, _, _) in enumerate(paths):
                for rr in range(n_recv):
                    for m_k in range(d_k):
                        at = path_acc[p, 0] + rr * path_acc[p, 1] + m_k * stride
                        got[rr, acc_off + m_k * stride : acc_off + m_k * stride + mul] = acc[at : at + mul]
            assert np.isfinite(got).all(), (isa, name)
            assert np.abs(got - want).max() <= tol * np.abs(want).max(), (isa, name)
            assert not got[1].any() and not got[6].any(), (isa, name)  # receivers without edges: zeros
        bad = paths.copy()
        bad[0, 0] = native.MAX_MUL + 1
        assert fn(0, n_recv, *args[:14], _ptr(bad), *args[15:]) == 1, isa
        assert fn(0, n_recv, *args[:8], int(paths[:, 3].max()), *args[9:]) == 3, isa


def test_table_paths_refuses_weights_split_in_the_network_order():
    paths = torch.tensor([[4, 1, 0, 0, 0, 4, 0, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match="path 0: its weights are not contiguous"):
        native.table_paths(paths, torch.tensor([0, 1, 5, 6]))


def test_constants_come_from_the_c_source_and_match_the_library():
    text = native.SOURCE.read_text()
    assert f"#define CDP_UVU_SLACK {native.ACC_SLACK}" in text and f"#define CDP_MAX_MUL {native.MAX_MUL}" in text
    lib = native.load()
    assert lib.cdp_uvu_acc_slack() == native.ACC_SLACK and lib.cdp_uvu_pad_width() == native.PAD_WIDTH
    assert lib.cdp_uvu_max_mul() == native.MAX_MUL and lib.cdp_uvu_abi_version() == native.ABI_VERSION
    assert native.padded(9) == native.round_up(9, native.PAD_WIDTH)


def test_each_build_compiles_its_vector_path():
    want = {"avx512": "avx512", "avx2": "avx2", "generic": "generic", "neon": "neon"}
    for isa, lib in _isa_libs():
        assert native.vector_path(lib) == want[isa]


def test_loaded_never_compiles(tmp_path, monkeypatch):
    _fresh(monkeypatch, tmp_path)
    assert native.loaded() is None  # nothing loaded in this (fresh) state, and nothing built
    assert not (tmp_path / "kernels").exists()
    lib = native.load()
    assert lib is not None and native.loaded() is lib


# -- NEON: the aarch64 build cross-compiled and run under qemu-aarch64 -----------------------------------
HARNESS = Path(__file__).resolve().parents[2] / "helpers" / "uvu_harness.c"
CROSS_CC, QEMU = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")


def _harness_output(tmp_path, name, cmd_prefix, compiler, flags):
    exe = tmp_path / name
    subprocess.run([compiler, "-O2", "-std=c99", *flags, str(HARNESS), str(native.SOURCE), "-o", str(exe)],
                   check=True, capture_output=True, timeout=300)
    proc = subprocess.run([*cmd_prefix, str(exe)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    head, *rows = proc.stdout.splitlines()
    return head.split(), np.array([[float(v) for v in row.split()] for row in rows])


@pytest.mark.skipif(CROSS_CC is None or QEMU is None, reason="no aarch64 cross compiler / qemu-aarch64 here")
def test_neon_path_under_qemu_equals_the_plain_path(tmp_path):
    neon_head, neon = _harness_output(tmp_path, "neon", [QEMU], CROSS_CC, ["-static"])
    plain_head, plain = _harness_output(tmp_path, "plain", [QEMU], CROSS_CC, ["-static", "-DCDP_PLAIN"])
    host_head, host = _harness_output(tmp_path, "host", [], native.find_compiler(), ["-DCDP_PLAIN"])
    assert neon_head[1] == "3" and plain_head[1] == "0" and host_head[1] == "0"  # cdp_uvu_vector_path
    assert neon_head[-1] == plain_head[-1] == "0" and int(neon_head[3]) > 20  # status 0, edges
    scale = np.abs(plain).max(axis=0)
    assert (scale > 0.5).all() and np.isfinite(neon).all()
    f32, f64 = [0, 1, 4], [2, 3]  # columns: rows, table, (float64) rows, table, receiver-major table
    # float32: NEON vs plain C within rounding; float64 (plain C in every build): the same numbers
    assert (np.abs(neon[:, f32] - plain[:, f32]).max(axis=0) <= 1e-6 * scale[f32]).all()
    assert (np.abs(neon[:, f64] - plain[:, f64]).max(axis=0) <= 1e-13 * scale[f64]).all()
    assert (np.abs(plain - host).max(axis=0) <= 1e-6 * scale).all()  # aarch64 plain C = x86-64 plain C
    assert np.abs(plain[:, 0] - plain[:, 2]).max() <= 1e-5 * scale[2]  # float32 = float64 within rounding
    assert np.abs(neon[:, 4] - neon[:, 1]).max() <= 1e-6 * scale[1]  # receiver-major = edge-major table


def _torch_forward(paths, pairs, mj, c, y, w, x, src, dst, n_recv, acc_width):
    """The kernel's formula (as :func:`_reference`) in torch, so autograd gives the backward's oracle."""
    acc = torch.zeros((n_recv, acc_width), dtype=y.dtype)
    for mul, d_k, x_off, w_off, acc_off, stride, q0, q1 in paths.tolist():
        for m_k in range(d_k):
            t = torch.zeros((len(src), mul), dtype=y.dtype)
            for q in range(q0, q1):
                if int(pairs[q, 0]) != m_k:
                    continue
                t0, t1 = int(pairs[q, 2]), int(pairs[q, 3])
                a = y[:, mj[t0:t1]] @ c[t0:t1]
                t = t + a[:, None] * x[src, x_off + int(pairs[q, 1]) : x_off + int(pairs[q, 1]) + mul]
            cols = acc_off + m_k * stride + torch.arange(mul)
            acc = acc.index_put((dst[:, None], cols[None, :]), w[:, w_off : w_off + mul] * t, accumulate=True)
    return acc


def test_backward_entry_of_each_build_equals_autograd():
    """dL/dx, dL/dw, dL/dY of the backward entry (every build this CPU runs, float32 and float64) against
    autograd through the same formula in float64."""
    rng = np.random.default_rng(8)
    blocks = ((13, 3), (21, 1), (8, 5))
    paths, pairs, mj, c, x_width, w_width, acc_width = _plan(rng, blocks=blocks)
    src, dst = _edges(rng)
    n_recv, y_dim, n_send = 9, 9, 7
    real = np.zeros(x_width, bool)
    off = 0
    for mul, d_i in blocks:
        for m_i in range(d_i):
            real[off + m_i * native.padded(mul) : off + m_i * native.padded(mul) + mul] = True
        off += d_i * native.padded(mul)
    y = torch.from_numpy(rng.standard_normal((len(src), y_dim))).requires_grad_()
    w = torch.zeros((len(src), w_width + native.ACC_SLACK), dtype=torch.float64)
    w[:, :w_width] = torch.from_numpy(rng.standard_normal((len(src), w_width)))
    w.requires_grad_()
    x = torch.zeros((n_send, x_width), dtype=torch.float64)
    x[:, torch.from_numpy(real)] = torch.from_numpy(rng.standard_normal((n_send, int(real.sum()))))
    x.requires_grad_()
    g = torch.zeros((n_recv, acc_width + native.ACC_SLACK), dtype=torch.float64)
    g[:, :acc_width] = torch.from_numpy(rng.standard_normal((n_recv, acc_width)))
    ct = torch.from_numpy(c)
    acc = _torch_forward(torch.from_numpy(paths), torch.from_numpy(pairs), torch.from_numpy(mj).long(), ct, y, w, x,
                         torch.from_numpy(src), torch.from_numpy(dst), n_recv, acc_width)
    want_x, want_w, want_y = torch.autograd.grad((acc * g[:, :acc_width]).sum(), (x, w, y))
    for dtype, np_dtype, tol in ((torch.float32, np.float32, 5e-6), (torch.float64, np.float64, 1e-12)):
        arrays = [t.detach().numpy().astype(np_dtype) for t in (y, w, x, g)]
        yy, ww, xx, gg = arrays
        cc = c.astype(np_dtype)
        for isa, lib in _isa_libs():
            gx, gw, gy = np.zeros_like(xx), np.zeros_like(ww), np.zeros_like(yy)
            fn = native.entry_backward(lib, dtype)
            status = fn(0, len(src), _ptr(src), _ptr(dst), _ptr(yy), y_dim, _ptr(ww), ww.shape[1], _ptr(xx), x_width,
                        _ptr(gg), gg.shape[1], _ptr(gx), _ptr(gw), _ptr(gy), len(paths), _ptr(paths), _ptr(pairs),
                        _ptr(mj), _ptr(cc))
            assert status == 0
            for got, want in ((gx[:, real], want_x.numpy()[:, real]), (gw[:, :w_width], want_w.numpy()[:, :w_width]),
                              (gy, want_y.numpy())):
                assert np.abs(got - want).max() <= tol * np.abs(want).max(), (isa, dtype)


def test_pattern_tiles_are_the_clebsch_gordan_patterns_of_l_up_to_4():
    """The kernel's pattern tile list is what gen_patterns.py computes from e3nn's Wigner 3j symbols now, and
    every real path of an l = 4 model finds a tile covering its pairs (the dense tile otherwise)."""
    from cdp.plugins.backbones.chargee3net.kernels import gen_patterns

    text = native.SOURCE.read_text()
    assert gen_patterns.block() in text
    pats = gen_patterns.patterns()
    assert len(pats) == 48 and all(bits != (1 << (di * dk)) - 1 for di, dk, bits in pats)
    from e3nn import o3

    # (l_i, l_j, l_k) = (1, 0, 1): the identity pattern; (2, 1, 2): no entry with |m_k| = |m_i| ± 2
    assert (3, 3, 0b100010001) in pats
    nz = (o3.wigner_3j(2, 1, 2).abs() > 1e-12).any(dim=1)
    assert (5, 5, sum(1 << (mk * 5 + mi) for mk in range(5) for mi in range(5) if nz[mi, mk])) in pats
