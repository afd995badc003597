"""The built-in featurizers keep the Featurizer contract (cdp.testing) inside a tiny model."""

from __future__ import annotations

import pytest

from cdp.plugins.featurizers.embedding import EmbeddingFeaturizer
from cdp.plugins.featurizers.onehot import OneHot
from cdp.testing import assert_batching_invariant, assert_component, tiny_model


@pytest.mark.parametrize("featurizer, base", [(OneHot(), "chargee3net"), (OneHot(num_elements=10), "chargee3net"),
                                              (EmbeddingFeaturizer(size=8), "equideepdft")])
def test_featurizer_contract(featurizer, base):
    assert_component(featurizer)
    if featurizer.num_elements == 119:
        assert_batching_invariant(tiny_model(base, featurizer=featurizer))
