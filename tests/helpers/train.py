"""Tiny synthetic density datasets and configs for the training tests (fast to read and train on)."""

from __future__ import annotations

import os

import numpy as np
from ase import Atoms

from cdp.core.types import DensityGrid

MOLECULES = {
    "h2": (["H", "H"], [[0, 0, 0], [0.74, 0, 0]]),
    "h2o": (["O", "H", "H"], [[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]]),
    "ch4": (["C", "H", "H", "H", "H"], [[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]]),
    "nh3": (["N", "H", "H", "H"], [[0, 0, 0.1], [0.94, 0, -0.27], [-0.47, 0.81, -0.27], [-0.47, -0.81, -0.27]]),
    "co": (["C", "O"], [[0, 0, 0], [0, 0, 1.13]]),
}


def gaussian_grid(atoms: Atoms, shape=(10, 10, 10)) -> DensityGrid:
    """A smooth density: one normalised Gaussian of Z electrons per atom, on the atoms' cell grid."""
    cell = np.asarray(atoms.cell.array)
    idx = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), axis=-1)
    pts = idx @ cell
    rho = np.zeros(shape)
    for z, r in zip(atoms.numbers, atoms.positions):
        d2 = ((pts - r) ** 2).sum(-1)
        sigma = 0.5
        rho += z * np.exp(-d2 / (2 * sigma**2)) / (2 * np.pi * sigma**2) ** 1.5
    return DensityGrid(cell=cell, values=rho, pbc=np.asarray(atoms.pbc, dtype=bool))


def make_dataset(directory, names=("h2", "h2o", "ch4", "nh3", "co"), shape=(10, 10, 10)) -> str:
    """Write non-periodic molecules in 5 Å boxes as CHGCARs (pbc in sidecars) into ``directory``."""
    import cdp.io

    os.makedirs(directory, exist_ok=True)
    for name in names:
        symbols, pos = MOLECULES[name]
        atoms = Atoms(symbols, positions=pos, cell=np.eye(3) * 5.0, pbc=False)
        atoms.positions += 2.5 - atoms.positions.mean(0)
        cdp.io.write(os.path.join(directory, f"{name}.CHGCAR"), atoms, gaussian_grid(atoms, shape))
    return str(directory)


def tiny_config(dataset: str, **extra) -> dict:
    """A 1-layer equiDeepDFT of width 8 trained for a few float64 steps."""
    cfg = {
        "model": {"preset": "equideepdft-cpu", "featurizer": {"size": 8},
                  "backbone": {"node_size": 8, "num_interactions": 1}},
        "dataset": dataset,
        "split": {"train": ["h2", "h2o", "ch4", "nh3"], "validation": ["co"], "test": []},
        "steps": 6,
        "probes": 16,
        "batch_size": 2,
        "dtype": "float64",
        "loss": "l1",
        "log_every": 1,
        "validate_every": 3,
        "val_probes": 32,
        "progress": False,
    }
    cfg.update(extra)
    return cfg
