"""The exact robust set of a multiclass linear classifier on inputs in [0, 1].

For logits z = W·x + b (x flattened, d inputs, K classes) and a correctly classified
example (x, y), write for every other class j

    c_j = w_y − w_j,   m_j(δ) = c_j·(x + δ) + (b_y − b_j)   (= z_y − z_j at x + δ).

The example is broken at a threat iff some j ≠ y has a feasible δ — ‖δ‖ ≤ r and
x + δ ∈ [0, 1]^d, i.e. δ in the ball intersected with the box [lo, hi], lo_i = −x_i,
hi_i = 1 − x_i (intersected with [−ε, ε] for ℓ∞) — at which the scorer's argmax no longer
returns y. Because m_j is linear and the feasible set convex and compact, it suffices to
know M_j = min_δ m_j(δ), computed here in closed form (ℓ∞) or to float64 precision
(ℓ2, by bisection), per pair (i, j).

**Ties.** Scoring takes ``argmax`` of the logits, and ``torch.argmax`` returns the first
maximal index. At a point where z_j = z_y is the maximum, the prediction is therefore j's
side of y if j < y (misclassified) and y if j > y (still correct). So:

    broken  ⇔  ∃ j ≠ y:  M_j < 0,  or  M_j = 0 and j < y.

``gauntlet.attacks.losses.margin`` < 0 (z_y < max_{j≠y} z_j) is the strict part of this rule: every
point of negative margin is misclassified by argmax, and the only misclassified points of
margin exactly 0 are such ties with a lower index. An exact tie has measure zero on real
data; :func:`exact_robustness` returns the optimal values with a certified float64 bracket
so that a caller can tell a clear decision from a borderline one (float32 evaluation of the
model moves margins by ~1e-6 relative, which a float64 closed form cannot see).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gauntlet.benchmark.threats import ThreatModel

#: Bisection steps on λ (ℓ2). Each halves the bracket; 200 exhaust float64 from any start.
BISECTION_STEPS = 200


@dataclass
class ExactRobustness:
    """Closed-form robustness of every example against every other class.

    Attributes:
        min_margin: (N, K) float64 lower end of the bracket of M_j = min over the feasible
            set of z_y − z_j (ℓ∞: exact; ℓ2: λ-bisection bracket); +inf at j = y.
        min_margin_upper: (N, K) float64 upper end (the value at a feasible point), equal
            to ``min_margin`` for ℓ∞.
        correct: (N,) clean argmax == y.
        broken: (N,) correctly classified and breakable (the tie rule of the module
            docstring), decided on the bracket's midpoint.
        robust: (N,) correctly classified and not breakable.
        borderline: (N,) some class's bracket lies within ``tol`` of 0, so float32
            evaluation of the same model could decide either way.
    """

    min_margin: torch.Tensor
    min_margin_upper: torch.Tensor
    correct: torch.Tensor
    broken: torch.Tensor
    robust: torch.Tensor
    borderline: torch.Tensor

    @property
    def robust_accuracy(self) -> float:
        """Share of examples that are correctly classified and unbreakable."""
        return float(self.robust.double().mean())


def box_bounds(x: torch.Tensor, threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate bounds lo ≤ δ ≤ hi of the box (and, for ℓ∞, of the ball).

    Args:
        x: (N, d) float64 clean inputs in [0, 1].
        threat: the threat model.

    Returns:
        (lo, hi), each (N, d), with lo ≤ 0 ≤ hi: ℓ∞ [max(−ε, −x), min(ε, 1 − x)]; ℓ2 the
        box alone [−x, 1 − x] (the ball is handled by :func:`l2_min_margin`).
    """
    lo, hi = -x, 1.0 - x
    if threat.norm == "linf" and not math.isinf(threat.eps):
        lo, hi = lo.clamp(min=-threat.eps), hi.clamp(max=threat.eps)
    return lo, hi


