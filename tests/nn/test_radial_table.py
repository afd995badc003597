"""Tabulated radial functions: exactness, measured error bound, convergence order, refusal of kinks."""

from __future__ import annotations

import math

import pytest
import torch

from cdp.nn import radial_table
from cdp.nn.radial_table import RadialTable, evaluate, hermite_coefficients

R_MAX = 4.0


def gaussians(r: torch.Tensor) -> torch.Tensor:
    """[K] → [K, 5]: Gaussians of width 0.3 Å at five centres, times a cosine (a radial MLP stand-in)."""
    centres = torch.linspace(0.5, 3.5, 5, dtype=r.dtype)
    return torch.exp(-((r[:, None] - centres) / 0.3) ** 2) * torch.cos(1.7 * r[:, None] + centres)


def test_cubics_are_reproduced_exactly():
    coef = torch.tensor([0.3, -1.2, 0.7, 0.05], dtype=torch.float64)

    def cubic(r):
        return torch.stack([coef[0] + coef[1] * r + coef[2] * r**2 + coef[3] * r**3, 2.0 - r], dim=1)

    table = RadialTable.build(cubic, R_MAX, 7, dtype=torch.float64)
    r = torch.rand(1000, dtype=torch.float64) * R_MAX
    assert torch.allclose(table(r), cubic(r), rtol=0, atol=1e-12)


