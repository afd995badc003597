"""cdp's core: data containers, component contracts, plugin registry, model assembly, checkpoints.

Names are loaded on first use, so that torch-free parts (``cdp.core.errors``, ``cdp.core.grid``, and
through them ``cdp.io``) do not import torch.
"""

import importlib

_NAMES = {
    "AtomFeatures": "types", "AtomGraph": "types", "Batch": "types", "ProbeGraph": "types", "edge_vectors": "types",
    "CdpError": "errors", "DensityGrid": "grid",
    "Backbone": "components", "Featurizer": "components", "GraphBuilder": "components", "Readout": "components",
    "Spec": "components",
}
__all__ = list(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f"cdp.core.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'cdp.core' has no attribute {name!r}")
