"""cdp.testing catches what it promises to catch: each check fails, with a clear message, on a broken component."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdp.core.components import Readout, Spec
from cdp.plugins.backbones.schnet import InvDeepDFT
from cdp.plugins.graphs.periodic import PeriodicGraphBuilder
from cdp.testing import (assert_batching_invariant, assert_component, assert_equivariant, assert_graph_builder,
                         structures, tiny_model)
from tests.helpers.toy_components import ToyReadout


class NegatedOffsets(PeriodicGraphBuilder):
    """The receiver's image instead of the sender's: the sign convention broken."""

    def atom_edges(self, positions, cell, pbc, cutoff):
        ei, off = super().atom_edges(positions, cell, pbc, cutoff)
        return ei, -off


class OneImage(PeriodicGraphBuilder):
    """Keeps one image per (sender, receiver) pair: wrong for cells thinner than the cutoff."""

    def probe_edges(self, positions, cell, pbc, probes, cutoff):
        ei, off = super().probe_edges(positions, cell, pbc, probes, cutoff)
        _, first = np.unique(ei.T, axis=0, return_index=True)
        first.sort()
        return ei[:, first], off[first]


def test_graph_builder_sign_convention_and_images_are_checked():
    assert_graph_builder(PeriodicGraphBuilder(probe_chunk=4))
    with pytest.raises(AssertionError, match=r"atom_edges \(thin triclinic crystal, unwrapped atoms\): \d+ edges within "
                                             r"the cutoff missing, \d+ beyond it.*offsets are the sender's image"):
        assert_graph_builder(NegatedOffsets())
    with pytest.raises(AssertionError, match=r"probe_edges \(thin triclinic crystal, unwrapped atoms\): \d+ edges within "
                                             r"the cutoff missing, 0 beyond it"):
        assert_graph_builder(OneImage())


class VectorHead(Readout):
    """Reads every channel, vectors included: not invariant."""

    def __init__(self, in_spec: Spec):
        super().__init__()
        self.in_spec = in_spec
        self.lin = torch.nn.Linear(in_spec.dim, 1)

    def forward(self, features):
        return self.lin(features)[:, 0]


def test_readout_reading_vectors_fails_both_checks():
    model = tiny_model("chargee3net", readout=VectorHead)
    with pytest.raises(AssertionError, match=r"readout VectorHead .* the density changes by .* when its .*1o.* input "
                                             r"features undergo a rotation: it must read only invariant \(0e\) channels"):
        assert_component(model.readout)
    with pytest.raises(AssertionError, match=r"^molecule: rotation: ρ differs by"):
        assert_equivariant(model)


def test_readout_with_wrong_shape_is_named():
    class Column(ToyReadout):
        def forward(self, features):
            return self.lin(features)  # [M, 1] instead of [M]

    with pytest.raises(AssertionError, match=r"readout Column .*: forward\(features \[7, 4\]\) gave \[7, 1\], expected \[7\] "
                                             r"\(spin=False\)"):
        assert_component(Column(Spec(size=4)))


class XAware(InvDeepDFT):
    """Uses the x component of the probe edge vectors: not rotation invariant."""

    def decode(self, atom_layers, edge_index, edge_vec, num_probes):
        h = super().decode(atom_layers, edge_index, edge_vec, num_probes)
        x = torch.zeros(num_probes, 1, dtype=edge_vec.dtype).index_add(0, edge_index[1], edge_vec[:, :1])
        return h * (1 + x)


class BatchNorm(InvDeepDFT):
    """Normalises probe features over the probe batch: results depend on the batch."""

    def decode(self, atom_layers, edge_index, edge_vec, num_probes):
        h = super().decode(atom_layers, edge_index, edge_vec, num_probes)
        return h - h.mean(0, keepdim=True)


def _deepdft(cls):
    torch.manual_seed(0)
    return cls(num_interactions=2, node_size=8, cutoff=3.0, gaussian_expansion_step=0.5)


def test_backbone_not_invariant_or_batch_dependent_is_caught():
    with pytest.raises(AssertionError, match=r"^molecule: rotation: ρ differs by .* of max \|ρ\|"):
        assert_equivariant(tiny_model("invdeepdft", backbone=_deepdft(XAware)))
    with pytest.raises(AssertionError, match=r"^molecule: probes decoded in batches of 1: ρ differs by"):
        assert_batching_invariant(tiny_model("invdeepdft", backbone=_deepdft(BatchNorm)))


def test_backbone_with_wrong_output_width_is_named():
    class Narrow(InvDeepDFT):
        def decode(self, atom_layers, edge_index, edge_vec, num_probes):
            return super().decode(atom_layers, edge_index, edge_vec, num_probes)[:, :3]

    with pytest.raises(AssertionError, match=r"backbone Narrow .*: decode\(\.\.\., num_probes=6\) gave \[6, 3\], expected "
                                             r"\[6, 8\] \(out_spec 8 features\)"):
        assert_component(_deepdft(Narrow))


def test_backbone_skipping_a_read_channel_is_caught():
    """A backbone whose read_only skips more than it was told may: assert_model compares with read_only(None)."""
    from cdp.plugins.readouts.mlp import MLPReadout
    from cdp.testing import assert_model

    class Skips(InvDeepDFT):
        def read_only(self, irreps):
            self.__dict__["told"] = irreps

        def decode(self, atom_layers, edge_index, edge_vec, num_probes):
            out = super().decode(atom_layers, edge_index, edge_vec, num_probes)
            return out if self.__dict__.get("told") is None else out * 0.5  # a wrong skip

    class Scalars(MLPReadout):
        def reads(self):
            return "0e"  # plain features are 0e: true

    model = tiny_model("invdeepdft", backbone=_deepdft(Skips), readout=lambda in_spec: Scalars(in_spec, "ssp"))
    with pytest.raises(AssertionError, match=r"^molecule: backbone Skips told read_only\('0e'\) \(the readout's "
                                             r"reads\(\)\) vs read_only\(None\): ρ differs by"):
        assert_model(model)
    assert model.backbone.__dict__["told"] == "0e"  # restored after the comparison


def test_structures_are_sane():
    for label, atoms, probes in structures():
        d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
        np.fill_diagonal(d, np.inf)
        assert d.min() > 0.9, label
        assert np.allclose(probes[0], atoms.positions[1])  # the zero-length edge case


def test_kit_imports_no_pytest_and_nothing_in_cdp_imports_it():
    from tests.helpers.paths import REPO
    import ast

    for path in (REPO / "cdp").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        in_kit = path.parent.name == "testing"
        assert in_kit or not any(n.startswith("cdp.testing") for n in names), path
        assert not (in_kit and any(n.split(".")[0] == "pytest" for n in names)), path


def test_tiny_model_names_a_string_override():
    from cdp.core.errors import CdpError
    from cdp.testing import tiny_model

    with pytest.raises(CdpError, match=r"tiny_model: readout='mlp': give a config \{'name': 'mlp', \.\.\.\}"):
        tiny_model("invdeepdft", readout="mlp")
    with pytest.raises(CdpError, match=r"tiny_model: graph='periodic': give a config"):
        tiny_model("invdeepdft", graph="periodic")


def test_export_round_trip_of_a_float64_model(tmp_path):
    """The kit exports a float32 copy: invDeepDFT's Softplus has no float64 onnxruntime kernel."""
    pytest.importorskip("onnxruntime")
    from cdp.testing import assert_export_round_trip, tiny_model

    model = tiny_model("invdeepdft", dtype=torch.float64)
    assert_export_round_trip(model, tmp_path / "onnx")
    assert next(model.parameters()).dtype == torch.float64  # the caller's model is left as it was
