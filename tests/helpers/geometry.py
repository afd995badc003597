"""Random rotations for the equivariance tests."""

from __future__ import annotations

import numpy as np


def _random_rotation(rng, improper=False):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q
