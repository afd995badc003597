"""Small structures and probe points that exercise the cases components get wrong.

Each case is ``(label, ase.Atoms, probes [M, 3] Å)``: a molecule in an all-zero cell with probes far
from every atom (no edges), a triclinic crystal thinner than a 3 Å cutoff along one axis (several images
of one pair), and a slab periodic in x, y; every case has a probe exactly on an atom (a zero-length
edge).  Atoms are at least 0.9 Å apart, images included.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from ase import Atoms

Case = Tuple[str, Atoms, np.ndarray]


def _probes(rng: np.random.Generator, atoms: Atoms, count: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    pts = rng.uniform(low, high, size=(count, 3))
    pts[0] = atoms.positions[1]  # a probe on an atom: a zero-length edge
    return pts


def structures(elements: Sequence[int] = (1, 6, 7, 8), probes: int = 24, seed: int = 0) -> List[Case]:
    """The three test cases, atoms drawn from ``elements`` (atomic numbers), ``probes`` points each."""
    rng = np.random.default_rng(seed)
    z = np.asarray(list(elements), dtype=np.int64)
    pick = lambda n: z[np.arange(n) % len(z)]  # noqa: E731 - every element appears when n ≥ len(z)

    mol = Atoms(numbers=pick(5), positions=[[0.0, 0.0, 0.0], [1.2, 0.1, 0.0], [-0.6, 1.0, 0.1],
                                             [-0.5, -0.9, 0.4], [0.4, 0.3, 1.2]], pbc=False)
    p_mol = _probes(rng, mol, probes, np.array([-1.5, -1.5, -1.5]), np.array([2.0, 2.0, 2.0]))
    p_mol[-2:] = [[9.0, 9.0, 9.0], [-12.0, 4.0, 0.0]]  # far away: no edge within any sensible cutoff

    cell = np.array([[3.4, 0.0, 0.0], [0.6, 3.2, 0.0], [0.3, 0.5, 2.6]])  # 2.6 Å thick along c
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.45, 0.5], [0.2, 0.75, 0.1]])
    crystal = Atoms(numbers=pick(3), scaled_positions=frac, cell=cell, pbc=True)
    crystal.positions[2] += cell[0]  # an atom outside the cell: builders must not assume wrapped positions
    p_crystal = _probes(rng, crystal, probes, np.array([-1.0, -1.0, -1.0]), np.array([4.5, 4.0, 3.5]))

    slab_cell = np.array([[3.5, 0.0, 0.0], [1.0, 3.3, 0.0], [0.0, 0.0, 12.0]])
    slab = Atoms(numbers=pick(4), positions=[[0.0, 0.0, 0.0], [2.2, 1.6, 1.0], [0.9, 2.3, -0.9], [1.9, 0.3, -1.1]],
                 cell=slab_cell, pbc=[True, True, False])
    p_slab = _probes(rng, slab, probes, np.array([-1.0, -1.0, -2.5]), np.array([4.5, 3.5, 2.5]))
    return [("molecule", mol, p_mol), ("thin-triclinic-crystal", crystal, p_crystal), ("slab", slab, p_slab)]


def random_rotation(seed: int = 0, improper: bool = False) -> np.ndarray:
    """A random 3×3 rotation matrix (det +1), or a rotation times −1 (det −1) when ``improper``."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return -q if improper else q
