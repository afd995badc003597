"""Probe sampling: probes are grid points with their grid values, re-drawn per epoch, float32 grid cache."""

from __future__ import annotations

import os

import numpy as np
from ase import Atoms

import cdp.io
from cdp.core.types import DensityGrid
from cdp.data import load_dataset
from cdp.data.sampling import GridCache, ProbeSampler


def _dataset(tmp_path, spin=False):
    rng = np.random.default_rng(3)
    for k in range(2):
        cell = np.array([[3.0, 0.2, 0.0], [0.0, 3.4, 0.3], [0.1, 0.0, 3.9]])
        atoms = Atoms("CO", scaled_positions=rng.random((2, 3)), cell=cell, pbc=True)
        vals = rng.random((5, 6, 7)) + 0.05
        grid = DensityGrid(cell=cell, values=vals, spin=(0.3 * vals if spin else None))
        cdp.io.write(tmp_path / f"s{k}.CHGCAR", atoms, grid, sidecar=False)
    return load_dataset(str(tmp_path))


def test_probes_are_grid_points_with_their_values(tmp_path):
    ds = _dataset(tmp_path)
    sampler = ProbeSampler(ds, num_probes=300, seed=7)
    for i in range(len(ds)):
        ps = sampler.sample(i, epoch=0)
        grid = ds[i].grid
        # brute force: position and value of each flat index from DensityGrid.grid_points
        allpts = grid.grid_points()
        np.testing.assert_allclose(ps.probes, allpts[ps.index], atol=1e-9)
        np.testing.assert_allclose(ps.targets, grid.values.reshape(-1)[ps.index].astype(np.float32), rtol=1e-6)
        assert ps.targets.dtype == np.float32 and ps.probes.shape == (300, 3)
        assert ps.index.min() >= 0 and ps.index.max() < grid.values.size


def test_redrawn_each_epoch_and_reproducible(tmp_path):
    ds = _dataset(tmp_path)
    s = ProbeSampler(ds, num_probes=50, seed=1)
    a0, a0b, a1 = s.sample(0, 0).index, s.sample(0, 0).index, s.sample(0, 1).index
    np.testing.assert_array_equal(a0, a0b)
    assert not np.array_equal(a0, a1)
    s.set_epoch(1)
    np.testing.assert_array_equal(s[0].index, a1)
    assert sorted(p.name for p in s.iter_epoch(3)) == sorted(ds.names)


def test_spin_targets_and_disk_cache(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ds = _dataset(data, spin=True)
    cache_dir = tmp_path / "cache"
    c1 = GridCache(ds, cache_dir=str(cache_dir))
    item = c1.get(0)
    assert item.values.dtype == np.float32 and item.spin.dtype == np.float32
    assert len(os.listdir(cache_dir)) == 1
    c2 = GridCache(ds, cache_dir=str(cache_dir))
    again = c2._from_disk(os.path.join(cache_dir, os.listdir(cache_dir)[0]), item.name)
    np.testing.assert_array_equal(again.values, item.values)
    np.testing.assert_array_equal(again.atoms.positions, item.atoms.positions)
    ps = ProbeSampler(ds, num_probes=20, cache=c2).sample(0, 0)
    assert ps.targets.shape == (20, 2)
    np.testing.assert_allclose(ps.targets[:, 1], 0.3 * ps.targets[:, 0], rtol=1e-5)
