"""Periodic graph builder against a brute-force enumeration of periodic images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.core.types import CdpError, edge_vectors
from cdp.plugins.graphs.periodic import PeriodicGraphBuilder, cdp_components

BUILDER = PeriodicGraphBuilder()
BAND = 1e-9  # pairs this close to the cutoff may fall either side through rounding


def _periodic_span(cell, pbc):
    """Periodic rows plus an orthonormal complement: a frame for sizing the brute-force image range."""
    basis = np.eye(3)
    if np.any(pbc):
        rows = cell[pbc]
        _, _, vt = np.linalg.svd(rows)
        basis[pbc] = rows
        basis[~pbc] = vt[rows.shape[0]:]
    return basis


def _brute(send_pos, recv_pos, cell, pbc, cutoff, drop_self):
    """All (sender, receiver, offset, distance) within the cutoff over a generous image range."""
    inv = np.linalg.inv(_periodic_span(cell, pbc))
    heights = 1.0 / np.linalg.norm(inv, axis=0)
    fs, fr = send_pos @ inv, recv_pos @ inv
    reach = []
    for k in range(3):
        if not pbc[k]:
            reach.append(range(0, 1))
            continue
        # largest fractional separation of any pair, plus the cutoff in cell heights, plus slack
        span = max(fr[:, k].max() - fs[:, k].min(), fs[:, k].max() - fr[:, k].min())
        m = int(np.ceil(cutoff / heights[k])) + 2 + int(np.ceil(span))
        reach.append(range(-m, m + 1))
    images = np.array(list(itertools.product(*reach)), dtype=np.int64)  # [I, 3]
    n = images.astype(np.float64)
    shift = n[:, 0:1] * cell[0] + n[:, 1:2] * cell[1] + n[:, 2:3] * cell[2]  # [I, 3]
    vec = recv_pos[None, :, None, :] - (send_pos[:, None, None, :] + shift[None, None, :, :])
    dist = np.sqrt(np.sum(vec * vec, axis=-1))  # [S, R, I]
    s, r, i = np.nonzero(dist <= cutoff + 2 * BAND)
    d = dist[s, r, i]
    offsets = images[i]
    if drop_self:
        keep = ~((s == r) & np.all(offsets == 0, axis=1))
        s, r, offsets, d = s[keep], r[keep], offsets[keep], d[keep]
    return s, r, offsets, d


def _as_dict(s, r, offsets, d):
    return {(int(a), int(b), *map(int, o)): float(x) for a, b, o, x in zip(s, r, offsets, d)}


def _compare(edge_index, offsets, send_pos, recv_pos, cell, pbc, cutoff, drop_self):
    """Builder output equals the brute force up to pairs within BAND of the cutoff."""
    assert edge_index.dtype == np.int64 and offsets.dtype == np.int64
    assert edge_index.shape[0] == 2 and offsets.shape == (edge_index.shape[1], 3)
    s, r = edge_index
    vec = recv_pos[r] - (send_pos[s] + offsets.astype(np.float64) @ cell)
    d = np.linalg.norm(vec, axis=1)
    got = _as_dict(s, r, offsets, d)
    assert len(got) == edge_index.shape[1], "duplicate edges"
    assert np.all(d <= cutoff + 1e-12)
    assert np.all(offsets[:, ~pbc] == 0)
    want = _as_dict(*_brute(send_pos, recv_pos, cell, pbc, cutoff, drop_self))
    want_sure = {k for k, v in want.items() if v <= cutoff - BAND}
    assert want_sure <= set(got), f"missing edges: {sorted(want_sure - set(got))[:5]}"
    assert set(got) <= set(want), f"spurious edges: {sorted(set(got) - set(want))[:5]}"
    for key, dist in got.items():
        assert abs(dist - want[key]) < 1e-9
    # deterministic order: (receiver, sender, offset)
    order = np.lexsort((offsets[:, 2], offsets[:, 1], offsets[:, 0], s, r))
    assert np.array_equal(order, np.arange(len(order)))


@st.composite
def structures(draw):
    """Random triclinic cell (possibly thin or skewed), pbc mask, atoms (also outside the cell)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pbc = np.array(draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    cutoff = draw(st.floats(0.8, 3.0))
    kind = draw(st.sampled_from(["plain", "thin", "skewed"]))
    lengths = rng.uniform(1.5, 5.0, size=3)
    if kind == "thin":
        lengths[rng.integers(3)] = rng.uniform(0.4, 0.9) * cutoff  # height below the cutoff
    cell = np.diag(lengths)
    tilt = 0.8 if kind == "skewed" else 0.25
    cell = cell + np.triu(rng.uniform(-tilt, tilt, size=(3, 3)), 1) * lengths[None, :]
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    cell = cell @ rot
    n_atoms = draw(st.integers(1, 6))
    frac = rng.uniform(-1.5, 2.5, size=(n_atoms, 3))
    positions = frac @ cell
    if draw(st.booleans()):
        cell[~pbc] = 0.0  # ase style: free axes carry no lattice vector (molecule, slab, wire)
    return positions, cell, pbc, cutoff, rng


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures())
def test_atom_edges_match_brute_force(structure):
    positions, cell, pbc, cutoff, _ = structure
    edge_index, offsets = BUILDER.atom_edges(positions, cell, pbc, cutoff)
    _compare(edge_index, offsets, positions, positions, cell, pbc, cutoff, drop_self=True)
    # both directions: (j→i, n) has its partner (i→j, −n)
    pairs = {(int(a), int(b), *map(int, o)) for a, b, o in zip(*edge_index, offsets)}
    assert all((b, a, -x, -y, -z) in pairs for a, b, x, y, z in pairs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures())
