"""Readout.reads() reaches Backbone.read_only: checked at assembly, declared again when the readout changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from cdp.core.components import Spec
from cdp.core.model import DensityModel
from cdp.core.types import CdpError
from cdp.plugins.graphs.periodic import PeriodicGraphBuilder
from cdp.predict import Predictor
from cdp.testing import assert_component
from tests.helpers.toy_components import ToyBackbone, ToyEmbedding, ToyReadout


class RecordingBackbone(ToyBackbone):
    """Records every read_only call (a third-party backbone that acts on it)."""

    def __init__(self):
        super().__init__(4)
        self.told = []

    def read_only(self, irreps):
        self.told.append(irreps)


def _head(reads) -> ToyReadout:
    class Head(ToyReadout):
        def reads(self):
            return reads

    return Head(Spec(size=4))


@pytest.mark.parametrize("bad", ["garbage", "1x", 3, ["0e"], b"0e"])
def test_a_reads_that_is_not_an_irreps_string_is_refused_in_one_line(bad):
    expected = f"reads() must return None or an e3nn irreps string such as '0e', got {bad!r}"
    with pytest.raises(CdpError) as info:
        DensityModel(ToyEmbedding(4), ToyBackbone(4), _head(bad), PeriodicGraphBuilder())
    assert str(info.value) == f"readout Head ({__name__}): {expected}"
    with pytest.raises(AssertionError, match=r"reads\(\) must return None or an e3nn irreps string"):
        assert_component(_head(bad))


def test_a_plain_readout_may_say_it_reads_0e():
    assert_component(_head("0e"))  # plain features are 4x0e: reading "0e" reads them all
    with pytest.raises(AssertionError, match=r"reads\(\) says it reads only 0o"):
        assert_component(_head("0o"))


def test_the_backbone_is_told_again_when_the_readout_changes_or_is_shared():
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=np.eye(3) * 6.0, pbc=True)
    probes = np.array([[0.3, 0.1, 0.0], [1.0, 0.5, 0.2]])
    backbone = RecordingBackbone()
    torch.manual_seed(0)
    model = DensityModel(ToyEmbedding(4), backbone, _head("0e"), PeriodicGraphBuilder()).double()
    assert backbone.told == ["0e"]  # at construction
    pred = Predictor(model)
    pred.predict(atoms, probes)
    assert backbone.told == ["0e"]  # unchanged: not told again
    model.readout = _head(None).double()
    pred.predict(atoms, probes)
    assert backbone.told == ["0e", None]  # a readout swapped in reads everything
    other = DensityModel(ToyEmbedding(4), backbone, _head("0e+0o"), PeriodicGraphBuilder()).double()
    assert backbone.told[-1] == "0e+0o"
    pred.predict(atoms, probes)  # the shared backbone is told again what this model's readout reads
    assert backbone.told[-1] is None
    Predictor(other).predict(atoms, probes)
    assert backbone.told[-1] == "0e+0o"
    n = len(backbone.told)
    backbone.read_only(None)  # a direct call (compute everything) is not undone while the readout stays
    Predictor(other).predict(atoms, probes)
    assert len(backbone.told) == n + 1
    model.readout = _head(["0e"]).double()
    with pytest.raises(CdpError, match=r"reads\(\) must return None or an e3nn irreps string"):
        pred.predict(atoms, probes)
