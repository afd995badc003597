"""cdp.testing: checks a plugin author runs in their own tests (pytest or any runner).

    from cdp.testing import assert_component, assert_model, assert_export_round_trip, tiny_model

    def test_my_head(tmp_path):
        model = tiny_model("chargee3net", readout={"name": "my-head"})   # or readout=MyHead
        assert_model(model)                                   # contract, equivariance, batching
        assert_export_round_trip(model, tmp_path / "onnx")    # skipped without onnxruntime

Every ``assert_*`` returns nothing and raises AssertionError with a message naming the component,
the case and the error.  Imports torch and cdp's core, never pytest.

* :func:`assert_component`: the contract of one component (required attributes, output shapes on
  random inputs, finite values, a readout's invariance on irreps features).
* :func:`assert_graph_builder`: a graph builder against brute force (sign convention, images,
  free axes with zero cell rows, unwrapped atoms, no self edge).
* :func:`assert_equivariant`: ρ of a whole model is invariant under rotation, inversion,
  translation, permutation and periodic images.
* :func:`assert_batching_invariant`: encode once = encode per batch; probe batches of any size;
  several structures in one batch.
* :func:`assert_model`: all of the above for every component of a model, and the same ρ whether the
  backbone computes only the channels the readout reads (``Readout.reads``) or all of them.
* :func:`assert_export_round_trip`: the exported model (ONNX, TorchScript, pt2) gives PyTorch's ρ.
* :func:`tiny_model`: a 2-layer model of a built-in family with your component swapped in;
  :func:`structures`: the test cases (molecule, thin triclinic crystal, slab).
"""

from cdp.testing.contract import assert_component, assert_graph_builder, graph_cases, kind_of
from cdp.testing.model import (assert_batching_invariant, assert_equivariant, assert_export_round_trip,
                               assert_model, density, tiny_model)
from cdp.testing.structures import random_rotation, structures

__all__ = [
    "assert_component", "assert_graph_builder", "assert_equivariant", "assert_batching_invariant",
    "assert_export_round_trip", "assert_model", "tiny_model", "density", "structures", "graph_cases",
    "random_rotation", "kind_of",
]
