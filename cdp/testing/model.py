"""Whole-model checks for a component inside a tiny model: equivariance, batching, export round trip.

Each ``assert_*`` function returns nothing and raises AssertionError naming the case, the
transformation and the error relative to max |ρ|.  They run the :class:`~cdp.core.model.DensityModel`
directly (no predictor, so no recentring hides a translation error).
"""

from __future__ import annotations

import copy
import unittest
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms
from ase.geometry import get_distances

from cdp.core.components import check_component
from cdp.core.errors import CdpError
from cdp.core.model import DensityModel
from cdp.core.registry import get_registry
from cdp.core.types import Batch
from cdp.export.examples import TINY_CONFIGS
from cdp.export.exporter import export_model
from cdp.export.runtime import load_exported
from cdp.predict import Predictor
from cdp.testing.contract import assert_component
from cdp.testing.structures import Case, random_rotation, structures

Override = Union[None, dict, object, Callable]


def _default_tol(model) -> float:
    return 1e-9 if model.dtype == torch.float64 else 1e-4


def tiny_model(base: str = "invdeepdft", *, featurizer: Override = None, graph: Override = None,
               backbone: Override = None, readout: Override = None, registry=None,
               dtype: torch.dtype = torch.float64, seed: int = 0) -> DensityModel:
    """A small model (2 layers, cutoff 3 Å) of the built-in family ``base`` with any component swapped in.

    ``base``: ``chargee3net`` (one-hot → irreps), ``invdeepdft`` or ``equideepdft`` (embedding of size 8 →
    8 plain features).  Each override is a config ``{"name": ..., **params}`` built through the registry
    (the plugin must be installed, or registered in ``registry``), or a component instance; a readout may
    also be a class or function called as ``readout(in_spec=backbone.out_spec)``.  Weights are seeded
    with ``torch.manual_seed(seed)`` (the global generator), the model is in ``dtype`` and in eval mode.  Raises CdpError when pieces do not fit.
    """

    if base not in TINY_CONFIGS:
        raise CdpError(f"unknown tiny model base '{base}' (one of {', '.join(sorted(TINY_CONFIGS))})")
    registry = registry or get_registry()
    for kind, value in (("featurizer", featurizer), ("graph", graph), ("backbone", backbone), ("readout", readout)):
        if isinstance(value, str):
            raise CdpError(f"tiny_model: {kind}={value!r}: give a config {{'name': {value!r}, ...}}, a component "
                           f"instance{', or a class or function called with in_spec' if kind == 'readout' else ''}")
    config = copy.deepcopy(TINY_CONFIGS[base])
    parts = {}
    torch.manual_seed(seed)
    for kind, value in (("featurizer", featurizer), ("graph", graph), ("backbone", backbone)):
        if isinstance(value, dict):
            config[kind] = copy.deepcopy(value)
        elif value is not None:
            parts[kind] = value
            config[kind] = {"name": _registered_name(registry, kind, value)}
        if kind not in parts:
            parts[kind] = registry.build(kind, config[kind])
    check_component(parts["backbone"], "backbone")
    if isinstance(readout, dict):
        config["readout"] = copy.deepcopy(readout)
        readout = None
    if readout is None:
        head = registry.build("readout", config["readout"], in_spec=parts["backbone"].out_spec)
    elif isinstance(readout, torch.nn.Module):
        head = readout
    else:
        head = readout(in_spec=parts["backbone"].out_spec)
    if not isinstance(readout, (type(None), dict)):
        config["readout"] = {"name": _registered_name(registry, "readout", head)}
    model = DensityModel(parts["featurizer"], parts["backbone"], head, parts["graph"], config)
    return model.to(dtype).eval()


def _registered_name(registry, kind: str, component) -> str:
    """The name ``component``'s class is registered under (its class name when it is not registered)."""
    cls = component if isinstance(component, type) else type(component)
    for name, entry in registry.components.get(kind, {}).items():
        if entry.factory is cls:
            return name
    return cls.__name__


def density(model: DensityModel, atoms: Atoms, probes: np.ndarray) -> np.ndarray:
    """ρ [M] (or [M, 2]) of ``model`` at ``probes`` [M, 3] Å, float64, straight through encode/decode."""
    batch = Batch.from_atoms([atoms]).to(dtype=model.dtype)
    with torch.no_grad():
        out = model(batch, torch.as_tensor(np.asarray(probes, dtype=np.float64), dtype=model.dtype))
    return out.detach().cpu().double().numpy()


def _cases(model, cases: Optional[Sequence[Case]]) -> List[Case]:
    if cases is not None:
        return list(cases)
    top = int(model.featurizer.num_elements) - 1
    elements = [z for z in (1, 6, 7, 8) if z <= top] or [1]
    return structures(elements)


