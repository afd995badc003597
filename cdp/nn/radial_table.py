"""Tabulated radial networks: a piecewise-cubic table of a function of the edge length, for inference.

A radial network maps one scalar, the edge length r, to a row of weights w(r) ∈ R^W (in ChargE3Net the
tensor-product weights of a convolution: ``fc(basis(r))``).  At inference the same function can be read
from a table over [0, r_max] instead of being recomputed by the MLP for every edge — the idea behind
DeePMD-kit's "model compression" of its embedding nets.  Each of the ``n`` uniform intervals holds the
monomial coefficients of the cubic Hermite interpolant built from w and dw/dr at its two knots:

    i = clamp(floor(r · inv_h), 0, n − 1),   t = r · inv_h − i,   inv_h = n / r_max
    w(r) = c₀ + t·(c₁ + t·(c₂ + t·c₃)),     c_k = coef[i, k]              (coef: [n, 4, W])

:class:`KnotTable` stores the same interpolant as its knot values and scaled slopes instead ([n + 1, 2, W]:
w(r_i) and h·dw/dr(r_i)), half the memory, evaluated with the Hermite basis

    w(r) = (1 + 2t)(1 − t)² v_i + t(1 − t)² s_i + t²(3 − 2t) v_{i+1} + t²(t − 1) s_{i+1};

the native kernels read that layout (four consecutive rows per edge) and evaluate a row per edge without
writing [E, W].
The interpolation error is h⁴/384 · max|w''''| (h = r_max / n); :meth:`RadialTable.fit` measures it in
float64 against the function itself and doubles ``n`` until it is below the requested tolerance.
Tables are built from trained weights (at model load) and never trained.  A table is built a block of
intervals at a time (:data:`BUILD_BYTES`): knot values and slopes, coefficients and the error at the
block's probe points in float64, then the block is stored in the table's dtype, so no float64 copy of the
whole table ever exists; the table gets its own pages (:func:`cdp.core.malloc.returning_freed_memory`).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from cdp.core.malloc import returning_freed_memory

RadialFunction = Callable[[Tensor], Tensor]
MIN_INTERVALS = 64
MAX_INTERVALS = 8192
BUILD_BYTES = 2 << 20  # one float64 [points, W] operand of a build or measure block (~10 such at once)
HERMITE_COLUMNS = 256  # columns assembled at once (bounded temporaries for wide tables)
PROBE_POINTS = (0.125, 0.375, 0.5, 0.625, 0.875)  # where in each interval the error is measured


def _values_and_slopes(fn: RadialFunction, r: Tensor) -> tuple[Tensor, Tensor]:
    """(w(r), dw/dr(r)) [K, W] in float64, by forward-mode differentiation (one pass for all W columns)."""
    tangent = torch.ones_like(r)
    with torch.no_grad():
        try:
            value, slope = torch.func.jvp(fn, (r,), (tangent,))
        except (RuntimeError, NotImplementedError):  # an operation without a forward-mode rule
            eps = 1e-6 * max(1.0, float(r.abs().max()))
            value = fn(r)
            slope = (fn(r + eps) - fn(r - eps)) / (2 * eps)
    return value.double(), slope.double()


def hermite_coefficients(value: Tensor, slope: Tensor, h: float, out: Optional[Tensor] = None) -> Tensor:
    """Per-interval monomial coefficients [n, 4, W] of the cubic Hermite interpolant.

    value, slope: [n + 1, W], w and dw/dr at the knots r_i = i·h.  Written into ``out`` ([n, 4, W], any
    float dtype) when given, a block of columns at a time, so the temporaries stay small however wide W is.
    """
    n, width = value.shape[0] - 1, value.shape[1]
    if out is None:
        out = value.new_empty((n, 4, width))
    step = max(1, HERMITE_COLUMNS)
    for a in range(0, width, step):
        b = min(width, a + step)
        f0, f1 = value[:-1, a:b], value[1:, a:b]
        d0, d1 = slope[:-1, a:b] * h, slope[1:, a:b] * h
        out[:, 0, a:b] = f0
        out[:, 1, a:b] = d0
        out[:, 2, a:b] = -3.0 * f0 - 2.0 * d0 + 3.0 * f1 - d1
        out[:, 3, a:b] = 2.0 * f0 + d0 - 2.0 * f1 + d1
    return out


def evaluate(coef: Tensor, inv_h: float, r: Tensor) -> Tensor:
    """w(r) [E, W] from coefficients ``coef`` [n, 4, W] for lengths ``r`` [E] (Å); see the module docstring.

    Written with plain tensor operations (floor, gather, multiply-add), so graph capture (TorchScript,
    torch.export, ONNX) records it as a handful of nodes.
    """
    n = coef.shape[0]
    x = r.to(coef.dtype) * inv_h
    i = torch.clamp(torch.floor(x), 0, n - 1)
    t = (x - i).unsqueeze(-1)
    c = coef.index_select(0, i.long())
    return c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))


def _width(fn: RadialFunction) -> int:
    """W of ``fn`` (one evaluation at r = 0)."""
    with torch.no_grad():
        return int(fn(torch.zeros(1, dtype=torch.float64)).shape[-1])


def _blocks(n: int, r_max: float, width: int) -> Iterator[Tuple[int, int, Tensor, Tensor]]:
    """Blocks (k0, k1, r, i) of the intervals [k0, k1) of an ``n``-interval table over [0, r_max], with the
    measure points r [P] (float64) that :func:`evaluate` places in the block and their intervals i [P]
    (global indices, float64).  Points: :data:`PROBE_POINTS` of every interval, and both ends."""
    h, inv_h = r_max / n, n / r_max
    frac = torch.tensor(PROBE_POINTS, dtype=torch.float64)
    r = ((torch.arange(n, dtype=torch.float64).unsqueeze(1) + frac) * h).reshape(-1)
    r = torch.cat([r, torch.tensor([0.0, r_max], dtype=torch.float64)])
    i = torch.clamp(torch.floor(r * inv_h), 0, n - 1)
    step = max(1, BUILD_BYTES // (8 * len(PROBE_POINTS) * max(1, width)))
    for k0 in range(0, n, step):
        k1 = min(n, k0 + step)
        inside = (i >= k0) & (i < k1)
        yield k0, k1, r[inside], i[inside]


def _block_error(fn: RadialFunction, block: Tensor, k0: int, inv_h: float, r: Tensor, i: Tensor) -> float:
    """max |interpolant − fn| (float64) at the points r [P] of intervals i [P] (global indices) for a block
    [B, 4, W] of float64 coefficients starting at interval ``k0``: :func:`evaluate`'s arithmetic (the same
    t, the same Horner's rule) with two [P, W] temporaries besides ``fn(r)``; inf where not finite."""
    if r.numel() == 0:
        return 0.0
    with torch.no_grad():
        exact = fn(r).double()
        t = (r * inv_h - i).unsqueeze(-1)
        local = (i - k0).long()
        approx = block[:, 3].index_select(0, local)
        tmp = torch.empty_like(approx)
        for k in (2, 1, 0):
            approx.mul_(t).add_(torch.index_select(block[:, k], 0, local, out=tmp))
        err = approx.sub_(exact).abs_().max()
        return float(err) if bool(torch.isfinite(err)) else math.inf


