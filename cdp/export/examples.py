"""Synthetic example tensors for tracing/exporting, and the example-input files for the C++ program.

Tracing and torch.export need example inputs; sizes are all different from each other (and ≥ 2) so that
no dimension is unified with another or specialised.  ``write_example_inputs`` writes one structure,
its probes and PyTorch's densities as ``.npy`` files plus ``example.json`` (format in examples/cpp/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ase import Atoms
import numpy as np
import torch
from torch import Tensor

from cdp.core.atomic import atomic_write_text

EXAMPLE_SIZES = {"N": 5, "E": 12, "M": 7, "Ep": 20}

_GRAPH = {"name": "periodic"}
TINY_CONFIGS = {  # 2 layers, small L / node size: quick to export (tests, the C++ example, CI)
    "chargee3net": {"featurizer": {"name": "onehot"}, "graph": _GRAPH, "readout": {"name": "linear"},
                    "backbone": {"name": "chargee3net", "num_interactions": 2, "mul": 8, "lmax": 1, "num_basis": 4, "radial_neurons": 8, "cutoff": 3.0}},
    "invdeepdft": {"featurizer": {"name": "embedding", "size": 8}, "graph": _GRAPH, "readout": {"name": "mlp", "activation": "ssp"},
                   "backbone": {"name": "invdeepdft", "num_interactions": 2, "node_size": 8, "cutoff": 3.0, "gaussian_expansion_step": 0.5}},
    "equideepdft": {"featurizer": {"name": "embedding", "size": 8}, "graph": _GRAPH, "readout": {"name": "mlp", "activation": "silu"},
                    "backbone": {"name": "equideepdft", "num_interactions": 2, "node_size": 8, "cutoff": 3.0, "distance_embedding_size": 6}},
}


def synthetic_graph(num_nodes: int, num_edges: int, cutoff: float, dtype: torch.dtype, seed: int, receivers: Optional[int] = None):
    """(edge_index [2, E], edge_vec [E, 3]) with random endpoints and lengths in (0.3, 0.9·cutoff)."""
    g = torch.Generator().manual_seed(seed)
    recv = num_nodes if receivers is None else receivers
    ei = torch.stack([torch.randint(0, num_nodes, (num_edges,), generator=g), torch.randint(0, recv, (num_edges,), generator=g)])
    direction = torch.randn(num_edges, 3, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-9)
    length = 0.3 + torch.rand(num_edges, 1, generator=g, dtype=torch.float64) * (0.9 * cutoff - 0.3)
    return ei, (direction * length).to(dtype)


def encoder_example(elements: Sequence[int], cutoff: float, dtype: torch.dtype, n: int, e: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 100)
    z = torch.tensor(list(elements), dtype=torch.long)
    numbers = z[torch.randint(0, len(z), (n,), generator=g)]
    ei, vec = synthetic_graph(n, e, cutoff, dtype, seed)
    return numbers, ei, vec


def decoder_example(layers: Sequence[Tensor], cutoff: float, m: int, ep: int, seed: int = 1) -> Tuple[Tensor, ...]:
    n = int(layers[0].shape[0])
    ei, vec = synthetic_graph(n, ep, cutoff, layers[0].dtype, seed, receivers=m)
    return tuple(layers) + (ei, vec, torch.zeros(m, dtype=layers[0].dtype))


def default_structure(elements: Sequence[int]):
    """A small triclinic slab (periodic in x, y; open in z) of the model's elements, for the C++ example."""
    prefer = [z for z in (1, 6, 8, 14) if z in elements] or list(elements)[:3]
    rng = np.random.default_rng(7)
    cell = np.array([[3.9, 0.0, 0.0], [0.7, 3.6, 0.0], [0.0, 0.0, 9.0]])
    n = 6
    frac = rng.uniform(0.0, 1.0, size=(n, 3))
    frac[:, 2] = rng.uniform(0.3, 0.6, size=n)
    numbers = [prefer[i % len(prefer)] for i in range(n)]
    return Atoms(numbers=numbers, scaled_positions=frac, cell=cell, pbc=[True, True, False])


def example_probes(atoms, num: int = 53, far: int = 11) -> np.ndarray:
    """Probes inside and around the cell, then ``far`` probes beyond the cutoff (a batch with no edges)."""
    rng = np.random.default_rng(11)
    frac = rng.uniform(-0.2, 1.2, size=(num, 3))
    near = frac @ np.asarray(atoms.cell.array)
    top = float(np.max(atoms.positions[:, 2])) + 50.0
    away = np.column_stack([rng.uniform(0, 3, far), rng.uniform(0, 3, far), top + rng.uniform(0, 5, far)])
    return np.concatenate([near, away])


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
    tmp.replace(path)


def write_example_inputs(out_dir, atoms, probes: np.ndarray, density: np.ndarray, cutoff: float, probe_batch: int = 8) -> List[str]:
    """numbers/positions/cell/pbc/probes/density ``.npy`` (int64 / float64, C order) + ``example.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        "numbers": np.asarray(atoms.numbers, dtype=np.int64),
        "positions": np.asarray(atoms.positions, dtype=np.float64),
        "cell": np.asarray(atoms.cell.array, dtype=np.float64),
        "pbc": np.asarray(atoms.pbc, dtype=np.int64),
        "probes": np.asarray(probes, dtype=np.float64),
        "density": np.asarray(density, dtype=np.float64),
    }
    for name, arr in arrays.items():
        _save_npy(out / f"{name}.npy", arr)
    info = {
        "format": "cdp-example-inputs",
        "format_version": 1,
        "cutoff": float(cutoff),
        "num_atoms": int(len(atoms)),
        "num_probes": int(len(probes)),
        "probe_batch": int(probe_batch),
        "files": {name: {"file": f"{name}.npy", "dtype": str(arr.dtype), "shape": list(arr.shape)} for name, arr in arrays.items()},
        "density_source": "PyTorch eager (cdp.predict.Predictor) on the exported checkpoint",
    }
    atomic_write_text(out / "example.json", json.dumps(info, indent=2) + "\n")
    return sorted(f"{n}.npy" for n in arrays) + ["example.json"]