def _close(ref: np.ndarray, got: np.ndarray, tol: float, what: str, scale: Optional[float] = None) -> None:
    if got.shape != ref.shape:
        raise AssertionError(f"{what}: ρ has shape {list(got.shape)}, expected {list(ref.shape)}")
    if not np.all(np.isfinite(got)):
        raise AssertionError(f"{what}: ρ holds non-finite values")
    if not got.size:
        return
    scale = float(np.abs(ref).max()) if scale is None else scale
    err = float(np.abs(got - ref).max())
    if err > tol * max(scale, 1e-300):
        raise AssertionError(f"{what}: ρ differs by {err:.3g} ({err / max(scale, 1e-300):.2g} of max |ρ| = {scale:.3g}; "
                             f"tolerance {tol:.1g})")


def _on_atoms(atoms: Atoms, probes: np.ndarray) -> np.ndarray:
    """[M] bool: probes within 1e-6 Å of an atom or of one of its periodic images."""

    _, d = get_distances(probes, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    return d.min(axis=1) < 1e-6


def assert_equivariant(model: DensityModel, cases: Optional[Sequence[Case]] = None, parity: bool = True,
                       tol: Optional[float] = None, seed: int = 0) -> None:
    """ρ is invariant under rotation, inversion (when ``parity``), translation, atom permutation and
    periodic images (atoms moved by lattice vectors, probes moved by one).

    ``cases``: ``(label, atoms, probes)`` (default :func:`cdp.testing.structures.structures`);
    ``tol``: relative to max |ρ| (default 1e-9 in float64, 1e-4 in float32).  Also fails when ρ is
    non-finite (a probe on an atom is part of every default case) or zero everywhere.

    A probe on an atom is compared under rotation, translation and permutation, where its zero edge
    vector stays exactly zero.  After a lattice-vector move that vector is zero only up to rounding
    (1e-15 Å in float64, 1e-6 Å in float32), and the published architectures are discontinuous at
    zero (e3nn's normalised spherical harmonics, DeepDFT's unit vector vec / max(|vec|, 1e-12): up to
    1e-4 of max |ρ| in float64, 1e-2 in float32), so in those two checks such probes need only be finite.
    """
    tol = _default_tol(model) if tol is None else tol
    rng = np.random.default_rng(seed)
    for label, atoms, probes in _cases(model, cases):
        ref = density(model, atoms, probes)
        if not np.all(np.isfinite(ref)):
            raise AssertionError(f"{label}: ρ holds non-finite values (is a zero-length edge handled?)")
        if not np.abs(ref).max() > 0:
            raise AssertionError(f"{label}: ρ is zero everywhere; nothing to compare")
        for improper in (False, True) if parity else (False,):
            rot = random_rotation(seed + 1, improper)
            turned = atoms.copy()
            turned.positions = atoms.positions @ rot.T
            turned.cell = atoms.cell.array @ rot.T
            what = "inversion + rotation" if improper else "rotation"
            _close(ref, density(model, turned, probes @ rot.T), tol, f"{label}: {what}")
        shift = rng.uniform(-7.0, 7.0, 3)
        moved = atoms.copy()
        moved.positions = atoms.positions + shift
        _close(ref, density(model, moved, probes + shift), tol, f"{label}: translation by {np.round(shift, 3).tolist()} Å")
        perm = rng.permutation(len(atoms))
        _close(ref, density(model, atoms[perm], probes), tol, f"{label}: atom permutation {perm.tolist()}")
        periodic = np.nonzero(atoms.pbc)[0]
        if periodic.size:
            cell = atoms.cell.array
            images = atoms.copy()
            steps = rng.integers(-2, 3, size=(len(atoms), 3)) * atoms.pbc
            images.positions = atoms.positions + steps @ cell
            on = _on_atoms(atoms, probes)
            step = np.zeros(3, dtype=int)
            step[periodic[0]] = 1
            for got, what in ((density(model, images, probes), f"atoms moved by lattice vectors {steps.tolist()}"),
                              (density(model, atoms, probes + step @ cell), f"probes moved by lattice vector {step.tolist()}")):
                if not np.all(np.isfinite(got)):
                    raise AssertionError(f"{label}: {what}: ρ holds non-finite values")
                _close(ref[~on], got[~on], tol, f"{label}: {what}", float(np.abs(ref).max()))


def assert_batching_invariant(model: DensityModel, cases: Optional[Sequence[Case]] = None,
                              tol: Optional[float] = None) -> None:
    """Encoding once and decoding probes in batches of any size gives what one forward pass gives.

    Checks: decode in batches of 1, 3 and half the probes; decode twice from the same atom features
    (decode must not change them); an empty probe batch (shape [0] or [0, 2]); several structures in one
    :class:`~cdp.core.types.Batch` equal to each alone (no message crosses structures).
    """
    tol = _default_tol(model) if tol is None else tol
    cases = _cases(model, cases)
    refs = []
    for label, atoms, probes in cases:
        batch = Batch.from_atoms([atoms]).to(dtype=model.dtype)
        pts = torch.as_tensor(probes, dtype=model.dtype)
        with torch.no_grad():
            ref = model(batch, pts).double().numpy()
            feats = model.encode(batch)
            for size in (1, 3, max(1, len(probes) // 2)):
                parts = [model.decode(batch, feats, pts[i: i + size]) for i in range(0, len(probes), size)]
                _close(ref, torch.cat(parts).double().numpy(), tol, f"{label}: probes decoded in batches of {size}")
            _close(ref, model.decode(batch, feats, pts).double().numpy(), tol, f"{label}: a second decode from the same features")
            empty = model.decode(batch, feats, pts[:0])
        if tuple(empty.shape) != (0,) + ref.shape[1:]:
            raise AssertionError(f"{label}: an empty probe batch gave shape {list(empty.shape)}, expected {[0, *ref.shape[1:]]}")
        refs.append(ref)
    batch = Batch.from_atoms([a for _, a, _ in cases]).to(dtype=model.dtype)
    pts = torch.as_tensor(np.concatenate([p for _, _, p in cases]), dtype=model.dtype)
    owner = torch.as_tensor(np.concatenate([np.full(len(p), i) for i, (_, _, p) in enumerate(cases)]), dtype=torch.long)
    with torch.no_grad():
        together = model(batch, pts, owner).double().numpy()
    _close(np.concatenate(refs), together, tol, f"{len(cases)} structures in one batch")


def assert_export_round_trip(model: DensityModel, directory, fmt: str = "onnx", cases: Optional[Sequence[Case]] = None,
                             tol: float = 1e-5) -> None:
    """Export ``model`` to ``directory`` in ``fmt`` and check the exported runtime gives ρ within ``tol``
    of max |ρ| of PyTorch on every case.

    ``fmt``: ``onnx`` (skipped, by raising ``unittest.SkipTest``, when onnxruntime is not installed),
    ``torchscript`` or ``pt2``.  The exported runtime builds the graph builder by its registered name, so
    a graph builder plugin must be installed.  Export failures raise AssertionError with the exporter's
    one-line reason (which names the component).  A float32 copy of ``model`` is exported and compared
    (exports are for deployment in float32; onnxruntime lacks float64 kernels of some operations, e.g.
    Softplus).
    """
    model = copy.deepcopy(model).to(torch.float32).eval()
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("onnxruntime is not installed: no ONNX round trip") from None

    try:
        export_model(model, directory, fmt, force=True)
        exported = load_exported(directory, expect_format=fmt)
    except CdpError as exc:
        raise AssertionError(f"export to {fmt}: {exc}") from None
    reference = Predictor(model)
    for label, atoms, probes in _cases(model, cases):
        _close(reference.predict(atoms, probes), exported.predict(atoms, probes), tol, f"{label}: {fmt} export vs PyTorch")


def _assert_read_only(model: DensityModel, cases: Optional[Sequence[Case]] = None) -> None:
    """ρ is the same whether the backbone was told what the readout reads (``Backbone.read_only(reads())``,
    as the model does) or to compute every output channel (``read_only(None)``)."""
    reads = model.readout.reads()
    if reads is None:
        return
    tol = _default_tol(model)
    for label, atoms, probes in _cases(model, cases):
        told = density(model, atoms, probes)
        model.backbone.read_only(None)
        try:
            full = density(model, atoms, probes)
        finally:
            model.backbone.read_only(reads)
        _close(full, told, tol, f"{label}: backbone {type(model.backbone).__name__} told read_only({reads!r}) "
                                f"(the readout's reads()) vs read_only(None)")


def assert_model(model: DensityModel, parity: bool = True, cases: Optional[Sequence[Case]] = None) -> None:
    """Every component's contract (:func:`~cdp.testing.contract.assert_component`), then
    :func:`assert_equivariant` and :func:`assert_batching_invariant` of the whole model, and the same ρ
    whether the backbone computes only the channels the readout reads (``Readout.reads``) or all of them."""

    for kind in ("featurizer", "graph", "backbone", "readout"):
        assert_component(getattr(model, kind), kind, parity=parity)
    assert_equivariant(model, cases, parity=parity)
    assert_batching_invariant(model, cases)
    _assert_read_only(model, cases)

