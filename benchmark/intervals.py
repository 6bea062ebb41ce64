"""Exact 95% intervals for every accuracy Gauntlet writes.

An accuracy is the mean of per-example scores s_i ∈ [0, 1] over n examples drawn from
the test split: 0/1 outcomes for a deterministic defense, and for a randomized one the
fraction of R scoring draws that survived (DESIGN.md, "Scoring").

* **0/1 scores**: the exact Clopper–Pearson interval for a binomial proportion
  (``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``).
* **Fractional scores** (randomized defenses): S = Σ s_i is a sum of independent [0, 1]
  variables with mean nμ. A [0, 1] variable with mean μ is dominated in the convex order
  by a Bernoulli(μ) variable (it moves mass inward), and convex order is preserved under
  independent sums, so S is less dispersed than Binomial(n, μ). We therefore take the
  Clopper–Pearson lower bound at ⌊S⌋ and the upper bound at ⌈S⌉: each is at least as
  wide as the exact interval a binomial count on the same side would get. Convex order
  bounds expectations of convex functions, not tail probabilities exactly, so the
  coverage is checked by simulation (``tests/test_intervals.py``: examples whose
  survival probabilities are 0/1, equal, Beta-spread or bimodal, R = 10 draws,
  n = 10…200; every case covers at least the nominal 95% up to Monte-Carlo error).
  When every score is 0 or 1 the two rules coincide.

Per-example worst cases (the minimum over attacks) are scores in [0, 1] too, so the
same rule gives the worst case its interval.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

from scipy import stats

#: Confidence level of every interval Gauntlet writes.
LEVEL = 0.95
#: Recorded beside the intervals in result files.
METHOD = "clopper-pearson (fractional scores: lower at floor, upper at ceil of the sum)"
_EPS = 1e-9


@lru_cache(maxsize=65536)
def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact two-sided interval for k successes in n trials (cached: a leaderboard
    asks for the same few (k, n) many times).

    Raises:
        ValueError: k outside [0, n], or n < 1.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def accuracy_interval(scores: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The interval of the mean of per-example scores in [0, 1] (module docstring).

    Returns:
        (low, high), or None for no examples.

    Raises:
        ValueError: a score outside [0, 1] or not finite.
    """
    values = [float(s) for s in scores]
    n = len(values)
    if n == 0:
        return None
    if any(not (math.isfinite(v) and -_EPS <= v <= 1 + _EPS) for v in values):
        raise ValueError("scores must be finite and in [0, 1]")
    total = sum(values)
    low_k = min(n, max(0, math.floor(total + _EPS)))
    high_k = min(n, max(0, math.ceil(total - _EPS)))
    return clopper_pearson(low_k, n, level)[0], clopper_pearson(high_k, n, level)[1]


def percent(ci: tuple[float, float] | Sequence[float] | None) -> str:
    """``(0.683, 0.988)`` → ``[68.3, 98.8]``; empty for a missing interval."""
    return "" if ci is None else f"[{100 * float(ci[0]):.1f}, {100 * float(ci[1]):.1f}]"


def rounded(ci: tuple[float, float] | None, digits: int = 6) -> list[float] | None:
    """JSON-ready ``[low, high]``."""
    return None if ci is None else [round(ci[0], digits), round(ci[1], digits)]


def overlap(a: tuple[float, float] | Sequence[float] | None, b: tuple[float, float] | Sequence[float] | None) -> bool:
    """Whether two intervals share a point (False when either is missing)."""
    if a is None or b is None:
        return False
    return a[0] <= b[1] + _EPS and b[0] <= a[1] + _EPS