def test_fit_meets_tolerance_at_random_lengths():
    rtol = 1e-7
    table = RadialTable.fit(gaussians, R_MAX, rtol=rtol, dtype=torch.float64)
    r = torch.rand(20_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * R_MAX
    exact = gaussians(r)
    err = float((table(r) - exact).abs().max())
    assert err <= rtol * float(exact.abs().max()) * 1.05
    assert table.error <= rtol * float(table.coef[:, 0].abs().max())
    # the coarser table one level down misses the tolerance: fit chose the coarsest that meets it
    coarser = RadialTable.build(gaussians, R_MAX, table.num_intervals // 2, dtype=torch.float64)
    assert coarser.error > rtol * float(coarser.coef[:, 0].abs().max())


def test_error_falls_as_h_to_the_fourth():
    e1 = RadialTable.build(gaussians, R_MAX, 64, dtype=torch.float64).error
    e2 = RadialTable.build(gaussians, R_MAX, 128, dtype=torch.float64).error
    assert 12.0 < e1 / e2 < 20.0  # 16 for a smooth function


def test_values_and_slopes_continuous_at_knots():
    table = RadialTable.build(gaussians, R_MAX, 32, dtype=torch.float64)
    c = table.coef
    # end of interval i (t = 1) equals the start of interval i + 1, in value and in slope
    end_value = c[:-1].sum(dim=1)
    end_slope = c[:-1, 1] + 2 * c[:-1, 2] + 3 * c[:-1, 3]
    assert torch.allclose(end_value, c[1:, 0], atol=1e-12)
    assert torch.allclose(end_slope, c[1:, 1], atol=1e-12)
    knots = torch.arange(33, dtype=torch.float64) * (R_MAX / 32)
    assert torch.allclose(table(knots), gaussians(knots), atol=1e-12)


def test_float32_table_within_rounding_and_both_ends():
    table = RadialTable.fit(gaussians, R_MAX, rtol=1e-7)
    assert table.coef.dtype == torch.float32
    r = torch.cat([torch.tensor([0.0, 1e-9, R_MAX - 1e-6, R_MAX]), torch.rand(5000) * R_MAX]).double()
    exact = gaussians(r)
    assert float((table(r.float()).double() - exact).abs().max()) < 5e-7 * float(exact.abs().max())


def test_kinked_function_refused():
    def kink(r):
        return (r - 1.3).abs().unsqueeze(1)

    with pytest.raises(ValueError, match="not smooth enough"):
        RadialTable.fit(kink, R_MAX, rtol=1e-7, max_intervals=1024)


def test_hermite_coefficients_of_a_line():
    value = torch.tensor([[0.0], [2.0], [4.0]], dtype=torch.float64)
    slope = torch.full((3, 1), 4.0, dtype=torch.float64)  # w = 4 r on h = 0.5 intervals
    coef = hermite_coefficients(value, slope, 0.5)
    assert torch.equal(coef[:, :, 0], torch.tensor([[0.0, 2.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(evaluate(coef, 2.0, torch.tensor([0.25, 0.75], dtype=torch.float64)),
                          torch.tensor([[1.0], [3.0]], dtype=torch.float64))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\[n, 4, W\]"):
        RadialTable(torch.zeros(3, 3, 2), R_MAX)
    with pytest.raises(ValueError, match="positive"):
        RadialTable(torch.zeros(3, 4, 2), -1.0)
    assert math.isnan(RadialTable(torch.zeros(3, 4, 2), R_MAX).error)


def _hermite_reference(n: int) -> torch.Tensor:
    """[n, 4, 5] float64 coefficients of :func:`gaussians` from its analytic values and slopes (the
    module docstring's formulas, written out independently of the builder)."""
    h = R_MAX / n
    r = torch.arange(n + 1, dtype=torch.float64)[:, None] * h
    centres = torch.linspace(0.5, 3.5, 5, dtype=torch.float64)
    g, c = torch.exp(-((r - centres) / 0.3) ** 2), torch.cos(1.7 * r + centres)
    value = g * c
    slope = g * (-2.0 * (r - centres) / 0.3**2 * c - 1.7 * torch.sin(1.7 * r + centres))
    f0, f1, d0, d1 = value[:-1], value[1:], slope[:-1] * h, slope[1:] * h
    return torch.stack([f0, d0, 3 * (f1 - f0) - 2 * d0 - d1, 2 * (f0 - f1) + d0 + d1], dim=1)


def test_blockwise_build_is_the_whole_float64_table_rounded_once(monkeypatch):
    """A table is built a few intervals at a time (bounded float64 temporaries): the coefficients are,
    bitwise, those of the whole float64 interpolant rounded once to the storage dtype, with the same
    measured error, and fit chooses the same number of intervals."""
    n = 48
    whole = RadialTable.build(gaussians, R_MAX, n, dtype=torch.float64)  # W = 5: one block
    assert torch.allclose(whole.coef, _hermite_reference(n), rtol=0, atol=1e-12)
    seen = []

    def recorded(r):
        seen.append(r.shape[0])
        return gaussians(r)

    # 3 intervals per block: 16 blocks, some points (the ends) in the first and the last block only
    monkeypatch.setattr(radial_table, "BUILD_BYTES", 8 * len(radial_table.PROBE_POINTS) * 5 * 3)
    blocked64 = RadialTable.build(recorded, R_MAX, n, dtype=torch.float64)
    assert max(seen) == 3 * len(radial_table.PROBE_POINTS) + 1  # never more than one block's points
    blocked32 = RadialTable.build(gaussians, R_MAX, n)
    assert blocked32.coef.dtype == torch.float32
    assert torch.equal(blocked64.coef, whole.coef)
    assert torch.equal(blocked32.coef, whole.coef.float())
    assert blocked64.error == blocked32.error == whole.error > 0
    # the stored float32 table read back in float64: its error differs by float32 rounding of max|w| at most
    scale = float(whole.coef[:, 0].abs().max())
    assert abs(blocked32.measure(gaussians) - whole.error) <= 2**-23 * scale
    fitted = RadialTable.fit(gaussians, R_MAX, rtol=1e-7)
    monkeypatch.setattr(radial_table, "BUILD_BYTES", 1 << 30)
    reference = RadialTable.fit(gaussians, R_MAX, rtol=1e-7)
    assert fitted.num_intervals == reference.num_intervals
    assert torch.equal(fitted.coef, reference.coef) and fitted.error == reference.error


def test_a_function_not_finite_somewhere_is_refused():
    def gap(r):  # NaN strictly between two knots of every power-of-two table: only the error points see it
        return torch.where((r > 1.001) & (r < 1.06), math.nan, 1.0).unsqueeze(1) * gaussians(r)

    with pytest.raises(ValueError, match=r"not finite on \[0, 4\] Å"):  # W = 5: the whole table is one block
        RadialTable.fit(gap, R_MAX, rtol=1e-7)
    with pytest.raises(ValueError, match="not finite"):
        RadialTable.build(lambda r: torch.log(r).unsqueeze(1), R_MAX, 64)  # -inf at the knot r = 0
    table = RadialTable.build(gaussians, R_MAX, 64)
    assert table.measure(gap) == math.inf
