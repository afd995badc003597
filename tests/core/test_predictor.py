"""The predictor base: batching, grids and memory sizing written once over encode/decode."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from cdp.core.errors import CdpError
from cdp.core.predictor import DensityPredictor


class Gaussians(DensityPredictor):
    """ρ(r) = Σ_a exp(−|r − R_a|²): a known density, and a log of the decode calls."""

    def __init__(self, memory=None, concurrency=1, **kw):
        super().__init__(**kw)
        self.calls = []
        self._memory = memory
        self.concurrency = concurrency

    spin = False
    cutoff = 2.0
    itemsize = 4

    def encode(self, atoms):
        return np.asarray(atoms.positions, dtype=np.float64)

    def decode(self, encoded, probes):
        self.calls.append(len(probes))
        d2 = ((probes[:, None, :] - encoded[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2).sum(1)

    def probe_memory(self, itemsize, edges_per_probe):
        return self._memory


def _atoms():
    return Atoms("H2", positions=[[1.0, 1.0, 1.0], [2.0, 1.5, 1.0]], cell=np.eye(3) * 4.0, pbc=True)


def test_predict_streams_batches_and_matches_the_density():
    atoms = _atoms()
    probes = np.random.default_rng(0).uniform(0, 4, size=(10, 3))
    pred = Gaussians(probe_batch=4)
    got = pred.predict(atoms, probes)
    want = np.exp(-((probes[:, None] - atoms.positions[None]) ** 2).sum(-1)).sum(1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    assert pred.calls == [4, 4, 2]
    assert pred.predict(atoms, np.zeros((0, 3))).shape == (0,)


def test_predict_grid_equals_predict_on_the_grid_points():
    atoms = _atoms()
    pred = Gaussians(probe_batch=7)
    grid = pred.predict_grid(atoms, (3, 4, 5))
    assert grid.values.shape == (3, 4, 5)
    pts = grid.grid_points()
    np.testing.assert_allclose(grid.values.ravel(), pred.predict(atoms, pts), rtol=0, atol=1e-15)
    starts = [s for s, _ in pred.iter_grid(atoms, (3, 4, 5), order="F")]
    assert starts == list(range(0, 60, 7))


def test_batch_for_memory_uses_the_estimate_and_shares_it_between_calls_in_flight():
    atoms = _atoms()
    assert Gaussians(probe_batch=9).batch_for_memory(atoms, 10**9) == 9  # no estimate: the configured batch
    pred = Gaussians(memory=(1000, 10), max_memory=2000)
    assert pred.batch_for_memory(atoms) == 100
    two = Gaussians(memory=(1000, 10), max_memory=4000, concurrency=2)
    assert two.batch_for_memory(atoms) == 100  # 2000 bytes per call in flight
    with pytest.raises(CdpError, match=r"max memory 1009 B is below the 1010 B one probe .* give at least 1010 bytes"):
        Gaussians(memory=(1000, 10)).batch_for_memory(atoms, 1009)
    pred.predict(atoms, np.zeros((250, 3)))
    assert pred.calls == [100, 100, 50]


def test_bad_settings_are_refused():
    with pytest.raises(CdpError, match="probe batch size must be at least 1"):
        Gaussians(probe_batch=0)
    with pytest.raises(CdpError, match="max memory must be a finite positive number of bytes"):
        Gaussians(max_memory=float("nan"))


def test_shared_numbers_are_defined_once():
    """NUM_ELEMENTS, MAX_Z and DEFAULT_PROBE_BATCH are assigned only in cdp/core/constants.py."""
    root = Path(__file__).resolve().parents[2] / "cdp"
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id in ("NUM_ELEMENTS", "MAX_Z", "DEFAULT_PROBE_BATCH"):
                        found.append((path.relative_to(root).as_posix(), t.id))
    assert sorted(found) == [("core/constants.py", "DEFAULT_PROBE_BATCH"), ("core/constants.py", "MAX_Z"),
                             ("core/constants.py", "NUM_ELEMENTS")]
