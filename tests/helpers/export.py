"""Shared helpers of the export tests: tiny models, structures with sizes unlike the export example."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk

from cdp.core.model import DensityModel
from cdp.export.examples import TINY_CONFIGS

BACKBONES = sorted(TINY_CONFIGS)


def tiny_model(name: str) -> DensityModel:
    torch.manual_seed(0)
    model = DensityModel.from_config(TINY_CONFIGS[name]).eval()
    with torch.no_grad():  # untrained e3nn outputs are tiny; make densities O(1)
        for p in model.readout.parameters():
            p.mul_(10.0)
    return model


def cases():
    """(name, atoms, probes): periodic bulk (many edges), a molecule in an open box with far probes
    (a probe batch with no edges), and a single atom whose periodic images are beyond the cutoff (E = 0)."""
    rng = np.random.default_rng(3)
    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.numbers[[1, 2]] = 6
    si.positions += rng.normal(scale=0.05, size=si.positions.shape)
    probes_si = rng.uniform(-1.0, 6.0, size=(23, 3))
    mol = Atoms("COHHHH", positions=[[0, 0, 0], [1.2, 0, 0], [-0.6, 0.9, 0], [-0.6, -0.9, 0.1], [0.6, 0.2, 1.1], [0.5, -0.1, -1.2]], cell=np.eye(3) * 8.0, pbc=False)
    probes_mol = np.concatenate([rng.uniform(-1.5, 2.0, size=(9, 3)), rng.uniform(20, 25, size=(6, 3))])
    single = Atoms("O", positions=[[1.0, 1.0, 1.0]], cell=np.eye(3) * 6.5, pbc=True)
    probes_single = rng.uniform(0.0, 6.5, size=(11, 3))
    return [("bulk", si, probes_si), ("molecule+far-probes", mol, probes_mol), ("single-atom", single, probes_single)]
