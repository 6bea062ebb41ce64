"""Randomized smoothing: CERTIFY, PREDICT, the sequential test and SmoothedDefense.

Closed forms (Cohen et al. 2019): a two-class linear base classifier f(x) = [w·x + b > 0]
smoothed with N(0, σ²I) has the exact certified radius |w·x + b| / ‖w‖₂, and with n_A = n
CERTIFY's radius is σ·Φ⁻¹(α^{1/n}) (3.81σ at n = 10⁵, α = 0.001).
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from gauntlet.attacks.adaptive import AdaptiveView, evaluate
from gauntlet.benchmark.certification.sequential import certify_sequential, stage_sizes
from gauntlet.benchmark.certification.smoothing import (
    certify, lower_confidence_bound, max_radius, predict, upper_confidence_bound)
from gauntlet.benchmark.certify import certified_curve, certify_submission, consistency_violations
from gauntlet.benchmark.manifest import SmoothingCertificate
from gauntlet.benchmark.threats import ThreatModel
from gauntlet.defenses.smoothing import SmoothedDefense, binomial_two_sided_pvalue, predict_from_counts, sample_counts

SIGMA = 0.25
SHAPE = (1, 4, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


class Halfspace(nn.Module):
    """Two-class linear classifier: logits (0, w·x + b)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w.flatten(), b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)


