"""Streaming grid writers: the same bytes as the in-memory writers, whatever the batch size; atomic on error."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from ase import Atoms

from cdp.core.types import CdpError, DensityGrid
from cdp.io.chgcar import format_chgcar
from cdp.io.cube import format_cube
from cdp.io.stream import stream_grid


def _case(spin: bool, shape=(5, 4, 7)):
    rng = np.random.default_rng(3)
    cell = np.array([[4.1, 0.0, 0.0], [0.7, 3.9, 0.0], [0.3, 0.4, 5.2]])
    atoms = Atoms("OH2", positions=rng.uniform(0, 3, (3, 3)), cell=cell, pbc=True)
    grid = DensityGrid(cell=cell, values=rng.normal(size=shape), origin=np.array([0.1, -0.2, 0.3]), pbc=np.ones(3, bool))
    if spin:
        grid.spin = rng.normal(size=shape)
    return atoms, grid


def _chunks(grid: DensityGrid, step: int):
    def chunks(order: str):
        rho = grid.values.reshape(-1, order=order)
        cols = [rho] if grid.spin is None else [rho, grid.spin.reshape(-1, order=order)]
        for s in range(0, rho.size, step):
            block = np.stack([c[s : s + step] for c in cols], axis=1)
            yield s, block[:, 0] if grid.spin is None else block
    return chunks


def _frame(grid):
    return DensityGrid(cell=grid.cell, values=np.broadcast_to(np.zeros(1), grid.values.shape), origin=grid.origin,
                       pbc=grid.pbc)


@pytest.mark.parametrize("step", [1, 7, 13, 140, 10_000])
@pytest.mark.parametrize("spin", [False, True])
def test_chgcar_stream_equals_in_memory_writer(tmp_path, step, spin):
    atoms, grid = _case(spin)
    path = tmp_path / "CHGCAR"
    electrons = stream_grid(path, "chgcar", atoms, _frame(grid), _chunks(grid, step), spin=spin)
    assert path.read_text() == format_chgcar(atoms, grid)
    assert electrons == pytest.approx(grid.electrons, rel=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CHGCAR"]  # no scratch or temp file left


def test_compressed_chgcar_stream(tmp_path):
    atoms, grid = _case(True)
    path = tmp_path / "CHGCAR.gz"
    stream_grid(path, "chgcar", atoms, _frame(grid), _chunks(grid, 11), spin=True)
    assert gzip.decompress(path.read_bytes()).decode() == format_chgcar(atoms, grid)
    for suffix in (".lz4", ".zz"):
        from cdp.io.compression import read_file_bytes

        p = tmp_path / f"CHGCAR{suffix}"
        stream_grid(p, "chgcar", atoms, _frame(grid), _chunks(grid, 11), spin=True)
        assert read_file_bytes(p).decode() == format_chgcar(atoms, grid)


@pytest.mark.parametrize("step", [1, 6, 29, 10_000])
def test_cube_stream_equals_in_memory_writer(tmp_path, step):
    atoms, grid = _case(False)
    path = tmp_path / "rho.cube"
    stream_grid(path, "cube", atoms, _frame(grid), _chunks(grid, step))
    assert path.read_text() == format_cube(atoms, grid)


@pytest.mark.parametrize("spin", [False, True])
def test_npy_stream_round_trip(tmp_path, spin):
    atoms, grid = _case(spin)
    path = tmp_path / "rho.npy"
    stream_grid(path, "npy", atoms, _frame(grid), _chunks(grid, 9), spin=spin)
    back = np.load(path, allow_pickle=False)
    expected = grid.values if not spin else np.stack([grid.values, grid.spin], axis=-1)
    assert back.shape == expected.shape and np.array_equal(back, expected)


def test_non_finite_batch_leaves_no_file(tmp_path):
    atoms, grid = _case(False)
    grid.values[4, 3, 6] = np.nan  # the very last point: everything before it was already written
    path = tmp_path / "CHGCAR"
    with pytest.raises(CdpError, match="density grid"):
        stream_grid(path, "chgcar", atoms, _frame(grid), _chunks(grid, 10))
    assert list(tmp_path.iterdir()) == []


def test_missing_or_disordered_batches_are_refused(tmp_path):
    atoms, grid = _case(False)

    def short(order):
        for s, v in _chunks(grid, 10)(order):
            if s < 100:
                yield s, v

    def disordered(order):
        yield from reversed(list(_chunks(grid, 10)(order)))

    for chunks, msg in ((short, "covered 100 of 140"), (disordered, "out of order")):
        with pytest.raises(CdpError, match=msg):
            stream_grid(tmp_path / "rho.cube", "cube", atoms, _frame(grid), chunks)
    assert list(tmp_path.iterdir()) == []
