"""Threat models: projection, random starts, steps and verification."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gauntlet.benchmark.threats import FIXED_THREATS, ThreatModel, ThreatViolation, get_threat


def test_fixed_threats_and_raw_radii():
    assert FIXED_THREATS == ("linf-0.031", "l2-0.005")
    assert get_threat("linf-0.031").radius(784) == 0.031
    # RMS per input value: 0.005·√d (DESIGN.md: 0.14 on MNIST, 0.277 on CIFAR-10, 1.94 on ImageNet).
    assert get_threat("l2-0.005").radius(784) == pytest.approx(0.14)
    assert get_threat("l2-0.005").radius(3072) == pytest.approx(0.2771, abs=1e-4)
    assert get_threat("l2-0.005").radius(3 * 224 * 224) == pytest.approx(1.94, abs=1e-2)
    assert math.isinf(get_threat("linf-inf").radius(784))


@pytest.mark.parametrize("bad", ["l3-0.1", "linf", "linf-x", "l2--1", ""])
def test_bad_threat_ids_are_rejected(bad):
    with pytest.raises(ValueError):
        get_threat(bad)


@settings(max_examples=50, deadline=None)
@given(norm=st.sampled_from(["linf", "l2"]), eps=st.floats(0.0, 0.5), scale=st.floats(0.0, 3.0),
       seed=st.integers(0, 2**16))
def test_projection_is_feasible_and_idempotent(norm, eps, scale, seed):
    g = torch.Generator().manual_seed(seed)
    t = ThreatModel(norm, eps)
    x = torch.rand(4, 1, 6, 6, generator=g)
    z = x + scale * torch.randn(x.shape, generator=g)
    p = t.project(z, x)
    t.verify(p, x)
    assert torch.allclose(t.project(p, x), p, atol=1e-6)


@pytest.mark.parametrize("threat_id", ["linf-0.031", "l2-0.005", "linf-0.3", "l2-0.05"])
def test_random_start_and_uniform_delta_stay_in_ball(threat_id):
    t = get_threat(threat_id)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=g)
    t.verify(t.random_start(x, g), x)
    d = t.uniform_delta(x, g)
    r = t.radius(784)
    norms = d.flatten(1).abs().amax(1) if t.norm == "linf" else d.flatten(1).norm(dim=1)
    assert (norms <= r + 1e-6).all()
    # ℓ2 uniform in volume: in d = 784 almost all mass lies near the sphere.
    if t.norm == "l2":
        assert norms.min() > 0.98 * r


def test_steps_have_the_requested_length():
    g = torch.randn(3, 1, 5, 5)
    assert torch.allclose(ThreatModel("linf", 0.1).step(g, 0.01).abs().amax(), torch.tensor(0.01))
    norms = ThreatModel("l2", 0.1).step(g, 0.3).flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full((3,), 0.3))


def test_verify_rejects_violations():
    x = torch.full((2, 1, 4, 4), 0.5)
    t = get_threat("linf-0.031")
    with pytest.raises(ThreatViolation, match="exceeds radius"):
        t.verify(x + 0.05, x)
    with pytest.raises(ThreatViolation, match="outside"):
        t.verify(torch.full_like(x, 1.2), torch.ones_like(x))
    bad = x.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ThreatViolation, match="non-finite"):
        t.verify(bad, x)
    t.verify(x + 0.031, x)  # on the boundary is inside
    l2 = get_threat("l2-0.005")
    x = torch.full((1, 1, 28, 28), 0.5)
    d = torch.zeros_like(x)
    d[0, 0, 0, 0] = 0.14 + 1e-4
    with pytest.raises(ThreatViolation):
        l2.verify(x + d, x)
