"""Square Attack: closed-form robust accuracy on linear models, no gradient read,
per-example query counting, schedules, validity and determinism."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gauntlet.attacks.base import AttackContext
from gauntlet.attacks.registry import make_attack_unchecked
from gauntlet.attacks.square import eta_pattern, p_schedule
from gauntlet.benchmark.threats import ThreatModel
from gauntlet.defenses.models import LinearClassifier
from gauntlet.defenses.pipeline import Defense, Step
from tests.linear import exact_distance, linear_problem, still_correct


def run(model, x, y, threat, seed: int = 0, **params):
    ctx = AttackContext(generator=torch.Generator().manual_seed(seed))
    return make_attack_unchecked("square", **params).run(model, x, y, threat, ctx)


class NoGradient(torch.autograd.Function):
    """Identity whose backward pass fails: proves an attack never differentiates."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("square read a gradient")


class Guarded(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(NoGradient.apply(x))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_p_schedule_is_the_reference_schedule_rescaled():
    assert p_schedule(0, 10000, 0.8) == 0.8
    assert p_schedule(10, 10000, 0.8) == 0.8
    assert p_schedule(11, 10000, 0.8) == 0.4
    assert p_schedule(8001, 10000, 0.8) == 0.8 / 512
    # with 5,000 queries the same halvings happen at half the iterations
    assert p_schedule(6, 5000, 0.8) == 0.4
    assert p_schedule(4001, 5000, 0.8) == 0.8 / 512


def test_eta_pattern_has_unit_norm_and_opposite_halves():
    e = eta_pattern(5)
    assert math.isclose(float(e.norm()), 1.0, rel_tol=1e-6)
    assert (e[:2] > 0).all() and (e[2:] < 0).all()


def test_linf_square_reaches_the_exact_robust_accuracy_of_a_linear_model():
    # A linear margin is minimized over the ℓ∞ ball at the vertex −r·sign(w) (Hölder);
    # Square's ±ε square updates, single pixels late in the schedule, reach it.
    model, x, y = linear_problem(24)
    dist = exact_distance(model, x, y, "linf")
    threat = ThreatModel("linf", float(dist.median()))  # r < 0.3: the box never binds
    res = run(Guarded(model), x, y, threat)
    threat.verify(res.x_adv, x)
    clear = (dist / threat.eps - 1).abs() > 0.01
    robust = still_correct(model, res.x_adv, y)
    assert torch.equal(robust[clear], (dist > threat.eps)[clear])
    queries = torch.tensor(res.info["queries"])
    assert (queries[robust] == 5000).all()  # robust examples use the whole budget
    assert (queries[~robust] < 5000).all()  # broken ones stop at once


def test_l2_square_breaks_what_is_clearly_breakable_and_nothing_else():
    # ℓ2 Square is not exact on a dense random linear model: its window patterns cannot
    # align with i.i.d. weights (the torchattacks port of the reference leaves 73% robust
    # where the exact value is 50%, ours 63%, 60 points). We check every point within
    # 0.7·r is broken.
    model, x, y = linear_problem(24, seed=1)
    dist = exact_distance(model, x, y, "l2")
    d = x[0].numel()
    threat = ThreatModel("l2", float(dist.median()) / math.sqrt(d))
    r = threat.radius(d)
    res = run(Guarded(model), x, y, threat, n_queries=2000)
    threat.verify(res.x_adv, x)
    robust = still_correct(model, res.x_adv, y)
    assert not robust[dist < 0.7 * r].any()
    assert robust[dist > r].all()


def test_query_counting_and_early_stop():
    model, x, y = linear_problem(6)
    x = x.clone()
    y = y.clone()
    y[0] = 1 - y[0]  # misclassified from the start: one query
    res = run(model, x, y, ThreatModel("linf", 0.0), n_queries=50)
    q = res.info["queries"]
    assert q[0] == 1 and all(v == 50 for v in q[1:])
    assert torch.equal(res.x_adv, x)  # ε = 0 leaves nothing to change


class Noise(Step):
    randomized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.randn_like(x)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.02), ("linf", math.inf), ("l2", math.inf)])
def test_valid_points_on_a_randomized_defense(norm, eps):
    model, x, y = linear_problem(8, num_classes=3)
    defense = Defense(model, steps=[Noise()])
    threat = ThreatModel(norm, eps)
    torch.manual_seed(0)  # the defense's own noise; the attack's draws use ctx.generator
    res = run(defense, x, y, threat, n_queries=100)
    threat.verify(res.x_adv, x)
    assert res.info["single_draw_queries"] is True


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_unbounded_threat_breaks_everything(norm):
    model, x, y = linear_problem(8, num_classes=3)
    threat = ThreatModel(norm, math.inf)
    res = run(model, x, y, threat, n_queries=200)
    threat.verify(res.x_adv, x)
    assert not still_correct(model, res.x_adv, y).any()
    assert res.info["single_draw_queries"] is False


def test_rejects_non_image_inputs():
    model = LinearClassifier(4, 2)
    with pytest.raises(ValueError, match="image"):
        run(model, torch.rand(3, 4), torch.zeros(3, dtype=torch.long), ThreatModel("linf", 0.1))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_seed_same_output(norm):
    model, x, y = linear_problem(10, side=10, num_classes=3)
    threat = ThreatModel(norm, 0.05)
    a = run(model, x, y, threat, seed=5, n_queries=200)
    b = run(model, x, y, threat, seed=5, n_queries=200)
    c = run(model, x, y, threat, seed=6, n_queries=200)
    assert torch.equal(a.x_adv, b.x_adv) and a.info == b.info
    assert not torch.equal(a.x_adv, c.x_adv)
