"""cdp.data: density datasets (directories, DeepDFT tars, ChargE3Net dirs), probe sampling, reference DFT
generators (PySCF molecules, GPAW crystals) and the embedded default dataset."""

from __future__ import annotations

from cdp.data.paths import embedded_path  # noqa: F401  (re-exported)


def load_dataset(path=None):
    """Open a dataset (None → the embedded one); see :mod:`cdp.data.datasets`."""
    from cdp.data.datasets import load_dataset as _load  # start-up: `import cdp.data` loads no torch

    return _load(path)


def load_split(path=None):
    """Read a split JSON (None → the embedded dataset's split)."""
    from cdp.data.datasets import load_split as _load  # start-up: as load_dataset

    return _load(path)


__all__ = ["embedded_path", "load_dataset", "load_split"]
