"""ChargE3Net's channel budget rule (Koker et al.; reference code ``get_irreps``), shared by the backbone and
the importer of published checkpoints, which infers the budget from weight shapes."""

from __future__ import annotations

from e3nn import o3


def get_irreps(total_mul: int, lmax: int) -> o3.Irreps:
    """Target hidden irreps: for l = 0..lmax, odd then even, mult = round(total/(lmax+1)/(2l+1)).

    Spreading one channel budget evenly over degrees keeps every l at roughly the same feature size.
    """
    irreps = []
    for l in range(lmax + 1):
        mul = round(total_mul / (lmax + 1) / (2 * l + 1))
        if mul <= 0:
            continue
        for p in (-1, 1):
            irreps.append((mul, (l, p)))
    return o3.Irreps(irreps)