class Constant(nn.Module):
    """Always class 0 (of 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([1.0, 0.0, 0.0], device=x.device).expand(len(x), 3)


def _halfspace_points(true_radii: list[float]) -> tuple[Halfspace, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(math.prod(SHAPE), generator=g)
    w = w / w.norm() * 3.0
    model = Halfspace(w, b=-0.5)
    x0 = torch.rand(len(true_radii), *SHAPE, generator=g)
    # move each point along w so that (w·x + b)/‖w‖ equals the wanted signed distance
    s = (x0.flatten(1) @ model.w + model.b) / w.norm()
    target = torch.tensor(true_radii)
    x = x0 + ((target - s) / w.norm()).view(-1, 1, 1, 1) * w.view(1, *SHAPE)
    return model, x


def _exact_radius(model: Halfspace, x: torch.Tensor) -> np.ndarray:
    return ((x.flatten(1) @ model.w + model.b).abs() / model.w.norm()).double().numpy()


def test_certify_radius_is_below_and_close_to_the_exact_radius():
    true = [0.05, 0.1, 0.2, 0.3, -0.15, -0.4]
    model, x = _halfspace_points(true)
    gen = torch.Generator().manual_seed(0)
    cert = certify(model, x, sigma=SIGMA, n0=100, n=100_000, alpha=0.001, batch=20_000, generator=gen)
    exact = _exact_radius(model, x)
    assert np.array_equal(cert.prediction.numpy(), (np.array(true) > 0).astype(int))
    assert np.all(cert.radius <= exact)
    # at n = 1e5 the Clopper–Pearson slack costs at most ~0.012 in radius here
    assert np.all(exact - cert.radius < 0.015), exact - cert.radius


def test_max_radius_formula_and_a_constant_classifier_at_n_1e5():
    assert max_radius(100_000, 0.001, 1.0) == pytest.approx(3.8106, abs=1e-3)
    assert max_radius(100_000, 0.001, 0.25) == pytest.approx(0.25 * norm.ppf(0.001 ** 1e-5))
    x = torch.rand(3, 1, 2, 2)
    cert = certify(Constant(), x, sigma=0.5, n0=100, n=100_000, alpha=0.001, batch=50_000,
                   generator=torch.Generator().manual_seed(0))
    assert cert.prediction.tolist() == [0, 0, 0]
    assert np.allclose(cert.radius, max_radius(100_000, 0.001, 0.5))


def test_clopper_pearson_bounds():
    # beta.ppf form equals the textbook definition: P(Bin(n, LB) >= k) = alpha
    from scipy.stats import binom
    for k, n in [(1, 10), (37, 50), (990, 1000), (1000, 1000)]:
        lb = float(lower_confidence_bound(k, n, 0.01))
        assert binom.sf(k - 1, n, lb) == pytest.approx(0.01, rel=1e-6)
        ub = float(upper_confidence_bound(k, n, 0.01))
        assert ub == 1.0 if k == n else binom.cdf(k, n, ub) == pytest.approx(0.01, rel=1e-6)
    assert lower_confidence_bound(0, 10, 0.01) == 0.0


def test_binomial_pvalue_matches_scipy_binomtest():
    pairs = [(0, 0), (5, 5), (6, 4), (60, 40), (70, 30), (100, 0), (3, 1)]
    top = torch.tensor([a for a, _ in pairs])
    second = torch.tensor([b for _, b in pairs])
    ours = binomial_two_sided_pvalue(top, second).numpy()
    for (a, b), p in zip(pairs, ours):
        ref = 1.0 if a + b == 0 else binomtest(a, a + b, 0.5).pvalue
        assert p == pytest.approx(ref, rel=1e-9, abs=1e-15)


def test_predict_abstains_on_a_tie_and_answers_a_clear_point():
    model, x = _halfspace_points([0.0, 0.5])
    pred = predict(model, x, sigma=SIGMA, n=1000, alpha=0.001, batch=1000,
                   generator=torch.Generator().manual_seed(0))
    assert pred.tolist() == [-1, 1]
    counts = torch.tensor([[500, 500, 0], [900, 50, 50]])
    assert predict_from_counts(counts, 0.001).tolist() == [-1, 0]


def test_sample_counts_packs_several_examples_per_pass():
    calls = []

    def model(z):
        calls.append(len(z))
        return Halfspace(torch.ones(16), 0.0)(z)

    x = torch.rand(7, *SHAPE)
    counts = sample_counts(model, x, 30, SIGMA, batch=100)
    assert counts.shape == (7, 2) and counts.sum(1).tolist() == [30] * 7
    assert calls == [100, 100, 10]


def test_sequential_agrees_with_full_and_saves_samples():
    true = [0.6, 0.8, 0.0, -0.7]  # clear cases around a 0.1 target (the last as class 0)
    model, x = _halfspace_points(true)
    kw = dict(sigma=SIGMA, n0=100, n=100_000, alpha=0.001, batch=50_000)
    full = certify(model, x, generator=torch.Generator().manual_seed(0), **kw)
    seq = certify_sequential(model, x, radii=[0.1], generator=torch.Generator().manual_seed(1), **kw)
    assert ((full.radius >= 0.1) == (seq.radius >= 0.1)).all()
    assert (seq.radius >= 0.1).tolist() == [True, True, False, True]
    assert (seq.samples == 100 + stage_sizes(100_000)[0]).all()  # all decided at stage 1
    assert seq.samples.sum() < full.samples.sum() / 50
    assert np.all(seq.radius <= _exact_radius(model, x) + 1e-12)


def test_stage_sizes():
    assert stage_sizes(100_000) == [1000, 10_000, 100_000]
    assert stage_sizes(10) == [1, 10]
    with pytest.raises(ValueError):
        stage_sizes(100, (0.5, 0.9))


def _smoothed(sigma: float = SIGMA) -> SmoothedDefense:
    model, _ = _halfspace_points([0.0])
    return SmoothedDefense(model, sigma=sigma, samples=200, alpha=0.001, batch=1000).eval()


def test_smoothed_defense_forward_is_predict_with_a_reject_column():
    defense = _smoothed()
    _, x = _halfspace_points([0.0, 0.5, -0.5])
    torch.manual_seed(0)
    out = defense(x)
    assert out.shape == (3, 3)
    assert out.argmax(1).tolist() == [2, 1, 0]  # tie → reject (last column)
    assert defense.randomized and defense.rejects


def test_smoothed_defense_view_has_the_same_columns_and_gradients():
    defense = _smoothed()
    _, x = _halfspace_points([0.3, -0.3])
    view = AdaptiveView(defense, eot=8)
    torch.manual_seed(0)
    logits = view(x)
    assert logits.shape == (8, 2, 3)
    ev = evaluate(view, x, torch.tensor([1, 0]), "ce")
    assert ev.grad is not None and ev.grad.abs().sum() > 0


def test_smoothed_defense_trains_the_base_model():
    defense = _smoothed()
    defense.base.train()
    out = defense(torch.rand(4, *SHAPE))
    assert out.shape == (4, 2)


def _sub(cert) -> SimpleNamespace:
    return SimpleNamespace(manifest=SimpleNamespace(certify=cert), path=Path("manifest.yaml"))


@pytest.mark.parametrize("sequential", [False, True])
def test_certify_submission_record(sequential):
    true = [0.3, 0.05, -0.3, 0.0]
    model, x = _halfspace_points(true)
    defense = SmoothedDefense(model, sigma=SIGMA).eval()
    y = torch.tensor([1, 1, 1, 0])
    cert = SmoothingCertificate(method="randomized-smoothing", sigma=SIGMA, n0=100, n=100_000)
    threats = [ThreatModel("l2", 0.1 / 4), ThreatModel("l2", 0.0)]  # l2 radii 0.1 and 0 (d = 16)
    rec = certify_submission(_sub(cert), defense, x, y, indices=[10, 11, 12, 13], threats=threats,
                             device="cpu", seed=0, profile_n=20_000, sequential=sequential)
    assert set(rec) == {"method", "params", "per_example", "summary", "info"}
    assert rec["params"]["n"] == 20_000 and rec["params"]["n_manifest"] == 100_000
    pe = rec["per_example"]
    assert pe["correct"][:3] == [1, 1, 0] and pe["prediction"][2] == 0
    assert rec["summary"]["certified_accuracy"] == {"l2-0.025": 0.25, "l2-0": 0.5}
    assert rec["summary"]["n"] == 4
    info = rec["info"]
    assert info["samples_used"] + info["samples_saved"] == info["samples_full"] == 4 * 20_100
    assert (info["samples_saved"] > 0) == sequential


def test_certified_curve_and_violations():
    curve = certified_curve([0.0, 0.2, 0.5, 0.5], [1, 1, 0, 1], [0.0, 0.2, 0.5, 0.6])
    assert curve == {"radius": [0.0, 0.2, 0.5, 0.6], "accuracy": [0.75, 0.5, 0.25, 0.0]}
    per_example = {"radius": [0.3, 0.3, 0.0], "correct": [1, 1, 1]}
    attacks = {"l2-a": {"pgd": {"robust_correct": [0.0, 1.0, 0.0], "clean_correct": [1.0, 1.0, 1.0]},
                        "square": [1.0, 1.0, 0.0]},
               "l2-b": {"pgd": {"robust_correct": [0.0, 0.0, 0.0], "clean_correct": [0.0, 1.0, 1.0]}}}
    out = consistency_violations(per_example, attacks, radii={"l2-a": 0.2, "l2-b": 0.2, "l2-c": 0.1},
                                 indices=[7, 8, 9])
    assert out == {"l2-a": [7], "l2-b": [8], "l2-c": []}
