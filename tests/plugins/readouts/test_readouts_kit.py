"""The built-in readouts with cdp.testing: contract (invariance on irreps inputs) and the whole model."""

from __future__ import annotations

import pytest

from cdp.core.components import Spec
from cdp.plugins.readouts.e3nn_linear import LinearSpinCompatReadout, LinearSpinReadout
from cdp.testing import assert_component, assert_model, tiny_model


@pytest.mark.parametrize("base, readout", [
    ("chargee3net", {"name": "linear"}),
    ("chargee3net", {"name": "linear-spin"}),
    ("invdeepdft", {"name": "mlp", "activation": "ssp"}),
    ("equideepdft", {"name": "mlp", "activation": "silu", "spin": True}),
])
def test_readout_contract_in_a_model(base, readout):
    model = tiny_model(base, readout=readout)
    assert model.readout.spin == readout.get("spin", readout["name"] == "linear-spin")
    assert_model(model)


def test_published_spin_head_is_rotation_invariant_but_not_inversion_invariant():
    # linear-spin-compat reads (up, down) from 1x0e + 1x0o as published: the 0o channel flips sign under
    # inversion, so (total, magnetisation) are not invariant under it; cdp's linear-spin (2x0e) is.
    head = LinearSpinCompatReadout(Spec(irreps="4x0e+2x0o+2x1o")).double()
    assert_component(head, parity=False)
    with pytest.raises(AssertionError, match=r"readout LinearSpinCompatReadout .* when its 4x0e\+2x0o\+2x1o input "
                                             r"features undergo an inversion and rotation"):
        assert_component(head)
    assert_component(LinearSpinReadout(Spec(irreps="4x0e+2x0o+2x1o")).double())
    assert_model(tiny_model("chargee3net", readout={"name": "linear-spin-compat"}), parity=False)
