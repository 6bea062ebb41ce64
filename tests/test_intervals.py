"""The intervals of gauntlet.benchmark.intervals: exact for 0/1 scores, and checked by simulation for
a randomized defense's fractional scores (means of R scoring draws)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from gauntlet.benchmark.intervals import accuracy_interval, clopper_pearson, overlap


def test_zero_one_scores_get_the_exact_clopper_pearson_interval():
    # The issue's own example: 18 of 20 gives about [68%, 99%].
    low, high = accuracy_interval([1.0] * 18 + [0.0] * 2)
    assert (round(low, 3), round(high, 3)) == (0.683, 0.988)
    ci = binomtest(18, 20).proportion_ci(method="exact")
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert accuracy_interval([1.0] * 20)[1] == 1.0 and accuracy_interval([0.0] * 20)[0] == 0.0
    assert accuracy_interval([]) is None


def test_fractional_scores_take_floor_and_ceiling_of_the_sum():
    low, high = accuracy_interval([0.5] * 5)  # sum 2.5
    assert low == pytest.approx(clopper_pearson(2, 5)[0]) and high == pytest.approx(clopper_pearson(3, 5)[1])


@pytest.mark.parametrize("bad", [[1.5], [-0.1], [math.nan]])
def test_scores_outside_the_unit_interval_are_refused(bad):
    with pytest.raises(ValueError):
        accuracy_interval(bad)


def test_overlap():
    assert overlap((0.1, 0.5), (0.5, 0.9)) and not overlap((0.1, 0.4), (0.5, 0.9)) and not overlap(None, (0, 1))


#: Per-example survival probabilities p_i of a randomized defense: all-or-nothing, equal,
#: spread, bimodal, near the boundaries.
SCENARIOS = {
    "zero-one": lambda rng, n: (rng.random(n) < 0.8).astype(float),
    "equal": lambda rng, n: np.full(n, 0.8),
    "beta": lambda rng, n: rng.beta(4, 1, n),
    "bimodal": lambda rng, n: np.where(rng.random(n) < 0.8, 0.97, 0.1),
    "near-one": lambda rng, n: np.full(n, 0.98),
    "near-zero": lambda rng, n: rng.beta(0.3, 6, n),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("n", [10, 20, 50, 200])
def test_coverage_of_fractional_scores_by_simulation(scenario, n):
    """The estimand is E[p] over the example distribution; each experiment draws n examples
    (p_i), then R = 10 scoring draws each, and asks whether the interval covers E[p]. The
    coverage must reach 95% up to Monte-Carlo error (3 standard errors of 4,000 trials)."""
    rng = np.random.default_rng(sorted(SCENARIOS).index(scenario) * 1000 + n)
    draw = SCENARIOS[scenario]
    truth = float(np.mean(draw(rng, 2_000_000)))
    # accuracy_interval depends on the scores only through floor/ceil of their sum: tabulate
    # Clopper–Pearson once per count and check a few trials against the function itself.
    table = np.array([clopper_pearson(k, n) for k in range(n + 1)])
    trials = 4000
    sums = (rng.binomial(10, np.stack([draw(rng, n) for _ in range(trials)])) / 10).sum(1)
    low = table[np.clip(np.floor(sums + 1e-9).astype(int), 0, n), 0]
    high = table[np.clip(np.ceil(sums - 1e-9).astype(int), 0, n), 1]
    for i in range(5):
        scores = rng.binomial(10, draw(rng, n)) / 10
        k_lo, k_hi = math.floor(scores.sum() + 1e-9), math.ceil(scores.sum() - 1e-9)
        assert accuracy_interval(scores) == pytest.approx((table[k_lo, 0], table[k_hi, 1]))
    coverage = float(np.mean((low <= truth) & (truth <= high)))
    assert coverage >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / trials), coverage
