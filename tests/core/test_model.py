"""DensityModel assembly, encode-once/decode-in-batches, checkpoint round trip and safe loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from cdp.core.checkpoint import load_checkpoint, save_checkpoint
from cdp.core.components import Spec
from cdp.core.model import DensityModel
from cdp.core.types import Batch, CdpError
from cdp.predict import Predictor
from tests.helpers.toy_components import TOY_CONFIG, ToyBackbone, ToyEmbedding, ToyReadout, toy_registry


@pytest.fixture
def reg(tmp_path):
    return toy_registry(tmp_path)


@pytest.fixture
def model(reg):
    torch.manual_seed(0)
    return DensityModel.from_config(TOY_CONFIG, registry=reg).double()


def test_assembly_refuses_misfit():
    from cdp.plugins.graphs.periodic import PeriodicGraphBuilder

    with pytest.raises(CdpError, match="featurizer produces 5 features"):
        DensityModel(ToyEmbedding(5), ToyBackbone(4), ToyReadout(Spec(size=4)), PeriodicGraphBuilder())
    with pytest.raises(CdpError, match="readout"):
        DensityModel(ToyEmbedding(4), ToyBackbone(4), ToyReadout(Spec(size=3)), PeriodicGraphBuilder())


def test_readout_refusal_is_a_clear_error(reg):
    cfg = dict(TOY_CONFIG, readout={"name": "toy"})
    reg.components["backbone"]["toy"].factory  # exists
    with pytest.raises(CdpError, match="unknown readout"):
        DensityModel.from_config(dict(cfg, readout={"name": "missing"}), registry=reg)


def test_batched_probes_equal_single_pass(model):
    atoms = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    rng = np.random.default_rng(0)
    probes = rng.uniform(-1, 6, size=(37, 3))
    pred = Predictor(model, probe_batch=5)
    a = pred.predict(atoms, probes)
    b = Predictor(model, probe_batch=1000).predict(atoms, probes)
    assert a.shape == (37,)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_encode_runs_once_per_structure(model, monkeypatch):
    calls = []
    orig = model.backbone.encode

    def counting(*args):
        calls.append(1)
        return orig(*args)

    monkeypatch.setattr(model.backbone, "encode", counting)
    atoms = bulk("Cu", "fcc", a=3.6)
    Predictor(model, probe_batch=3).predict(atoms, np.random.default_rng(1).uniform(0, 3, (20, 3)))
    assert len(calls) == 1


def test_multi_structure_batch_equals_separate(model):
    a1 = bulk("Si", "diamond", a=5.43)
    a2 = molecule("H2O")
    a2.center(vacuum=3.0)
    a2.pbc = False
    p1 = np.random.default_rng(2).uniform(0, 5, (6, 3))
    p2 = a2.positions[[0, 1]] + 0.3
    batch = Batch.from_atoms([a1, a2], dtype=torch.float64)
    probes = torch.from_numpy(np.concatenate([p1, p2]))
    owner = torch.tensor([0] * 6 + [1] * 2)
    joint = model(batch, probes, owner).detach().numpy()
    sep1 = Predictor(model).predict(a1, p1)
    sep2 = Predictor(model).predict(a2, p2)
    np.testing.assert_allclose(joint, np.concatenate([sep1, sep2]), atol=1e-12)


def test_checkpoint_round_trip(model, reg, tmp_path):
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model, metadata={"note": "x"})
    loaded, raw = load_checkpoint(path, registry=reg)
    assert raw["metadata"]["note"] == "x"
    atoms = bulk("Si", "diamond", a=5.43)
    probes = np.random.default_rng(3).uniform(0, 5, (10, 3))
    np.testing.assert_array_equal(Predictor(model).predict(atoms, probes), Predictor(loaded).predict(atoms, probes))
    assert loaded.dtype == torch.float64


def test_checkpoint_errors(tmp_path, model, reg):
    with pytest.raises(CdpError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CdpError, match="not a readable cdp checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.ckpt"
    torch.save({"model": {}}, other)
    with pytest.raises(CdpError, match="not a cdp checkpoint"):
        load_checkpoint(other)
    bad = tmp_path / "bad.ckpt"
    save_checkpoint(bad, model)
    raw = torch.load(bad, weights_only=True)
    raw["state_dict"]["readout.lin.weight"] = torch.zeros(3, 3)
    torch.save(raw, bad)
    with pytest.raises(CdpError, match="readout.lin.weight"):
        load_checkpoint(bad, registry=reg)


class Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, model):
    path = tmp_path / "evil.ckpt"
    torch.save({"format": "cdp-checkpoint", "format_version": 1, "config": {}, "state_dict": {}, "x": Boom()}, path)
    with pytest.raises(CdpError, match="not a readable cdp checkpoint"):
        load_checkpoint(path)


def test_spin_readout_shapes(reg):
    cfg = dict(TOY_CONFIG, readout={"name": "toy", "spin": True})
    m = DensityModel.from_config(cfg, registry=reg).double()
    out = Predictor(m).predict(bulk("Fe", "bcc", a=2.87), np.zeros((4, 3)))
    assert out.shape == (4, 2)


def test_probe_with_no_neighbours_and_empty_probe_set(model):
    atoms = molecule("CH4")
    atoms.center(vacuum=3.0)
    atoms.pbc = False
    far = np.array([[100.0, 100.0, 100.0]])
    out = Predictor(model).predict(atoms, far)
    assert np.isfinite(out).all()
    assert Predictor(model).predict(atoms, np.zeros((0, 3))).shape == (0,)


def test_predict_grid_matches_point_prediction(model):
    atoms = bulk("Si", "diamond", a=5.43)
    pred = Predictor(model, probe_batch=7)
    grid = pred.predict_grid(atoms, (3, 4, 5))
    pts = grid.grid_points()
    np.testing.assert_allclose(grid.values.ravel(), pred.predict(atoms, pts), atol=1e-12)
    # grid convention: point (i, j, k) sits at (i/nx, j/ny, k/nz) in fractional coordinates
    np.testing.assert_allclose(pts[1 * 20 + 2 * 5 + 3], np.array([1 / 3, 2 / 4, 3 / 5]) @ atoms.cell.array)