def test_probe_edges_match_brute_force(structure):
    positions, cell, pbc, cutoff, rng = structure
    random_probes = positions.mean(0) + rng.uniform(-1.0, 2.0, size=(12, 3)) @ np.diag([4.0, 3.0, 5.0])
    if np.any(pbc):
        random_probes[:6] = rng.uniform(-1.0, 2.0, size=(6, 3)) @ _periodic_span(cell, pbc)
    on_atoms = positions[rng.integers(len(positions), size=3)]  # probes exactly on atoms
    on_images = positions[:2] + np.where(pbc, rng.integers(-2, 3, size=3), 0) @ cell
    probes = np.concatenate([random_probes, on_atoms, on_images])
    edge_index, offsets = BUILDER.probe_edges(positions, cell, pbc, probes, cutoff)
    _compare(edge_index, offsets, positions, probes, cell, pbc, cutoff, drop_self=False)
    # a probe sitting on an atom is linked to it at distance zero
    s, r = edge_index
    vec = probes[r] - (positions[s] + offsets @ cell)
    zero = np.linalg.norm(vec, axis=1) < 1e-9
    assert set(range(12, len(probes))) <= set(r[zero].tolist())


def test_chunked_probes_equal_single_pass():
    rng = np.random.default_rng(0)
    cell = np.array([[3.0, 0.2, 0.0], [0.5, 2.8, 0.0], [0.3, -0.4, 3.5]])
    positions = rng.uniform(0, 1, size=(5, 3)) @ cell
    probes = rng.uniform(-0.5, 1.5, size=(1000, 3)) @ cell
    pbc = np.array([True, True, False])
    a = PeriodicGraphBuilder().probe_edges(positions, cell, pbc, probes, 2.5)
    b = PeriodicGraphBuilder(probe_chunk=77).probe_edges(positions, cell, pbc, probes, 2.5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_replica_tree_built_once_per_structure(monkeypatch):
    """Streaming probe batches reuses the structure's replica tree; any change to the structure rebuilds it."""
    import cdp.plugins.graphs.periodic as periodic

    built = []
    original = periodic._Lattice
    monkeypatch.setattr(periodic, "_Lattice", lambda *a: built.append(1) or original(*a))
    rng = np.random.default_rng(3)
    cell = np.array([[3.0, 0.2, 0.0], [0.5, 2.8, 0.0], [0.3, -0.4, 3.5]])
    positions = rng.uniform(0, 1, size=(6, 3)) @ cell
    pbc = np.array([True, True, True])
    builder = PeriodicGraphBuilder()
    builder.atom_edges(positions, cell, pbc, 2.5)
    for _ in range(3):
        probes = rng.uniform(-0.5, 1.5, size=(50, 3)) @ cell
        got = builder.probe_edges(positions, cell, pbc, probes, 2.5)
        _compare(*got, positions, probes, cell, pbc, 2.5, drop_self=False)
    assert len(built) == 1
    # every ingredient of the structure invalidates the cached tree, including in-place edits
    changes = [
        lambda p, c, b, r: (p.__setitem__((2, 0), p[2, 0] + 0.3), (p, c, b, r))[1],
        lambda p, c, b, r: (p, c * 1.1, b, r),
        lambda p, c, b, r: (p, c, np.array([True, False, True]), r),
        lambda p, c, b, r: (p, c, b, 1.7),
    ]
    probes = rng.uniform(-0.5, 1.5, size=(50, 3)) @ cell
    for k, change in enumerate(changes):
        p, c, b, r = change(positions, cell, pbc, 2.5)
        got = builder.probe_edges(p, c, b, probes, r)
        assert len(built) == 2 + k
        _compare(*got, p, probes, c, b, r, drop_self=False)


def test_inclusive_cutoff_simple_cubic():
    # one atom in a cubic cell of side 2: its six face images lie exactly at the cutoff
    cell = 2.0 * np.eye(3)
    edge_index, offsets = BUILDER.atom_edges(np.zeros((1, 3)), cell, np.ones(3, bool), 2.0)
    assert edge_index.shape == (2, 6)
    assert sorted(map(tuple, offsets.tolist())) == sorted(
        [tuple(int(v) for v in s * e) for e in np.eye(3, dtype=int) for s in (-1, 1)]
    )


def test_molecule_with_zero_cell():
    # water-like molecule, ase default cell (zeros) and no pbc
    positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    cell = np.zeros((3, 3))
    pbc = np.zeros(3, bool)
    edge_index, offsets = BUILDER.atom_edges(positions, cell, pbc, 1.0)
    _compare(edge_index, offsets, positions, positions, cell, pbc, 1.0, drop_self=True)
    assert {tuple(e) for e in edge_index.T.tolist()} == {(1, 0), (0, 1), (2, 0), (0, 2)}
    assert np.all(offsets == 0)
    probes = np.array([[0.0, 0.0, 0.5], [10.0, 0.0, 0.0]])
    pe, po = BUILDER.probe_edges(positions, cell, pbc, probes, 1.0)
    _compare(pe, po, positions, probes, cell, pbc, 1.0, drop_self=False)
    assert set(pe[1].tolist()) == {0}


def test_isolated_probe_and_empty_shapes():
    positions = np.array([[0.0, 0.0, 0.0]])
    cell = np.zeros((3, 3))
    pbc = np.zeros(3, bool)
    ei, off = BUILDER.probe_edges(positions, cell, pbc, np.array([[5.0, 5.0, 5.0]]), 2.0)
    assert ei.shape == (2, 0) and off.shape == (0, 3)
    assert ei.dtype == np.int64 and off.dtype == np.int64
    ei, off = BUILDER.atom_edges(positions, cell, pbc, 2.0)  # lone atom, no self edge
    assert ei.shape == (2, 0) and off.shape == (0, 3)
    ei, off = BUILDER.probe_edges(positions, cell, pbc, np.zeros((0, 3)), 2.0)
    assert ei.shape == (2, 0) and off.shape == (0, 3)


def test_edge_vectors_within_cutoff():
    rng = np.random.default_rng(3)
    cell = np.array([[4.0, 0.0, 0.0], [1.2, 3.7, 0.0], [0.6, 0.9, 1.1]])  # thin along c
    pbc = np.ones(3, bool)
    positions = rng.uniform(-1, 2, size=(4, 3)) @ cell
    cutoff = 2.7
    ei, off = BUILDER.atom_edges(positions, cell, pbc, cutoff)
    pos = torch.from_numpy(positions)
    vec = edge_vectors(
        pos, pos, torch.from_numpy(ei), torch.from_numpy(off), torch.from_numpy(cell)[None],
        torch.zeros(len(positions), dtype=torch.long),
    )
    norms = vec.norm(dim=1).numpy()
    assert ei.shape[1] > 0 and np.all(norms <= cutoff + 1e-9)
    # several images of the same partner appear because the cell is thinner than the cutoff
    assert len({tuple(o) for o in off[(ei[0] == 0) & (ei[1] == 0)].tolist()}) >= 2
    probes = rng.uniform(0, 1, size=(50, 3)) @ cell
    pe, po = BUILDER.probe_edges(positions, cell, pbc, probes, cutoff)
    pvec = edge_vectors(
        pos, torch.from_numpy(probes), torch.from_numpy(pe), torch.from_numpy(po),
        torch.from_numpy(cell)[None], torch.zeros(len(positions), dtype=torch.long),
    )
    assert pe.shape[1] > 0 and np.all(pvec.norm(dim=1).numpy() <= cutoff + 1e-9)


def test_degenerate_periodic_cell_is_rejected():
    with pytest.raises(CdpError, match="linearly dependent"):
        BUILDER.atom_edges(np.zeros((1, 3)), np.zeros((3, 3)), np.ones(3, bool), 2.0)


def test_hook_registers_builder():
    assert cdp_components() == {"graph": {"periodic": PeriodicGraphBuilder}}


def test_large_cell_many_atoms_is_not_called_thin():
    # 60,000 atoms × 125 candidate images used to trip the thin-cell guard (and built an [N, I, 3] array)
    rng = np.random.default_rng(11)
    cell = np.diag([110.0, 100.0, 105.0])
    positions = rng.uniform(0, 1, size=(60_000, 3)) @ cell
    edge_index, offsets = BUILDER.atom_edges(positions, cell, np.ones(3, bool), 2.0)
    # the cell is much larger than the cutoff, so the minimum image is exact: check a sample by brute force
    s, r = edge_index
    for i in rng.integers(0, len(positions), size=25):
        d = positions - positions[i]
        d -= np.round(d / np.diag(cell)) * np.diag(cell)
        dist = np.linalg.norm(d, axis=1)
        expect = set(np.nonzero((dist <= 2.0) & (np.arange(len(positions)) != i))[0].tolist())
        assert set(s[r == i].tolist()) == expect


@pytest.mark.slow  # ~30-50 s: runs in CI's slow step
def test_absurdly_thin_cell_is_still_refused():
    cell = np.diag([0.001, 0.01, 3.0])
    with pytest.raises(CdpError, match="too thin"):
        BUILDER.atom_edges(np.zeros((2, 3)), cell, np.ones(3, bool), 4.0)
