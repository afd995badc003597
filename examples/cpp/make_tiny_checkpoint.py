"""Write a tiny untrained cdp checkpoint (seeded) for building and checking the C++ example quickly.

usage: python examples/cpp/make_tiny_checkpoint.py OUT.ckpt [chargee3net|invdeepdft|equideepdft] [--no-prior]

By default the model carries an atomic prior with seeded coefficients for H, C, N, O, Si (the exported
decoder then adds it: the C++ program checks the total density, prior included).
"""

from __future__ import annotations

import sys

import torch

from cdp.core.checkpoint import save_checkpoint
from cdp.core.model import DensityModel
from cdp.export.examples import TINY_CONFIGS as CONFIGS


def main(argv) -> int:
    args = [a for a in argv[1:] if a != "--no-prior"]
    out = args[0]
    name = args[1] if len(args) > 1 else "chargee3net"
    prior = "--no-prior" not in argv
    torch.manual_seed(0)
    config = dict(CONFIGS[name], prior={"kind": "atomic", "n_basis": 4}) if prior else CONFIGS[name]
    model = DensityModel.from_config(config)
    with torch.no_grad():  # untrained e3nn outputs are tiny; scale the readout so densities are O(1)
        for p in model.readout.parameters():
            p.mul_(10.0)
        if prior:
            g = torch.Generator().manual_seed(1)
            for z in (1, 6, 7, 8, 14):
                model.prior.coefficients[z] = torch.rand(model.prior.n_basis, generator=g, dtype=torch.float64)
                model.prior.fitted[z] = True
    save_checkpoint(out, model, metadata={"note": f"tiny untrained {name} for the C++ example"})
    print(f"wrote {out} ({name}, {model.num_parameters()} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
