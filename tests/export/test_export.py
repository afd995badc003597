"""Exported encoder/decoder artifacts (ONNX in onnxruntime, TorchScript) give PyTorch's densities.

Exports are tiny models shared across the test session; every comparison uses atom/probe/edge counts
different from the export example, including a probe batch with no edges and a single-atom structure.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from cdp.core.types import CdpError
from cdp.export import export_model
from cdp.export.examples import EXAMPLE_SIZES
from cdp.export.runtime import load_exported
from cdp.predict import Predictor, load_model
from tests.helpers.export import BACKBONES, cases, tiny_model

TOL = 1e-5  # of max |rho|


@pytest.fixture(scope="session")
def models():
    return {name: tiny_model(name) for name in BACKBONES}


class _Exports(dict):
    """Exports made on first use and shared by the whole session (ONNX export takes tens of seconds)."""

    def __init__(self, models, root, fmt):
        super().__init__()
        self.models, self.root, self.fmt = models, root, fmt

    def __missing__(self, name):
        self[name] = (export_model(self.models[name], self.root / name, self.fmt), self.root / name)
        return self[name]


@pytest.fixture(scope="session")
def onnx_dirs(models, tmp_path_factory):
    return _Exports(models, tmp_path_factory.mktemp("onnx"), "onnx")


# ONNX export of the equivariant DeepDFT (PaiNN) model takes minutes on a small shared CPU: it runs in the slow
# step; ChargE3Net is captured in its dense form (seconds)
ONNX_BACKBONES = [pytest.param(n, marks=pytest.mark.slow) if n == "equideepdft" else n for n in BACKBONES]


@pytest.fixture(scope="session")
def ts_dirs(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ts")
    return {name: (export_model(m, root / name, "torchscript"), root / name) for name, m in models.items()}


def _check_parity(model, predictor, probe_batch=4):
    for label, atoms, probes in cases():
        ref = Predictor(model, probe_batch=probe_batch).predict(atoms, probes)
        got = predictor.predict(atoms, probes, probe_batch=probe_batch)
        assert got.shape == ref.shape, label
        scale = np.abs(ref).max()
        assert scale > 0, label
        err = np.abs(got - ref).max() / scale
        assert err <= TOL, f"{label}: {err:.2e} of max|rho|"


def test_cases_differ_from_export_example_and_cover_edge_cases(models):
    """The parity structures really have other sizes, an edgeless probe batch and an edgeless atom graph."""
    model = models["invdeepdft"]
    saw_empty_batch = saw_no_atom_edges = False
    import torch

    for _, atoms, probes in cases():
        from cdp.core.types import Batch

        batch = Batch.from_atoms([atoms]).to(dtype=torch.float32)
        g = model.atom_graph(batch)
        assert len(atoms) != EXAMPLE_SIZES["N"] and g.num_edges != EXAMPLE_SIZES["E"]
        saw_no_atom_edges |= g.num_edges == 0 and len(atoms) == 1
        for s in range(0, len(probes), 4):
            pg = model.probe_graph(batch, torch.as_tensor(probes[s : s + 4], dtype=torch.float32))
            saw_empty_batch |= pg.num_edges == 0
    assert saw_empty_batch and saw_no_atom_edges


@pytest.mark.parametrize("name", ONNX_BACKBONES)
def test_onnx_matches_pytorch(name, models, onnx_dirs):
    _, path = onnx_dirs[name]
    _check_parity(models[name], load_exported(path, workers=1))


@pytest.mark.parametrize("name", BACKBONES)
def test_torchscript_matches_pytorch(name, models, ts_dirs):
    _, path = ts_dirs[name]
    _check_parity(models[name], load_exported(path))


@pytest.mark.parametrize("name", ONNX_BACKBONES)
def test_onnx_graph_opset_and_no_einsum(name, onnx_dirs):
    meta, path = onnx_dirs[name]
    for role in ("encoder", "decoder"):
        proto = onnx.load(str(path / meta[role]["file"]))
        opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        assert opset >= 18
        ops = {n.op_type for n in proto.graph.node}
        assert "Einsum" not in ops, f"{role}: einsum left in the graph"
        names = [i.name for i in proto.graph.input]
        assert names == [i["name"] for i in meta[role]["inputs"]]
    assert meta["format_version"] == 1 and meta["cutoff"] == 3.0 and meta["artifact"] == "onnx" and meta["num_layers"] == 2
    assert set(meta["decoder"]["inputs"][-1]) == {"name", "dtype", "shape"}


def test_onnx_sessions_use_one_intra_op_thread(onnx_dirs):
    """onnxruntime's CPU ScatterND(add) races with >1 intra-op thread (upstream #18048, #23396)."""
    pred = load_exported(onnx_dirs["invdeepdft"][1])
    for sess in pred.backend.sessions.values():
        assert sess.get_session_options().intra_op_num_threads == 1
    ops = onnx_dirs["invdeepdft"][0]["onnx"]["ops"]["decoder"]
    assert "ScatterND" in ops  # the op the race concerns is really there


def test_parallel_probe_batches_equal_serial(onnx_dirs):
    """Concurrent probe batches (one thread per session run) give exactly the serial densities."""
    path = onnx_dirs["invdeepdft"][1]
    _, atoms, probes = cases()[0]
    serial = load_exported(path, workers=1, probe_batch=3).predict(atoms, probes)
    parallel = load_exported(path, workers=3, probe_batch=3).predict(atoms, probes)
    np.testing.assert_array_equal(parallel, serial)


