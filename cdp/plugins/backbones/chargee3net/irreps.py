"""Irreps bookkeeping of ChargE3Net: the channel budget rule and the per-layer gate layout."""

from __future__ import annotations

from typing import List

from e3nn import o3

from cdp.nn.irreps import get_irreps  # noqa: F401  (the budget rule, shared with the importer)


def tp_path_exists(irreps_in1, irreps_in2, ir_out) -> bool:
    """True when some irrep of ``irreps_in1 ⊗ irreps_in2`` equals ``ir_out``."""
    irreps_in1 = o3.Irreps(irreps_in1).simplify()
    irreps_in2 = o3.Irreps(irreps_in2).simplify()
    ir_out = o3.Irrep(ir_out)
    for _, ir1 in irreps_in1:
        for _, ir2 in irreps_in2:
            if ir_out in ir1 * ir2:
                return True
    return False


def gate_layout(irreps_in, irreps_sh, irreps_hidden):
    """(scalars, gates, gated) of one gated layer: the hidden irreps reachable from ``irreps_in ⊗ sh``.

    Scalars keep their parity; each gated l > 0 multiplicity gets one gate scalar, 0e when reachable
    (it always is when the input holds a 0e) else 0o.
    """
    scalars = o3.Irreps(
        [(mul, ir) for mul, ir in irreps_hidden if ir.l == 0 and tp_path_exists(irreps_in, irreps_sh, ir)]
    )
    gated = o3.Irreps(
        [(mul, ir) for mul, ir in irreps_hidden if ir.l > 0 and tp_path_exists(irreps_in, irreps_sh, ir)]
    )
    gate_ir = "0e" if tp_path_exists(irreps_in, irreps_sh, "0e") else "0o"
    gates = o3.Irreps([(mul, gate_ir) for mul, _ in gated])
    return scalars, gates, gated


def uvu_instructions(irreps_sender, irreps_sh, irreps_out):
    """Channel-wise ("uvu") paths sender ⊗ sh → ir kept when ir is in ``irreps_out`` or is 0e.

    Returns (irreps_mid, instructions): one mid block per path, sorted, instructions in path order
    (the order defines the layout of the per-edge weights).
    """
    irreps_sender = o3.Irreps(irreps_sender)
    irreps_sh = o3.Irreps(irreps_sh)
    irreps_out = o3.Irreps(irreps_out)
    mid: List = []
    instructions = []
    for i, (mul, ir_in) in enumerate(irreps_sender):
        for j, (_, ir_edge) in enumerate(irreps_sh):
            for ir in ir_in * ir_edge:
                if ir in irreps_out or ir == o3.Irrep("0e"):
                    instructions.append((i, j, len(mid)))
                    mid.append((mul, ir))
    irreps_mid, perm, _ = o3.Irreps(mid).sort()
    instructions = [(i, j, perm[k], "uvu", True) for i, j, k in instructions]
    return irreps_mid, instructions
