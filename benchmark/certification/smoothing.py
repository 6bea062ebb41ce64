"""CERTIFY and PREDICT of randomized smoothing (Cohen, Rosenfeld & Kolter 2019).

CERTIFY (their Algorithm, "certify"): n0 noise samples pick the guess c_A; n fresh
samples count n_A hits of c_A; the one-sided Clopper–Pearson lower confidence bound
p_A at level α (the α-quantile of Beta(n_A, n − n_A + 1)) gives the radius
R = σ·Φ⁻¹(p_A) (their Theorem 1), or an abstention when p_A < 1/2. With probability
at least 1 − α over the samples, an example that is not abstained on is classified
c_A by the smoothed classifier everywhere in the ℓ2 ball of radius R.

All examples are certified together: :func:`gauntlet.defenses.smoothing.sample_counts` packs the
noise draws of several examples into each forward pass of at most ``batch`` rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.stats import beta, norm

from gauntlet.defenses.smoothing import predict_from_counts, sample_counts

#: Returned as the prediction of an abstention.
ABSTAIN = -1


def lower_confidence_bound(n_a: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion.

    ``beta.ppf(α, n_A, n − n_A + 1)`` (Clopper & Pearson 1934), 0 when n_A = 0. It
    equals Cohen et al.'s ``proportion_confint(n_A, n, alpha=2α, method="beta")[0]``.

    Args:
        n_a: successes (scalar or array).
        n: trials.
        alpha: one-sided level.

    Returns:
        The bound(s), float64.
    """
    k = np.asarray(n_a, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lb = beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)
    return np.where(k > 0, lb, 0.0)


def upper_confidence_bound(n_a: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson upper bound: ``beta.ppf(1 − α, n_A + 1, n − n_A)``, 1 at n_A = n."""
    k = np.asarray(n_a, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ub = beta.ppf(1.0 - alpha, k + 1.0, np.maximum(n - k, 1.0))
    return np.where(k < n, ub, 1.0)


def radius_from_bound(p_lower: np.ndarray | float, sigma: float) -> np.ndarray:
    """σ·Φ⁻¹(p_A) (Cohen et al. 2019, Theorem 1); 0 where p_A < 1/2 (abstain)."""
    p = np.asarray(p_lower, dtype=np.float64)
    return np.where(p >= 0.5, sigma * norm.ppf(np.clip(p, 0.5, 1.0)), 0.0)


def max_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius CERTIFY can return with n samples: σ·Φ⁻¹(α^{1/n}) (n_A = n)."""
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def required_bound(radius: float, sigma: float) -> float:
    """The p_A needed for a radius: Φ(r / σ) (inverse of Theorem 1's radius)."""
    return float(norm.cdf(radius / sigma))


@dataclass
class Certificate:
    """CERTIFY's output for a batch of examples (CPU tensors / arrays).

    Attributes:
        prediction: (N,) int64 class c_A, −1 where abstained.
        radius: (N,) float64 certified ℓ2 radius, 0 where abstained.
        p_lower: (N,) float64 lower confidence bound on p_A.
        samples: noise samples drawn per example (n0 + samples used for estimation).
    """

    prediction: torch.Tensor
    radius: np.ndarray
    p_lower: np.ndarray
    samples: np.ndarray


def certify(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, sigma: float,
            n0: int, n: int, alpha: float, batch: int, generator: torch.Generator | None = None,
            autocast: bool = False) -> Certificate:
    """CERTIFY every example of ``x`` (Cohen et al. 2019, Algorithm "certify").

    Args:
        model: the base function f on noisy inputs (logits).
        x: clean inputs (N, C, H, W) in [0, 1].
        sigma: noise level.
        n0: selection samples (pick c_A).
        n: estimation samples (fresh).
        alpha: failure probability.
        batch: rows per forward pass.
        generator: RNG on ``x``'s device.
        autocast: CUDA fp16 autocast for the base model (ignored on the CPU).

    Returns:
        The :class:`Certificate`.
    """
    sel = sample_counts(model, x, n0, sigma, batch=batch, generator=generator, autocast=autocast)
    c_a = sel.argmax(dim=1)
    est = sample_counts(model, x, n, sigma, batch=batch, generator=generator, autocast=autocast)
    n_a = est.gather(1, c_a.unsqueeze(1)).squeeze(1).cpu().numpy()
    p_lower = lower_confidence_bound(n_a, n, alpha)
    radius = radius_from_bound(p_lower, sigma)
    pred = torch.where(torch.from_numpy(p_lower >= 0.5), c_a.cpu(), torch.full_like(c_a.cpu(), ABSTAIN))
    return Certificate(pred, radius, p_lower, np.full(len(x), n0 + n, dtype=np.int64))


def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, sigma: float,
            n: int, alpha: float, batch: int, generator: torch.Generator | None = None,
            autocast: bool = False) -> torch.Tensor:
    """PREDICT (Cohen et al. 2019): the top class, or −1 unless the two-sided binomial
    test of the top two counts gives p ≤ α.

    Returns:
        (N,) int64 predictions on the CPU.
    """
    counts = sample_counts(model, x, n, sigma, batch=batch, generator=generator, autocast=autocast)
    return predict_from_counts(counts, alpha).cpu()


def finite(values: np.ndarray) -> list[float]:
    """Floats for JSON (radii are finite by construction; checked anyway)."""
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError("non-finite radius")
    return out
