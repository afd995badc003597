"""The component contract: Spec.fits compares irreps, a component missing part of the contract is one line."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

from cdp.core.components import Backbone, Featurizer, GraphBuilder, Readout, Spec, check_component
from cdp.core.model import DensityModel
from cdp.core.types import CdpError
from cdp.plugins.graphs.periodic import PeriodicGraphBuilder
from cdp.predict import Predictor
from tests.helpers.toy_components import TOY_CONFIG, ToyBackbone, ToyEmbedding, ToyReadout, toy_registry


@pytest.mark.parametrize("a, b, fits", [
    (Spec(size=4), Spec(size=4), True),
    (Spec(size=4), Spec(size=5), False),
    (Spec(irreps="2x0e+1x1o"), Spec(irreps="1x0e+1x0e+1x1o"), True),  # simplified before comparing
    (Spec(irreps="2x0e+1x1o"), Spec(irreps="1x1o+2x0e"), False),  # the order of channels matters
    (Spec(size=32), Spec(irreps="32x0e"), True),  # plain features are even scalars
    (Spec(irreps="32x0e"), Spec(size=32), True),
    (Spec(irreps="8x0e+8x1o"), Spec(size=32), False),  # same dimension, but vectors are not invariants
    (Spec(size=32), Spec(irreps="8x0e+8x1o"), False),
    (Spec(irreps="4x0o"), Spec(size=4), False),  # pseudoscalars change sign under inversion
])
def test_spec_fits_compares_irreps(a, b, fits):
    assert a.dim == b.dim or not fits
    assert a.fits(b) is fits


def test_invariant_readout_on_irreps_backbone_is_refused():
    class Vectors(ToyBackbone):  # 4 features declared as 1x0e+1x1o: same width as the readout's 4
        def __init__(self):
            super().__init__(4)
            self.out_spec = Spec(irreps="1x0e+1x1o")

    with pytest.raises(CdpError, match=r"^backbone Vectors produces 1x0e\+1x1o but readout ToyReadout consumes 4 features$"):
        DensityModel(ToyEmbedding(4), Vectors(), ToyReadout(Spec(size=4)), PeriodicGraphBuilder())


class NoSpecHead(Readout):
    def __init__(self, in_spec: Spec):
        super().__init__()
        self.lin = torch.nn.Linear(in_spec.dim, 1)  # forgets self.in_spec = in_spec

    def forward(self, features):
        return self.lin(features)[:, 0]


def test_readout_without_in_spec_is_one_line_naming_it(tmp_path):
    reg = toy_registry(tmp_path)
    reg.components["readout"].pop("toy")
    import types

    from cdp.core.hookspec import hookimpl

    mod = types.ModuleType("nospec")
    mod.cdp_components = hookimpl(lambda: {"readout": {"nospec": NoSpecHead}})
    assert reg.register(mod, "nospec", "test").ok
    with pytest.raises(CdpError) as err:
        DensityModel.from_config(dict(TOY_CONFIG, readout={"name": "nospec"}), registry=reg)
    assert str(err.value) == (f"readout NoSpecHead ({__name__}) does not set 'in_spec', required by the Readout "
                              "contract (set self.in_spec = in_spec in __init__)")


def test_backbone_missing_parts_are_named():
    class NoOut(ToyBackbone):
        def __init__(self):
            super().__init__(4)
            del self.out_spec

    with pytest.raises(CdpError, match=r"^backbone NoOut \(.*\) does not set 'out_spec', required by the Backbone contract$"):
        check_component(NoOut(), "backbone")
    bad = ToyBackbone(4)
    bad.cutoff = float("nan")
    with pytest.raises(CdpError, match=r"'cutoff' must be a positive number of Å, got nan"):
        check_component(bad, "backbone")
    bad = ToyBackbone(4)
    bad.in_spec = 4
    with pytest.raises(CdpError, match=r"'in_spec' must be a cdp.core.components.Spec, got int"):
        check_component(bad, "backbone")

    class NoDecode(Backbone):
        def __init__(self):
            super().__init__()
            self.in_spec = self.out_spec = Spec(size=4)
            self.cutoff = 3.0

        def encode(self, x, edge_index, edge_vec):
            return [x]

    with pytest.raises(CdpError, match=r"does not implement decode\(\) of the Backbone contract"):
        check_component(NoDecode(), "backbone")


def test_other_kinds_are_checked():
    class NotAGraph:
        pass

    with pytest.raises(CdpError, match=r"^graph NotAGraph \(.*\) is not a cdp.core.components.GraphBuilder subclass$"):
        DensityModel(ToyEmbedding(4), ToyBackbone(4), ToyReadout(Spec(size=4)), NotAGraph())
    with pytest.raises(CdpError, match=r"does not implement probe_edges\(\)"):
        check_component(type("Half", (GraphBuilder,), {"atom_edges": lambda self, *a: None})(), "graph")
    feat = ToyEmbedding(4)
    feat.num_elements = 1
    with pytest.raises(CdpError, match=r"'num_elements' must be an integer ≥ 2"):
        check_component(feat, "featurizer")
    head = ToyReadout(Spec(size=4))
    head.spin = "yes"
    with pytest.raises(CdpError, match=r"'spin' must be True or False, got 'yes'"):
        check_component(head, "readout")
    assert isinstance(ToyEmbedding(4), Featurizer) and ToyEmbedding(4).num_elements == 119  # the declared default


def test_backbone_without_memory_estimate_keeps_the_probe_batch(tmp_path):
    model = DensityModel.from_config(TOY_CONFIG, registry=toy_registry(tmp_path))
    assert model.backbone.probe_memory(4, 30.0) is None  # the contract's default
    atoms = bulk("Si", "diamond", a=5.43)
    assert Predictor(model, probe_batch=123).batch_for_memory(atoms, max_memory=10**9) == 123
