"""Write a tiny untrained cdp checkpoint (seeded) for building and checking the C++ example quickly.

usage: python examples/cpp/make_tiny_checkpoint.py OUT.ckpt [chargee3net|invdeepdft|equideepdft]
"""

from __future__ import annotations

import sys

import torch

from cdp.core.checkpoint import save_checkpoint
from cdp.core.model import DensityModel
from cdp.export.examples import TINY_CONFIGS as CONFIGS


def main(argv) -> int:
    out = argv[1]
    name = argv[2] if len(argv) > 2 else "chargee3net"
    torch.manual_seed(0)
    model = DensityModel.from_config(CONFIGS[name])
    with torch.no_grad():  # untrained e3nn outputs are tiny; scale the readout so densities are O(1)
        for p in model.readout.parameters():
            p.mul_(10.0)
    save_checkpoint(out, model, metadata={"note": f"tiny untrained {name} for the C++ example"})
    print(f"wrote {out} ({name}, {model.num_parameters()} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
