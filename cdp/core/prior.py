"""Atomic reference densities: ρ⁰(r) = Σ_a ρ⁰_{Z_a}(|r − R_a|), a per-element radial profile fitted from data.

The density analogue of the per-element reference energies E0 that interatomic potentials fit from data:
each element's profile is a linear combination of ``n_basis`` Gaussians of geometrically spaced widths
times a smooth envelope that vanishes (with its slope) at ``cutoff``,

    ρ⁰_Z(r) = Σ_k c_{Z,k} φ_k(r),   φ_k(r) = exp(−r² / 2σ_k²) · (1 − r²/r_c²)²   (r < r_c, else 0),

so ρ⁰ depends on r² only (smooth at the nucleus, no square root).  The coefficients are fitted by linear
least squares on a subsample of training grid points under the equality constraint ∫ρ⁰_Z d³r = n_Z (the
element's electron count in the data), solved through the KKT system (:func:`fit_coefficients`).  A
model adds ρ⁰ to its network output, so the network learns the residual ρ − ρ⁰.

Units: Å, e/Å³.  Coefficients of elements never fitted are zero (ρ⁰ = 0 for them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from cdp.core.constants import MAX_Z
from cdp.core.types import CdpError

PRIOR_KINDS = ("atomic",)
DEFAULT_N_BASIS = 12
DEFAULT_MIN_WIDTH = 0.1  # Å, narrowest Gaussian σ
DEFAULT_MAX_WIDTH = 1.6  # Å, widest Gaussian σ
PRIOR_KEYS = ("kind", "n_basis", "min_width", "max_width", "cutoff")


def check_prior_config(prior, where: str = "model.prior") -> Optional[dict]:
    """A checked copy of a ``prior`` config mapping (``None`` = no prior); one-line CdpError otherwise."""
    if prior is None:
        return None
    if not isinstance(prior, dict):
        raise CdpError(f"{where}: must be a mapping such as {{kind: atomic, n_basis: 12}} or null")
    unknown = [k for k in prior if k not in PRIOR_KEYS]
    if unknown:
        raise CdpError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(PRIOR_KEYS)})")
    out = dict(prior)
    kind = out.setdefault("kind", "atomic")
    if kind not in PRIOR_KINDS:
        raise CdpError(f"{where}.kind: must be one of {', '.join(PRIOR_KINDS)} (got {kind!r})")
    n = out.setdefault("n_basis", DEFAULT_N_BASIS)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 64:
        raise CdpError(f"{where}.n_basis: must be an integer in 1..64 (got {n!r})")
    for key, default in (("min_width", DEFAULT_MIN_WIDTH), ("max_width", DEFAULT_MAX_WIDTH)):
        v = out.setdefault(key, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise CdpError(f"{where}.{key}: must be a positive number in Å (got {v!r})")
        out[key] = float(v)
    if out["max_width"] < out["min_width"]:
        raise CdpError(f"{where}: max_width {out['max_width']} is below min_width {out['min_width']}")
    c = out.get("cutoff")
    if c is not None and (not isinstance(c, (int, float)) or isinstance(c, bool) or not math.isfinite(c) or c <= 0):
        raise CdpError(f"{where}.cutoff: must be a positive number in Å or null (null: the model's cutoff)")
    return out


class AtomicDensityPrior(nn.Module):
    """Superposition of fitted per-element radial densities.

    Buffers (saved in a model's state_dict): ``coefficients`` [119, n_basis] (row Z = element Z),
    ``widths`` [n_basis] Gaussian σ in Å, ``cutoff`` (scalar, Å), ``electrons`` [119] (the n_Z each
    fitted row integrates to), ``fitted`` [119] bool.
    """

    def __init__(self, n_basis: int = DEFAULT_N_BASIS, cutoff: float = 4.0, min_width: float = DEFAULT_MIN_WIDTH,
                 max_width: float = DEFAULT_MAX_WIDTH):
        super().__init__()
        if cutoff <= 0:
            raise CdpError(f"prior cutoff must be positive (got {cutoff})")
        widths = np.geomspace(min_width, max_width, n_basis) if n_basis > 1 else np.array([min_width])
        self.n_basis = int(n_basis)
        self.register_buffer("coefficients", torch.zeros(MAX_Z + 1, n_basis, dtype=torch.float64))
        self.register_buffer("widths", torch.tensor(widths, dtype=torch.float64))
        self.register_buffer("cutoff", torch.tensor(float(cutoff), dtype=torch.float64))
        self.register_buffer("electrons", torch.zeros(MAX_Z + 1, dtype=torch.float64))
        self.register_buffer("fitted", torch.zeros(MAX_Z + 1, dtype=torch.bool))

    @classmethod
    def from_config(cls, config: dict, model_cutoff: float) -> "AtomicDensityPrior":
        """Build from a checked ``prior`` config; its cutoff defaults to (and may not exceed) ``model_cutoff``."""
        cfg = check_prior_config(config)
        cutoff = float(cfg.get("cutoff") or model_cutoff)
        if cutoff > float(model_cutoff) + 1e-12:
            raise CdpError(f"model.prior.cutoff {cutoff} Å exceeds the model cutoff {model_cutoff} Å (the prior reuses the model's probe edges)")
        return cls(cfg["n_basis"], cutoff, cfg["min_width"], cfg["max_width"])

    # -- the radial basis ------------------------------------------------------------------------
    def basis(self, r2: Tensor) -> Tensor:
        """φ_k at squared distances ``r2`` [E] (Å²) → [E, n_basis]; zero at and beyond the cutoff."""
        rc = self.cutoff.to(r2)
        widths = self.widths.to(r2)
        env = torch.clamp(1.0 - r2 / (rc * rc), min=0.0)
        inv = 0.5 / (widths * widths)
        return torch.exp(-r2.unsqueeze(-1) * inv) * (env * env).unsqueeze(-1)

    def basis_integrals(self) -> np.ndarray:
        """∫φ_k d³r = 4π ∫_0^{r_c} r² φ_k(r) dr [n_basis] (float64, Gauss–Legendre to ≤ 1e-12 relative)."""
        rc = float(self.cutoff)
        widths = self.widths.detach().cpu().numpy()
        x, w = np.polynomial.legendre.leggauss(200)
        out = np.zeros(len(widths))
        # panels refined towards the origin, where the narrow Gaussians live
        edges = np.unique(np.concatenate([[0.0], np.minimum(rc, np.outer(widths, [1.0, 3.0, 6.0]).ravel()), [rc]]))
        for a, b in zip(edges[:-1], edges[1:]):
            r = 0.5 * (b - a) * x + 0.5 * (a + b)
            u = np.clip(1.0 - (r / rc) ** 2, 0.0, None)
            phi = np.exp(-(r[:, None] ** 2) / (2.0 * widths[None, :] ** 2)) * (u * u)[:, None]
            out += 0.5 * (b - a) * (4.0 * np.pi * (w[:, None] * r[:, None] ** 2 * phi)).sum(0)
        return out

    # -- evaluation ------------------------------------------------------------------------------
    def atom_coefficients(self, numbers: Tensor) -> Tensor:
        """Per-atom coefficients [N, n_basis] for atomic numbers [N] (what an exported encoder emits)."""
        return self.coefficients.index_select(0, numbers)

    def density(self, atom_coefficients: Tensor, edge_index: Tensor, edge_vec: Tensor, num_probes: int) -> Tensor:
        """ρ⁰ [M] (dtype of ``edge_vec``) from per-atom coefficients [N, K] and atom→probe edges
        ``edge_index`` [2, E] ``[atom, probe]`` with ``edge_vec`` [E, 3] (Å)."""
        r2 = (edge_vec * edge_vec).sum(-1)
        phi = self.basis(r2)
        c = atom_coefficients.to(edge_vec.dtype).index_select(0, edge_index[0])
        values = (c * phi).sum(-1)
        out = torch.zeros(num_probes, dtype=edge_vec.dtype, device=edge_vec.device)
        return out.index_add(0, edge_index[1], values)

    def forward(self, numbers: Tensor, edge_index: Tensor, edge_vec: Tensor, num_probes: int) -> Tensor:
        """ρ⁰ [M] at the receivers of atom→probe edges; ``numbers`` [N] atomic numbers of the senders."""
        return self.density(self.atom_coefficients(numbers), edge_index, edge_vec, num_probes)

    def radial(self, z: int, r: np.ndarray) -> np.ndarray:
        """ρ⁰_Z at distances ``r`` (Å) → e/Å³ (float64), for reports and plots."""
        r2 = torch.as_tensor(np.asarray(r, dtype=np.float64) ** 2)
        return (self.basis(r2) * self.coefficients[int(z)].to(r2)).sum(-1).numpy()

    def set_fit(self, fit: "PriorFit") -> None:
        """Load the coefficients of a :class:`PriorFit` into the buffers (other elements zero)."""
        coef = torch.zeros_like(self.coefficients)
        electrons = torch.zeros_like(self.electrons)
        fitted = torch.zeros_like(self.fitted)
        for z, row in fit.coefficients.items():
            coef[int(z)] = torch.as_tensor(row, dtype=coef.dtype)
            electrons[int(z)] = float(fit.electrons[z])
            fitted[int(z)] = True
        with torch.no_grad():
            self.coefficients.copy_(coef)
            self.electrons.copy_(electrons)
            self.fitted.copy_(fitted)

    def elements(self) -> List[int]:
        return [int(z) for z in torch.nonzero(self.fitted).flatten().tolist()]


# -- the constrained least-squares fit ----------------------------------------------------------------
@dataclass
class PriorFit:
    """Result of :func:`fit_coefficients`: per-element coefficients [n_basis], electrons n_Z, residuals."""

    coefficients: Dict[int, np.ndarray]
    electrons: Dict[int, float]
    rmse: float  # e/Å³ on the fit points
    relative_l2: float  # ‖ρ − ρ⁰‖ / ‖ρ‖ on the fit points
    points: int
    structures: int
    constraint_error: float  # max_Z |∫ρ⁰_Z − n_Z|
    electrons_source: str = ""
    info: dict = field(default_factory=dict)


class NormalEquations:
    """Accumulates AᵀA, Aᵀy, yᵀy over structures (memory O((E·K)²), independent of the point count).

    Columns are (element, basis) pairs: A[p, (Z, k)] = Σ_{atoms a of element Z} φ_k(|r_p − R_a|).
    """

    def __init__(self, prior: AtomicDensityPrior):
        self.prior = prior
        self.blocks: Dict[int, int] = {}
        self.ata = np.zeros((0, 0))
        self.aty = np.zeros(0)
        self.yty = 0.0
        self.points = 0
        self.structures = 0

    def _grow(self, elements: Iterable[int]) -> None:
        k = self.prior.n_basis
        new = [int(z) for z in sorted(set(int(e) for e in elements)) if int(z) not in self.blocks]
        if not new:
            return
        for z in new:
            self.blocks[z] = len(self.blocks)
        n = len(self.blocks) * k
        ata = np.zeros((n, n))
        aty = np.zeros(n)
        m = self.ata.shape[0]
        ata[:m, :m] = self.ata
        aty[:m] = self.aty
        self.ata, self.aty = ata, aty

    def add(self, numbers: np.ndarray, edge_index: np.ndarray, edge_r2: np.ndarray, targets: np.ndarray) -> None:
        """One structure: atomic numbers [N], atom→probe edges [2, E], squared lengths [E] (Å²), ρ [P] (e/Å³)."""
        numbers = np.asarray(numbers, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.float64).reshape(-1)
        self._grow(numbers)
        k = self.prior.n_basis
        cols = self.ata.shape[0]
        p = targets.shape[0]
        with torch.no_grad():
            phi = self.prior.basis(torch.as_tensor(np.asarray(edge_r2, dtype=np.float64))).numpy()
        send, recv = np.asarray(edge_index[0]), np.asarray(edge_index[1])
        block = np.array([self.blocks[int(z)] for z in numbers], dtype=np.int64)[send]
        a = np.zeros((p, cols))
        col = (block[:, None] * k + np.arange(k)[None, :])
        np.add.at(a, (np.repeat(recv, k), col.ravel()), phi.ravel())
        self.ata += a.T @ a
        self.aty += a.T @ targets
        self.yty += float(targets @ targets)
        self.points += p
        self.structures += 1


def fit_coefficients(eqs: NormalEquations, electrons: Dict[int, float], ridge: float = 1e-8) -> PriorFit:
    """Minimise ‖Ac − y‖² subject to ∫ρ⁰_Z = n_Z for every element, via the KKT system.

    [[AᵀA + λD, Cᵀ], [C, 0]] [c; μ] = [Aᵀy; n], C the per-element rows of basis integrals, λD a tiny
    ridge (``ridge`` × mean diagonal) that keeps nearly collinear Gaussians well posed.  Elements whose
    ``electrons`` entry is missing are fitted without the constraint.  Raises CdpError without data.
    """
    if eqs.points == 0 or not eqs.blocks:
        raise CdpError("prior fit: no grid points to fit the atomic reference densities on")
    k = eqs.prior.n_basis
    n = eqs.ata.shape[0]
    integrals = eqs.prior.basis_integrals()
    constrained = [z for z in eqs.blocks if z in electrons]
    c_mat = np.zeros((len(constrained), n))
    rhs_c = np.zeros(len(constrained))
    for i, z in enumerate(constrained):
        b = eqs.blocks[z]
        c_mat[i, b * k:(b + 1) * k] = integrals
        rhs_c[i] = float(electrons[z])
    diag = np.diag(eqs.ata)
    scale = float(diag.mean()) if diag.size and diag.mean() > 0 else 1.0
    h = eqs.ata + ridge * scale * np.eye(n)
    kkt = np.block([[h, c_mat.T], [c_mat, np.zeros((len(constrained), len(constrained)))]])
    rhs = np.concatenate([eqs.aty, rhs_c])
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    coef = sol[:n]
    sse = max(float(coef @ eqs.ata @ coef - 2.0 * coef @ eqs.aty + eqs.yty), 0.0)
    out = {z: coef[b * k:(b + 1) * k].copy() for z, b in eqs.blocks.items()}
    err = max((abs(float(out[z] @ integrals) - float(electrons[z])) for z in constrained), default=0.0)
    return PriorFit(
        coefficients=out,
        electrons={z: float(electrons[z]) if z in electrons else float(out[z] @ integrals) for z in out},
        rmse=math.sqrt(sse / eqs.points),
        relative_l2=math.sqrt(sse / eqs.yty) if eqs.yty > 0 else float("nan"),
        points=eqs.points,
        structures=eqs.structures,
        constraint_error=err,
    )


def electrons_per_element(compositions: Sequence[Dict[int, int]], totals: Sequence[float],
                          integer: bool = False) -> Tuple[Dict[int, float], float]:
    """n_Z from structures' electron counts by least squares: Σ_Z count_{s,Z} n_Z ≈ N_s.

    Returns ({Z: n_Z}, max residual in electrons).  With ``integer`` the values are rounded when all lie
    within 0.01 of an integer (electron counts of a recipe).  Elements that never vary independently
    (e.g. always together in a fixed ratio) get the minimum-norm split.
    """
    elements = sorted({int(z) for c in compositions for z in c})
    if not elements:
        raise CdpError("prior fit: no atoms in the training structures")
    x = np.array([[float(c.get(z, 0)) for z in elements] for c in compositions])
    y = np.asarray(totals, dtype=np.float64)
    sol = np.linalg.lstsq(x, y, rcond=None)[0]
    if integer and np.all(np.abs(sol - np.round(sol)) < 0.01):
        sol = np.round(sol)
    resid = float(np.max(np.abs(x @ sol - y))) if len(y) else 0.0
    return {z: float(v) for z, v in zip(elements, sol)}, resid