def _corner(c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """argmin of c·δ over the box: each δ_i at the endpoint opposite to sign(c_i) (0 if c_i = 0)."""
    return torch.where(c > 0, lo, torch.where(c < 0, hi, torch.zeros_like(c)))


def linf_min_margin(c: torch.Tensor, m: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """min of m + c·δ over the box lo ≤ δ ≤ hi (the ℓ∞ ball ∩ [0, 1] around x).

    The objective is separable and linear, so the minimum is a per-coordinate linear
    program: δ_i = lo_i when c_i > 0, hi_i when c_i < 0 (any value when c_i = 0), i.e.
    M = m + Σ_i min(c_i·lo_i, c_i·hi_i). Exact up to float64 summation.

    Args:
        c: (N, K, d) float64 weight differences w_y − w_j.
        m: (N, K) clean margins z_y − z_j.
        lo: (N, d) lower bounds on δ.
        hi: (N, d) upper bounds on δ.

    Returns:
        (N, K) minimal margins.
    """
    lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
    return m + torch.minimum(c * lo, c * hi).sum(-1)


def l2_min_margin(c: torch.Tensor, m: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bracket of min m + c·δ subject to ‖δ‖₂ ≤ r and lo ≤ δ ≤ hi.

    Derivation. The problem is convex with a linear objective. If the box's own minimizer
    (the corner δ_i = lo_i for c_i > 0, hi_i for c_i < 0, 0 for c_i = 0) has norm ≤ r, it is
    feasible and optimal. Otherwise the ball constraint is active at the optimum, with a
    multiplier μ > 0: the Lagrangian c·δ + (μ/2)(‖δ‖² − r²) restricted to the box is
    separable, and its per-coordinate minimizer is the clipped stationary point
    δ_i = clip(−c_i/μ, lo_i, hi_i). With λ = 1/μ,

        δ(λ) = clip(−λ·c, lo, hi),

    and ‖δ(λ)‖ is continuous and nondecreasing in λ, from 0 (λ = 0) to the corner's norm
    (λ → ∞). The λ* with ‖δ(λ*)‖ = r makes δ(λ*) feasible and a minimizer of the
    Lagrangian over the box with complementary slackness, hence optimal (KKT; Slater holds
    since δ = 0 is strictly inside the ball). c·δ(λ) is nonincreasing in λ, so any λ_lo ≤ λ*
    ≤ λ_hi brackets the optimum: c·δ(λ_hi) ≤ M − m ≤ c·δ(λ_lo), the right end attained at
    a feasible point. λ* ≥ r/‖c‖ (clipping only shortens −λc), which starts the bracket;
    doubling finds λ_hi; bisection in float64 (:data:`BISECTION_STEPS`) closes it.

    Args:
        c: (N, K, d) float64 weight differences w_y − w_j.
        m: (N, K) clean margins.
        lo: (N, d) box lower bounds −x.
        hi: (N, d) box upper bounds 1 − x.
        r: raw ℓ2 radius (may be inf).

    Returns:
        (lower, upper): (N, K) bracket of the minimal margin; equal where the corner is
        feasible.
    """
    lo, hi = lo.unsqueeze(1).expand_as(c), hi.unsqueeze(1).expand_as(c)
    corner = _corner(c, lo, hi)
    corner_value = m + (c * corner).sum(-1)
    if math.isinf(r):
        return corner_value, corner_value
    if r == 0:
        return m.clone(), m.clone()
    inside = corner.norm(dim=-1) <= r
    cnorm = c.norm(dim=-1)

    def norm_at(lam: torch.Tensor) -> torch.Tensor:
        return torch.clamp(-lam.unsqueeze(-1) * c, lo, hi).norm(dim=-1)

    lam_lo = torch.where(cnorm > 0, r / cnorm.clamp_min(1e-300), torch.zeros_like(cnorm))
    lam_hi = lam_lo.clone() * 2 + 1e-300
    todo = ~inside
    for _ in range(2100):  # doubling: float64 overflows long before this
        short = todo & (norm_at(lam_hi) < r)
        if not short.any():
            break
        lam_hi = torch.where(short, lam_hi * 2, lam_hi)
    for _ in range(BISECTION_STEPS):
        mid = (lam_lo + lam_hi) / 2
        below = norm_at(mid) <= r
        lam_lo = torch.where(below, mid, lam_lo)
        lam_hi = torch.where(below, lam_hi, mid)

    def value_at(lam: torch.Tensor) -> torch.Tensor:
        return m + (c * torch.clamp(-lam.unsqueeze(-1) * c, lo, hi)).sum(-1)

    lower = torch.where(inside, corner_value, value_at(lam_hi))
    upper = torch.where(inside, corner_value, value_at(lam_lo))
    return lower, upper


def exact_robustness(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     threat: ThreatModel, tol: float = 1e-4) -> ExactRobustness:
    """The exact robust set of z = W·flatten(x) + b at ``threat``.

    Args:
        weight: (K, d) weights W.
        bias: (K,) biases b.
        x: (N, ...) clean inputs in [0, 1].
        y: (N,) labels.
        threat: ℓ∞ or ℓ2 threat model (ℓ2 ε per input value: raw radius ε·√d).
        tol: half-width around 0 in which a minimal margin counts as borderline.

    Returns:
        The per-example and per-class closed-form results.

    Raises:
        ValueError: shapes disagree, or inputs leave [0, 1].
    """
    w, b = weight.detach().double(), bias.detach().double()
    xf = x.detach().reshape(len(x), -1).double()
    if w.dim() != 2 or w.shape[1] != xf.shape[1] or b.shape != (w.shape[0],) or y.shape != (len(x),):
        raise ValueError(f"shapes: W {tuple(w.shape)}, b {tuple(b.shape)}, "
                         f"x {tuple(xf.shape)}, y {tuple(y.shape)}")
    if xf.numel() and (xf.min() < 0 or xf.max() > 1):
        raise ValueError("inputs must lie in [0, 1]")
    n, k = len(xf), w.shape[0]
    z = xf @ w.t() + b
    correct = z.argmax(1) == y  # first maximal index, as the scorer's argmax
    c = w[y].unsqueeze(1) - w.unsqueeze(0)  # (N, K, d): w_y − w_j
    m = z.gather(1, y[:, None]) - z  # (N, K): z_y − z_j
    lo, hi = box_bounds(xf, threat)
    if threat.norm == "linf":
        lower = upper = linf_min_margin(c, m, lo, hi)
    else:
        lower, upper = l2_min_margin(c, m, lo, hi, threat.radius(xf.shape[1]))
    own = torch.nn.functional.one_hot(y, k).bool()
    lower = lower.masked_fill(own, math.inf)
    upper = upper.masked_fill(own, math.inf)
    value = (lower + upper) / 2
    lower_index = torch.arange(k).unsqueeze(0) < y.unsqueeze(1)
    breakable = ((value < 0) | ((value == 0) & lower_index)).any(1)
    near = ((lower <= tol) & (upper >= -tol)).any(1)
    return ExactRobustness(min_margin=lower, min_margin_upper=upper, correct=correct,
                           broken=correct & breakable, robust=correct & ~breakable,
                           borderline=correct & near)