def evaluate_knots(knots: Tensor, inv_h: float, r: Tensor) -> Tensor:
    """w(r) [E, W] from knots [n + 1, 2, W] (values, h·slopes) for lengths ``r`` [E] (Å): the Hermite basis
    (module docstring), the interval and t as :func:`evaluate`'s."""
    n = knots.shape[0] - 1
    x = r.to(knots.dtype) * inv_h
    i = torch.clamp(torch.floor(x), 0, n - 1)
    t = (x - i).unsqueeze(-1)
    i = i.long()
    u = 1.0 - t
    out = knots[:, 0].index_select(0, i) * ((1.0 + 2.0 * t) * u * u)
    out.addcmul_(knots[:, 1].index_select(0, i), t * u * u)
    out.addcmul_(knots[:, 0].index_select(0, i + 1), t * t * (3.0 - 2.0 * t))
    out.addcmul_(knots[:, 1].index_select(0, i + 1), t * t * (t - 1.0))
    return out


class KnotTable(nn.Module):
    """The interpolant of a :class:`RadialTable` stored at its knots: ``knots`` [n + 1, 2, W] = (w(r_i),
    h·dw/dr(r_i)) for r_i = i·h (module docstring): half the memory of the coefficient form, the layout the
    native kernels read.  Build with ``RadialTable.fit(..., knots=True)``.  forward(r [E]) → [E, W]."""

    def __init__(self, knots: Tensor, r_max: float, error: float = float("nan")):
        super().__init__()
        if knots.dim() != 3 or knots.shape[1] != 2 or knots.shape[0] < 2:
            raise ValueError(f"knots must be [n + 1, 2, W] with n ≥ 1, got {tuple(knots.shape)}")
        if not r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        self.register_buffer("knots", knots.contiguous())
        self.r_max = float(r_max)
        self.inv_h = (knots.shape[0] - 1) / self.r_max
        self.error = float(error)

    @property
    def num_intervals(self) -> int:
        return int(self.knots.shape[0] - 1)

    @property
    def width(self) -> int:
        return int(self.knots.shape[2])

    def max_abs_value(self) -> float:
        """max |w| over the knots (as stored)."""
        return float(self.knots[:, 0].abs().max())

    def forward(self, r: Tensor) -> Tensor:
        return evaluate_knots(self.knots, self.inv_h, r)

    def extra_repr(self) -> str:
        return f"intervals={self.num_intervals}, width={self.width}, r_max={self.r_max}, error={self.error:.2e}, knots"


