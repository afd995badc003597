"""Writes the sparsity-pattern tile list of uvu_conv.c (between its ``BEGIN/END PATTERNS`` lines).

For every (l_i, l_j, l_k) with l ≤ 4, the (m_k, m_i) entries of A = C·Y that can be non-zero in e3nn's real
basis (those with some m_j where the Wigner 3j symbol is non-zero), as bits m_k·d_i + m_i; patterns with
every entry set are left to the dense tiles.  Run ``python -m cdp.plugins.backbones.chargee3net.kernels.
gen_patterns`` after changing it; tests check the file against a fresh run.
"""

from __future__ import annotations

import re
from pathlib import Path

SOURCE = Path(__file__).with_name("uvu_conv.c")
BEGIN, END = "/* BEGIN PATTERNS (gen_patterns.py) */", "/* END PATTERNS */"


def patterns(lmax: int = 4) -> list:
    """(d_i, d_k, bits) of every pattern that is not full, in a fixed order."""
    import torch  # noqa: PLC0415  (a build-time script)
    from e3nn import o3  # noqa: PLC0415

    found = {}
    for li in range(lmax + 1):
        for lj in range(lmax + 1):
            for lk in range(abs(li - lj), min(lmax, li + lj) + 1):
                nz = (o3.wigner_3j(li, lj, lk, dtype=torch.float64).abs() > 1e-12).any(dim=1)  # [d_i, d_k]
                di, dk = 2 * li + 1, 2 * lk + 1
                bits = sum(1 << (mk * di + mi) for mk in range(dk) for mi in range(di) if nz[mi, mk])
                if bits != (1 << (di * dk)) - 1:
                    found.setdefault((di, dk, bits), None)
    return sorted(found)


def block(lmax: int = 4) -> str:
    lines = [BEGIN, "#define CDP_PATTERN_LIST(X) \\"]
    for n, (di, dk, bits) in enumerate(patterns(lmax)):
        lo, hi = bits & ((1 << 64) - 1), bits >> 64
        lines.append(f"    X({n}, {di}, {dk}, 0x{lo:016x}ull, 0x{hi:05x}ull) \\")
    lines.append("    /* end of list */")
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    text = SOURCE.read_text()
    new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda m: block(), text, flags=re.S)
    SOURCE.write_text(new)


if __name__ == "__main__":
    main()