def test_load_model_runtime_onnx_predict_grid(models, onnx_dirs):
    path = onnx_dirs["invdeepdft"][1]
    pred = load_model(str(path), runtime="onnx", probe_batch=5)
    _, atoms, _ = cases()[2]
    grid = pred.predict_grid(atoms, (3, 2, 4))
    ref = Predictor(models["invdeepdft"], probe_batch=5).predict_grid(atoms, (3, 2, 4))
    assert np.abs(grid.values - ref.values).max() <= TOL * np.abs(ref.values).max()


def test_runtime_refuses_uncovered_element(onnx_dirs, tmp_path):
    src = onnx_dirs["invdeepdft"][1]
    pred = load_exported(src)
    _, atoms, probes = cases()[2]
    atoms = atoms.copy()
    atoms.numbers[:] = 118
    pred.elements.discard(118)
    with pytest.raises(CdpError, match=r"does not cover element\(s\) \[118\]"):
        pred.predict(atoms, probes)


def test_cli_predict_runtime_onnx(models, onnx_dirs, tmp_path):
    from click.testing import CliRunner

    from cdp.cli.predict import command

    path = onnx_dirs["invdeepdft"][1]
    _, atoms, probes = cases()[0]
    atoms.write(tmp_path / "s.traj")
    np.save(tmp_path / "p.npy", probes)
    res = CliRunner().invoke(command, [str(tmp_path / "s.traj"), "--model", str(path), "--runtime", "onnx",
                                       "--probes", str(tmp_path / "p.npy"), "-o", str(tmp_path / "out.npy")])
    assert res.exit_code == 0, res.output
    ref = Predictor(models["invdeepdft"]).predict(atoms, probes)
    got = np.load(tmp_path / "out.npy")
    assert np.abs(got - ref).max() <= TOL * np.abs(ref).max()


def test_runtime_translation_invariant(onnx_dirs, ts_dirs):
    """Structures and probes moved 10⁵–10⁶ Å give the same float32 densities (positions moved near the
    origin in float64 before the cast)."""
    for path in (onnx_dirs["invdeepdft"][1], ts_dirs["chargee3net"][1]):
        pred = load_exported(path, workers=1)
        for label, atoms, probes in cases():
            ref = pred.predict(atoms, probes)
            for size in (1e5, 1e6):
                v = size * np.array([1.0, -0.37, 0.61])
                moved = atoms.copy()
                moved.positions += v
                err = np.abs(pred.predict(moved, probes + v) - ref).max() / np.abs(ref).max()
                assert err <= TOL, f"{path.name} {label} {size:g}: {err:.2e} of max|rho|"


def test_exported_runtime_sizes_batches_like_pytorch(models, ts_dirs):
    """The decode-memory model recorded at export sizes the runtime's batches as the PyTorch predictor's,
    its budget shared between the batches in flight; a backbone without an estimate records none."""
    meta, path = ts_dirs["chargee3net"]
    rec = meta["probe_memory"]
    assert set(rec) == {"fixed", "per_probe", "per_edge"} and rec["per_edge"] > 0
    _, atoms, probes = cases()[0]
    eager = Predictor(models["chargee3net"])
    fixed, per_probe = eager.probe_memory(4, 10.0)
    assert (rec["fixed"], rec["per_probe"] + 10 * rec["per_edge"]) == (fixed, per_probe)
    budget = fixed + 7 * per_probe
    want = eager.batch_for_memory(atoms, budget)
    assert 1 <= want < len(probes)
    one = load_exported(path, workers=1, max_memory=budget)
    assert one.batch_for_memory(atoms) == want
    assert load_exported(path, workers=2).batch_for_memory(atoms, 2 * budget) == want
    ref = eager.predict(atoms, probes)
    assert np.abs(one.predict(atoms, probes) - ref).max() <= TOL * np.abs(ref).max()
    with pytest.raises(CdpError, match="is below the .* one probe of this model needs"):
        one.batch_for_memory(atoms, fixed)
    assert ts_dirs["invdeepdft"][0]["probe_memory"] is None
    assert load_exported(ts_dirs["invdeepdft"][1], probe_batch=6, max_memory=10**6).batch_for_memory(atoms) == 6


def test_cli_predict_runtime_onnx_takes_max_memory(models, onnx_dirs, tmp_path):
    from click.testing import CliRunner

    from cdp.cli.predict import command

    _, atoms, probes = cases()[0]
    atoms.write(tmp_path / "s.traj")
    np.save(tmp_path / "p.npy", probes)
    res = CliRunner().invoke(command, [str(tmp_path / "s.traj"), "--model", str(onnx_dirs["invdeepdft"][1]), "--runtime",
                                       "onnx", "--max-memory", "1G", "--probes", str(tmp_path / "p.npy"), "-o", str(tmp_path / "o.npy")])
    assert res.exit_code == 0, res.output
    ref = Predictor(models["invdeepdft"]).predict(atoms, probes)
    assert np.abs(np.load(tmp_path / "o.npy") - ref).max() <= TOL * np.abs(ref).max()
