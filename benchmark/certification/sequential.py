"""Sample-efficient CERTIFY: "is the certified radius at least r?", decided in stages.

Staged Clopper–Pearson tests with a Bonferroni (union) bound over the stages, the
simplest member of the sequential schemes proposed for smoothing (e.g. Seidel, Leino &
Fredrikson 2022, "Sequential certification of randomized smoothing", which use
confidence sequences; we use fixed stages and a union bound because its validity is
elementary).

Algorithm, for target radii r_1 < … < r_m, i.e. targets p*_j = Φ(r_j / σ):

1. n0 samples pick c_A (as in CERTIFY).
2. Fixed cumulative sample sizes n_1 < n_2 < … < n_K = n are drawn in turn. After stage
   k, with n_A^k hits of c_A among the first n_k fresh samples, compute the one-sided
   Clopper–Pearson bounds LB_k and UB_k at level α/K each.
3. Stop as soon as every target is decided (targets beyond σ·Φ⁻¹((α/K)^{1/n}), the
   largest radius reachable with n samples, are dropped first): LB_k ≥ p*_j (certified at r_j) or
   UB_k < p*_j (cannot be certified at r_j). Report the radius σ·Φ⁻¹(LB_k) of the
   stopping stage (0 and abstain when LB_k < 1/2).

Why the level is α: n_1, …, n_K are fixed in advance, so each LB_k is a valid
Clopper–Pearson bound for a fixed sample size: P(LB_k > p_A) ≤ α/K. By the union bound,
P(∃k: LB_k > p_A) ≤ α, whatever rule stops the sampling. On the complement (probability
≥ 1 − α) every bound the procedure could report is ≤ p_A, so the reported radius, and
every "certified at r_j" decision, is correct with probability ≥ 1 − α, as for
CERTIFY. Stopping on UB_k < p*_j only ever withholds a certificate, which cannot make a
false one. The price: the final stage's bound is at level α/K instead of α (slightly
smaller radii on hard points); the gain: easy points stop after n_1 samples.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from gauntlet.benchmark.certification.smoothing import (
    ABSTAIN, Certificate, lower_confidence_bound, max_radius, radius_from_bound, required_bound,
    upper_confidence_bound)
from gauntlet.defenses.smoothing import sample_counts

#: Default stage sizes as fractions of n (cumulative): n/100, n/10, n.
DEFAULT_STAGES = (0.01, 0.1, 1.0)


def stage_sizes(n: int, fractions: Sequence[float] = DEFAULT_STAGES) -> list[int]:
    """Strictly increasing cumulative sample sizes ending at ``n``.

    Raises:
        ValueError: fractions not increasing in (0, 1] or not ending at 1.
    """
    if not fractions or fractions[-1] != 1.0 or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"stage fractions must lie in (0, 1] and end at 1, got {fractions}")
    sizes: list[int] = []
    for f in fractions:
        size = max(1, int(round(f * n)))
        if not sizes or size > sizes[-1]:
            sizes.append(size)
    if sizes[-1] != n:
        sizes[-1] = n
    return sizes


def certify_sequential(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                       radii: Sequence[float], sigma: float, n0: int, n: int, alpha: float,
                       batch: int, stages: Sequence[float] = DEFAULT_STAGES,
                       generator: torch.Generator | None = None,
                       autocast: bool = False) -> Certificate:
    """Decide "radius ≥ r_j?" for every example and target, stopping early (module docstring).

    Args:
        model: the base function f on noisy inputs.
        x: clean inputs (N, C, H, W).
        radii: target radii r_j (at least one).
        sigma, n0, n, alpha, batch, generator, autocast: as :func:`certify`.
        stages: cumulative fractions of n at which to test.

    Returns:
        A :class:`Certificate` whose ``samples`` counts what each example used; its
        radius ≥ r_j exactly when the procedure certified r_j.
    """
    if not radii:
        raise ValueError("at least one target radius is needed")
    sizes = stage_sizes(n, stages)
    level = alpha / len(sizes)
    # A target beyond the largest radius n samples can give at level α/K can never be
    # certified: leave it out of the stopping rule rather than sample for nothing.
    reachable = [r for r in radii if r <= max_radius(n, level, sigma)] or [min(radii)]
    targets = np.array([required_bound(r, sigma) for r in reachable])
    sel = sample_counts(model, x, n0, sigma, batch=batch, generator=generator, autocast=autocast)
    c_a = sel.argmax(dim=1)
    num = len(x)
    hits = np.zeros(num, dtype=np.int64)
    used = np.zeros(num, dtype=np.int64)
    p_lower = np.zeros(num)
    active = np.arange(num)
    drawn = 0
    for size in sizes:
        if len(active) == 0:
            break
        idx = torch.as_tensor(active, device=x.device)
        counts = sample_counts(model, x.index_select(0, idx), size - drawn, sigma, batch=batch,
                               generator=generator, autocast=autocast)
        hits[active] += counts.gather(1, c_a[idx].unsqueeze(1)).squeeze(1).cpu().numpy()
        used[active] = size
        drawn = size
        lb = lower_confidence_bound(hits[active], size, level)
        ub = upper_confidence_bound(hits[active], size, level)
        p_lower[active] = lb
        decided = ((lb[:, None] >= targets[None, :]) | (ub[:, None] < targets[None, :])).all(axis=1)
        active = active[~decided]
    pred = torch.where(torch.from_numpy(p_lower >= 0.5), c_a.cpu(), torch.full_like(c_a.cpu(), ABSTAIN))
    return Certificate(pred, radius_from_bound(p_lower, sigma), p_lower, used + n0)