class RadialTable(nn.Module):
    """w(r) for r in [0, r_max] as piecewise cubics on ``n`` uniform intervals (module docstring).

    Args:
        coef: [n, 4, W] monomial coefficients per interval (a buffer: moves with ``.to()``, is not a parameter).
        r_max: upper end of the table in Å (the cutoff); lengths beyond it extrapolate the last cubic.
        error: the measured max |table − function| (float64) over the fit's probe points, for reports.
    Shapes: forward takes r [E] and returns [E, W] in ``coef``'s dtype.
    """

    def __init__(self, coef: Tensor, r_max: float, error: float = float("nan")):
        super().__init__()
        if coef.dim() != 3 or coef.shape[1] != 4 or coef.shape[0] < 1:
            raise ValueError(f"coef must be [n, 4, W], got {tuple(coef.shape)}")
        if not r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        self.register_buffer("coef", coef.contiguous())
        self.r_max = float(r_max)
        self.inv_h = coef.shape[0] / self.r_max
        self.error = float(error)

    @property
    def num_intervals(self) -> int:
        return int(self.coef.shape[0])

    @property
    def width(self) -> int:
        return int(self.coef.shape[2])

    def max_abs_value(self) -> float:
        """max |w| over the knots r_0 … r_{n-1} (as stored)."""
        return float(self.coef[:, 0].abs().max())

    def forward(self, r: Tensor) -> Tensor:
        return evaluate(self.coef, self.inv_h, r)

    @classmethod
    def build(cls, fn: RadialFunction, r_max: float, num_intervals: int,
              dtype: Optional[torch.dtype] = None) -> "RadialTable":
        """Table of ``fn`` (r [K] float64 → [K, W]) on ``num_intervals`` intervals, with its measured error.

        ``fn`` is called in float64 (the caller passes a float64 copy of its module).  ``dtype``: the table's
        storage type (default float32).  Built a block of intervals at a time (module docstring): the
        coefficients are those of the float64 interpolant rounded once to ``dtype``, and ``error`` is the
        float64 interpolant's, as if the whole table had been built in float64 first.  Raises ValueError
        where the function or its slope is not finite.
        """
        return cls._build(fn, r_max, num_intervals, dtype or torch.float32)[0]

    @classmethod
    def _build(cls, fn: RadialFunction, r_max: float, num_intervals: int,
               dtype: torch.dtype, knots: bool = False) -> Tuple[nn.Module, float]:
        """(table, max|w| over the knots r_0 … r_{n-1} in float64): :meth:`build` block by block; ``knots``:
        a :class:`KnotTable` of the same interpolant (values and h·slopes rounded once to ``dtype``)."""
        n = int(num_intervals)
        if n < 1:
            raise ValueError(f"num_intervals must be ≥ 1, got {num_intervals}")
        h = float(r_max) / n
        coef, err, scale = None, 0.0, 0.0
        for k0, k1, r, i in _blocks(n, float(r_max), _width(fn)):
            at = torch.arange(k0, k1 + 1, dtype=torch.float64) * h
            value, slope = _values_and_slopes(fn, at)
            block = hermite_coefficients(value, slope, h)  # [k1 - k0, 4, W] float64
            if coef is None:
                with returning_freed_memory():  # long-lived: its own pages, not pinning the heap's top
                    shape = (n + 1, 2, block.shape[2]) if knots else (n, 4, block.shape[2])
                    coef = torch.empty(shape, dtype=dtype)
            if knots:
                coef[k0 : k1 + 1, 0] = value
                coef[k0 : k1 + 1, 1] = slope * h
            else:
                coef[k0:k1] = block
            del value, slope
            scale = max(scale, float(block[:, 0].abs().max()))
            err = max(err, _block_error(fn, block, k0, n / float(r_max), r, i))
            if not (math.isfinite(scale) and math.isfinite(err)):
                raise ValueError(f"radial table: the function or its slope is not finite on "
                                 f"[{k0 * h:.3g}, {k1 * h:.3g}] Å")
        return (KnotTable if knots else cls)(coef, r_max, err), scale

    @classmethod
    def fit(cls, fn: RadialFunction, r_max: float, rtol: float = 1e-7, dtype: Optional[torch.dtype] = None,
            min_intervals: int = MIN_INTERVALS, max_intervals: int = MAX_INTERVALS, knots: bool = False):
        """The coarsest power-of-two table whose measured error is ≤ ``rtol · max|w|`` over [0, r_max].

        The error is measured in float64 at five points inside every interval (where a cubic Hermite
        interpolant's error peaks) for the float64 interpolant, so it bounds what float32 storage adds on top
        (rounding, ~6e-8 relative); max|w| is over the float64 knot values.
        Raises ValueError when ``max_intervals`` is not enough (a non-smooth function) or the function is
        not finite on [0, r_max].  ``knots``: return the :class:`KnotTable` of the same interpolant.
        """
        with returning_freed_memory():  # one-off float64 blocks: returned to the system, not kept resident
            return cls._fit(fn, r_max, rtol, dtype, min_intervals, max_intervals, knots)

    @classmethod
    def _fit(cls, fn, r_max, rtol, dtype, min_intervals, max_intervals, knots):
        n = int(min_intervals)
        while True:
            table, scale = cls._build(fn, r_max, n, dtype or torch.float32, knots)
            scale = scale or 1.0
            if table.error <= rtol * scale:
                return table
            if 2 * n > max_intervals:
                raise ValueError(f"radial table: error {table.error / scale:.2e} of max|w| with {n} intervals "
                                 f"exceeds {rtol:.1e}; the function is not smooth enough to tabulate")
            # the error falls as h⁴: jump to the power of two that this predicts (then verify it)
            ratio = table.error / (rtol * scale)
            n = min(max_intervals, max(2 * n, n * 2 ** math.ceil(math.log2(ratio) / 4)))

    def measure(self, fn: RadialFunction) -> float:
        """max |table − fn| in float64 at :data:`PROBE_POINTS` of every interval (and both ends), the stored
        coefficients read in float64 a block of intervals at a time."""
        err = 0.0
        for k0, k1, r, i in _blocks(self.num_intervals, self.r_max, self.width):
            err = max(err, _block_error(fn, self.coef[k0:k1].double(), k0, self.inv_h, r, i))
        return err

    def extra_repr(self) -> str:
        return f"intervals={self.num_intervals}, width={self.width}, r_max={self.r_max}, error={self.error:.2e}"
