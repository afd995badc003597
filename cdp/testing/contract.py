"""Contract conformance of one component: declared attributes, output shapes, graph conventions.

Each function returns nothing and raises AssertionError with a message naming the component and
what is wrong.
"""

from __future__ import annotations

import itertools
from typing import Optional, Set, Tuple

import numpy as np
import torch
from e3nn import o3

from cdp.core.components import (BASES, Backbone, Featurizer, GraphBuilder, Readout, check_component,
                                 describe)
from cdp.core.errors import CdpError
from cdp.testing.structures import random_rotation


def kind_of(component) -> str:
    """``featurizer``, ``graph``, ``backbone`` or ``readout``: the contract ``component`` subclasses."""
    for kind, base in BASES.items():
        if isinstance(component, base):
            return kind
    raise AssertionError(f"{describe(component)} subclasses none of Featurizer, GraphBuilder, Backbone, Readout")


def _dtype(module) -> torch.dtype:
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _finite(t: torch.Tensor, who: str, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise AssertionError(f"{who}: {what} holds non-finite values")


def assert_component(component, kind: Optional[str] = None, parity: bool = True, seed: int = 0) -> None:
    """``component`` keeps the contract of ``kind`` (default: the base class it subclasses).

    Checks :func:`cdp.core.components.check_component` (base class, required attributes and methods),
    then runs it on small random inputs: output shapes and dtypes against its specs, finite values
    (a zero-length edge included), and for a readout on irreps features its invariance under a random
    rotation (and inversion when ``parity``) of those features.  A graph builder goes through
    :func:`assert_graph_builder`.
    """
    kind = kind or kind_of(component)
    try:
        check_component(component, kind)
    except CdpError as exc:
        raise AssertionError(str(exc)) from None
    who = f"{kind} {describe(component)}"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if kind == "featurizer":
            _check_featurizer(component, who)
        elif kind == "graph":
            assert_graph_builder(component)
        elif kind == "backbone":
            _check_backbone(component, who, g)
        else:
            _check_readout(component, who, g, parity, seed)


def _check_featurizer(feat: Featurizer, who: str) -> None:
    top = int(feat.num_elements) - 1
    numbers = torch.tensor([1, 6, top, 1, 8 % (top + 1)], dtype=torch.long)
    out = feat(numbers)
    shape = (5, feat.out_spec.dim)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        raise AssertionError(f"{who}: forward(numbers [5]) gave {_shape(out)}, expected {list(shape)} "
                             f"(out_spec {feat.out_spec})")
    if not out.is_floating_point():
        raise AssertionError(f"{who}: forward gave {out.dtype} features, expected a floating dtype")
    _finite(out, who, "forward(numbers)")
    if not torch.equal(out[0], out[3]):
        raise AssertionError(f"{who}: two atoms of the same element got different features")


def _shape(value) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _graph(n: int, e: int, cutoff: float, dtype, g, receivers: int) -> Tuple[torch.Tensor, torch.Tensor]:
    ei = torch.stack([torch.randint(0, n, (e,), generator=g), torch.randint(0, receivers, (e,), generator=g)])
    vec = torch.randn(e, 3, generator=g, dtype=torch.float64)
    vec = vec / vec.norm(dim=1, keepdim=True) * (0.3 + 0.6 * cutoff * torch.rand(e, 1, generator=g, dtype=torch.float64))
    vec[0] = 0.0  # a zero-length edge (a probe on an atom)
    return ei, vec.to(dtype)


def _check_backbone(bb: Backbone, who: str, g) -> None:
    dtype = _dtype(bb)
    n, m = 5, 6
    x = torch.randn(n, bb.in_spec.dim, generator=g, dtype=torch.float64).to(dtype)
    ei, vec = _graph(n, 14, float(bb.cutoff), dtype, g, n)
    layers = bb.encode(x, ei, vec)
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(t, torch.Tensor) for t in layers):
        raise AssertionError(f"{who}: encode must return a non-empty list of tensors, got {type(layers).__name__}")
    for i, t in enumerate(layers):
        if t.ndim < 1 or t.shape[0] != n:
            raise AssertionError(f"{who}: encode's layer {i} has shape {list(t.shape)}, expected {n} rows (one per atom)")
        _finite(t, who, f"encode's layer {i}")
    pei, pvec = _graph(n, 9, float(bb.cutoff), dtype, g, m - 1)  # the last probe has no edge
    out = bb.decode(list(layers), pei, pvec, m)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (m, bb.out_spec.dim):
        raise AssertionError(f"{who}: decode(..., num_probes={m}) gave {_shape(out)}, expected {[m, bb.out_spec.dim]} "
                             f"(out_spec {bb.out_spec})")
    _finite(out, who, "decode (a probe without edges, a zero-length edge)")
    estimate = bb.probe_memory(torch.finfo(dtype).bits // 8, 30.0)
    if estimate is not None:
        if not (isinstance(estimate, tuple) and len(estimate) == 2 and all(isinstance(v, (int, np.integer)) and v >= 0
                                                                           for v in estimate)):
            raise AssertionError(f"{who}: probe_memory must return None or (fixed bytes, bytes per probe) as "
                                 f"non-negative ints, got {estimate!r}")


def _check_readout(ro: Readout, who: str, g, parity: bool, seed: int) -> None:
    dtype = _dtype(ro)
    m = 7
    f = torch.randn(m, ro.in_spec.dim, generator=g, dtype=torch.float64).to(dtype)
    out = ro(f)
    shape = (m, 2) if ro.spin else (m,)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        raise AssertionError(f"{who}: forward(features [{m}, {ro.in_spec.dim}]) gave {_shape(out)}, expected "
                             f"{list(shape)} (spin={bool(ro.spin)})")
    _finite(out, who, "forward")
    reads = ro.reads()  # None or an irreps string: check_component refused anything else
    if reads is not None:  # a backbone may leave every other channel unspecified: they must not matter
        read = {ir for _, ir in o3.Irreps(reads)}
        # plain features are so many 0e channels (Spec): a plain readout reading "0e" reads them all
        irreps = o3.Irreps(ro.in_spec.irreps if ro.in_spec.irreps is not None else f"{ro.in_spec.dim}x0e")
        other = torch.zeros(ro.in_spec.dim, dtype=torch.bool)
        for (_, ir), sl in zip(irreps, irreps.slices()):
            other[sl] = ir not in read
        noisy = f + 1e3 * torch.randn(f.shape, generator=g, dtype=torch.float64).to(dtype) * other
        err = float((ro(noisy) - out).abs().max())
        if err > (1e-9 if dtype == torch.float64 else 1e-5) * max(float(out.abs().max()), 1e-30):
            raise AssertionError(f"{who}: reads() says it reads only {reads}, but its output changes by {err:.3g} "
                                 "when the other channels change")
    if ro.in_spec.irreps is not None:
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        for improper in (False, True) if parity else (False,):
            rot = torch.as_tensor(random_rotation(seed, improper), dtype=dtype)
            d = o3.Irreps(ro.in_spec.irreps).D_from_matrix(rot).to(dtype)
            turned = ro(f @ d.T)
            err = float((turned - out).abs().max())
            if err > tol * max(float(out.abs().max()), 1e-30):
                what = "an inversion and rotation" if improper else "a rotation"
                raise AssertionError(f"{who}: the density changes by {err:.3g} (of max {float(out.abs().max()):.3g}) "
                                     f"when its {ro.in_spec.irreps} input features undergo {what}: it must read "
                                     "only invariant (0e) channels")


# -- the graph builder against brute force --------------------------------------------------------
def _brute(positions, cell, pbc, queries, cutoff, drop_self) -> Set[tuple]:
    """Every (sender, receiver, offset) with |query − (r_sender + offset @ cell)| ≤ cutoff."""
    heights = np.full(3, np.inf)
    periodic = [k for k in range(3) if pbc[k]]
    if periodic:
        inv = np.linalg.pinv(cell[periodic])  # columns: reciprocal vectors within the periodic span
        heights[periodic] = 1.0 / np.linalg.norm(inv, axis=0)
    reach = [int(np.ceil((cutoff + 2 * _extent(positions, queries)) / heights[k])) + 1 if pbc[k] else 0 for k in range(3)]
    out = set()
    for n in itertools.product(*(range(-r, r + 1) for r in reach)):
        shift = np.asarray(n, dtype=np.float64) @ cell
        d = np.linalg.norm(queries[None, :, :] - (positions[:, None, :] + shift), axis=-1)  # [atoms, queries]
        for s, r in zip(*np.nonzero(d <= cutoff - 1e-9)):
            if not (drop_self and s == r and not any(n)):
                out.add((int(s), int(r), *n))
    return out


def _extent(*arrays) -> float:
    pts = np.concatenate([a for a in arrays if len(a)])
    return float(np.max(np.linalg.norm(pts - pts.mean(0), axis=1)))


def _edge_set(result, who: str, what: str, senders: int, receivers: int) -> Set[tuple]:
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(f"{who}: {what} must return (edge_index, offsets), got {type(result).__name__}")
    ei, off = (np.asarray(a) for a in result)
    if ei.ndim != 2 or ei.shape[0] != 2 or ei.dtype != np.int64:
        raise AssertionError(f"{who}: {what} edge_index is {ei.dtype} {list(ei.shape)}, expected int64 [2, E]")
    if off.shape != (ei.shape[1], 3) or off.dtype != np.int64:
        raise AssertionError(f"{who}: {what} offsets are {off.dtype} {list(off.shape)}, expected int64 [E, 3]")
    if ei.size and (ei[0].min() < 0 or ei[0].max() >= senders or ei[1].min() < 0 or ei[1].max() >= receivers):
        raise AssertionError(f"{who}: {what} has indices out of range")
    edges = [(int(s), int(r), *map(int, o)) for s, r, o in zip(ei[0], ei[1], off)]
    if len(set(edges)) != len(edges):
        raise AssertionError(f"{who}: {what} lists an edge twice")
    return set(edges)


def _compare(got: Set[tuple], want: Set[tuple], positions, cell, queries, cutoff, who: str, what: str) -> None:
    def length(e):
        return float(np.linalg.norm(queries[e[1]] - (positions[e[0]] + np.asarray(e[2:], float) @ cell)))

    extra = [e for e in got - want if length(e) > cutoff + 1e-9]  # edges within 1e-9 Å of the cutoff may go either way
    missing = [e for e in want - got]
    if extra or missing:
        e = (extra or missing)[0]
        hint = (" (offsets are the sender's image: vector = r_receiver − (r_sender + offsets @ cell))"
                if extra else "")
        raise AssertionError(
            f"{who}: {what}: {len(missing)} edges within the cutoff missing, {len(extra)} beyond it; e.g. "
            f"{'beyond' if extra else 'missing'} [sender {e[0]}, receiver {e[1]}, offset {list(e[2:])}] of length "
            f"{length(e):.4f} Å, cutoff {cutoff} Å{hint}")


def graph_cases():
    """(label, positions, cell, pbc, probes) for the graph builder: molecule (zero cell), thin triclinic
    crystal with unwrapped atoms, slab with a zero cell row on its free axis, a lone atom."""
    rng = np.random.default_rng(5)
    mol = np.array([[0.0, 0.0, 0.0], [1.1, 0.2, 0.1], [-0.4, 1.3, 0.2], [4.5, 0.0, 0.0]])
    cell = np.array([[3.4, 0.0, 0.0], [0.6, 3.2, 0.0], [0.3, 0.5, 2.1]])
    crystal = np.array([[0.1, 0.2, 0.3], [1.9, 1.7, 1.0], [4.0, -1.2, 5.0]])  # the last outside the cell
    slab_cell = np.array([[3.5, 0.0, 0.0], [1.0, 3.3, 0.0], [0.0, 0.0, 0.0]])
    slab = np.array([[0.0, 0.0, 0.0], [2.2, 1.6, 1.0], [0.9, 2.3, -0.9]])
    return [
        ("molecule, all-zero cell", mol, np.zeros((3, 3)), np.array([False] * 3), rng.uniform(-2, 5, (15, 3))),
        ("thin triclinic crystal, unwrapped atoms", crystal, cell, np.array([True] * 3), rng.uniform(-3, 6, (15, 3))),
        ("slab, zero cell row on the free axis", slab, slab_cell, np.array([True, True, False]), rng.uniform(-3, 5, (15, 3))),
        ("one atom in a small cubic cell", np.array([[0.5, 0.5, 0.5]]), np.eye(3) * 2.5, np.array([True] * 3),
         rng.uniform(0, 2.5, (6, 3))),
    ]


def assert_graph_builder(builder: GraphBuilder, cutoff: float = 3.0) -> None:
    """``builder`` finds exactly the edges a brute-force search over periodic images finds, with cdp's conventions.

    On :func:`graph_cases` (molecule with an all-zero cell, a triclinic cell thinner than the cutoff with
    atoms outside it, a slab whose free-axis cell row is zero, a lone atom meeting its own images):
    ``atom_edges`` and ``probe_edges`` return int64 arrays of the declared shapes, every
    (sender, receiver, offset) within ``cutoff`` once and nothing beyond it, offsets being the sender's
    image (vector = r_receiver − (r_sender + offsets @ cell)), zero on free axes, and no atom paired with
    itself at offset 0.  Each case runs twice, so a builder that caches per structure is checked too.
    """
    try:
        check_component(builder, "graph")
    except CdpError as exc:
        raise AssertionError(str(exc)) from None
    who = f"graph {describe(builder)}"
    for label, pos, cell, pbc, probes in graph_cases() * 2:
        n = len(pos)
        got = _edge_set(builder.atom_edges(pos.copy(), cell.copy(), pbc.copy(), cutoff), who, f"atom_edges ({label})", n, n)
        _compare(got, _brute(pos, cell, pbc, pos, cutoff, True), pos, cell, pos, cutoff, who, f"atom_edges ({label})")
        got = _edge_set(builder.probe_edges(pos.copy(), cell.copy(), pbc.copy(), probes.copy(), cutoff), who,
                        f"probe_edges ({label})", n, len(probes))
        _compare(got, _brute(pos, cell, pbc, probes, cutoff, False), pos, cell, probes, cutoff, who, f"probe_edges ({label})")
