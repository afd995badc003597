"""Typed containers that travel along cdp's one data path.

Structures are concatenated into a :class:`Batch`; graphs carry edges as ``[sender, receiver]``
with integer periodic image offsets of the sender, so that an edge vector is
``r_receiver - (r_sender + offset @ cell)``.  Lengths are in Å, densities in e/Å³.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor

from cdp.core.errors import CdpError  # noqa: F401  (re-exported: cdp.core.types.CdpError)
from cdp.core.grid import DensityGrid  # noqa: F401  (re-exported: cdp.core.types.DensityGrid)
from cdp.core.validate import validate_atoms


@dataclass
class Batch:
    """One or more structures, atoms concatenated.

    numbers [N] long, positions [N, 3], cell [B, 3, 3] (rows are lattice vectors), pbc [B, 3] bool,
    atom_batch [N] long (structure index of each atom).
    """

    numbers: Tensor
    positions: Tensor
    cell: Tensor
    pbc: Tensor
    atom_batch: Tensor

    @property
    def num_structures(self) -> int:
        return int(self.cell.shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Batch":
        """Move to a device and cast the floating-point tensors to ``dtype``."""
        fl = dict(device=device, dtype=dtype) if dtype is not None else dict(device=device)
        return Batch(
            numbers=self.numbers.to(device),
            positions=self.positions.to(**fl),
            cell=self.cell.to(**fl),
            pbc=self.pbc.to(device),
            atom_batch=self.atom_batch.to(device),
        )

    @staticmethod
    def from_atoms(atoms_list, dtype: torch.dtype = torch.float64) -> "Batch":
        """Build a batch from a list of ``ase.Atoms`` (validated: non-empty, finite, known elements)."""
        if not isinstance(atoms_list, (list, tuple)):
            atoms_list = [atoms_list]
        numbers, positions, cells, pbcs, owner = [], [], [], [], []
        for i, atoms in enumerate(atoms_list):
            validate_atoms(atoms)
            numbers.append(np.asarray(atoms.numbers, dtype=np.int64))
            positions.append(np.asarray(atoms.positions, dtype=np.float64))
            cells.append(np.asarray(atoms.cell.array, dtype=np.float64))
            pbcs.append(np.asarray(atoms.pbc, dtype=bool))
            owner.append(np.full(len(atoms), i, dtype=np.int64))
        return Batch(
            numbers=torch.from_numpy(np.concatenate(numbers)),
            positions=torch.from_numpy(np.concatenate(positions)).to(dtype),
            cell=torch.from_numpy(np.stack(cells)).to(dtype),
            pbc=torch.from_numpy(np.stack(pbcs)),
            atom_batch=torch.from_numpy(np.concatenate(owner)),
        )


@dataclass
class AtomGraph:
    """Directed atom→atom edges within the cutoff (both directions present, no self edge at offset 0).

    edge_index [2, E] long ``[sender, receiver]``; offsets [E, 3] integer image offsets of the
    sender (float tensor in the positions' dtype, so that ``offsets @ cell`` needs no cast).
    """

    edge_index: Tensor
    offsets: Tensor
    num_nodes: int

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


@dataclass
class ProbeGraph:
    """One-way atom→probe edges within the cutoff.

    edge_index [2, E] long ``[atom sender, probe receiver]``; offsets [E, 3] image offsets of the
    atom; probe_batch [M] long (structure index of each probe).
    """

    edge_index: Tensor
    offsets: Tensor
    num_probes: int
    probe_batch: Optional[Tensor] = None

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def edge_vectors(
    sender_pos: Tensor,
    receiver_pos: Tensor,
    edge_index: Tensor,
    offsets: Tensor,
    cell: Tensor,
    sender_batch: Tensor,
) -> Tensor:
    """Edge vectors ``r_recv - (r_send + n·cell)`` [E, 3], differentiable in the positions.

    ``cell`` is [B, 3, 3]; each edge uses the cell of its sender's structure.
    """
    send, recv = edge_index[0], edge_index[1]
    shift = torch.einsum("ei,eij->ej", offsets.to(cell.dtype), cell[sender_batch[send]])
    return receiver_pos[recv] - (sender_pos[send] + shift)


@dataclass
class AtomFeatures:
    """Per-layer atom features from ``Backbone.encode`` (one tensor per interaction layer)."""

    layers: List[Tensor]
