"""The built-in graph builder against brute force with cdp.testing (conventions of the GraphBuilder contract)."""

from __future__ import annotations

import pytest

from cdp.plugins.graphs.periodic import PeriodicGraphBuilder
from cdp.testing import assert_graph_builder


@pytest.mark.parametrize("probe_chunk", [3, 200_000])  # probes in several chunks, and in one
@pytest.mark.parametrize("cutoff", [1.5, 3.0, 4.2])
def test_periodic_builder_contract(probe_chunk, cutoff):
    assert_graph_builder(PeriodicGraphBuilder(probe_chunk=probe_chunk), cutoff=cutoff)
