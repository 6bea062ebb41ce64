"""APGD-CE / APGD-DLR (and APGD-T, more in tests/test_apgd_t.py): closed-form robust
accuracy on linear models, strength against PGD on a small trained model, threat-model
validity, ε = ∞, determinism."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gauntlet.attacks.apgd import checkpoint_intervals
from gauntlet.benchmark.threats import ThreatModel
from gauntlet.defenses.pipeline import Defense, Step
from tests.linear import exact_distance, linear_problem, still_correct
from tests.dummies import RejectLowConfidence, run_attack as run


def threat_at_median(dist: torch.Tensor, norm: str, d: int) -> ThreatModel:
    """A threat whose raw radius is the median exact distance (half the points break)."""
    raw = float(dist.median())
    return ThreatModel(norm, raw if norm == "linf" else raw / math.sqrt(d))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020, §3.2)
    assert checkpoint_intervals(100) == [22, 19, 16, 13, 10, 7, 6, 6]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("attack_id,num_classes",
                         [("apgd-ce", 2), ("apgd-ce", 3), ("apgd-dlr", 3), ("apgd-t", 4)])
def test_apgd_reaches_the_exact_robust_accuracy_of_a_linear_model(attack_id, num_classes, norm):
    model, x, y = linear_problem(120, num_classes=num_classes)
    dist = exact_distance(model, x, y, norm)
    threat = threat_at_median(dist, norm, x[0].numel())
    r = threat.radius(x[0].numel())
    res = run(attack_id, model, x, y, threat)
    threat.verify(res.x_adv, x)
    # inputs lie in [0.3, 0.7] and r < 0.3, so the box never binds: the exact answer is
    # "broken iff distance <= r". Points within 1% of r are ties either way.
    clear = ((dist / r - 1).abs() > 0.01)
    robust = still_correct(model, res.x_adv, y)
    assert torch.equal(robust[clear], (dist > r)[clear])
    assert 0.3 < float(robust.float().mean()) < 0.7


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_dlr_at_least_as_strong_as_ce_and_never_below_exact(norm):
    model, x, y = linear_problem(120, num_classes=4, seed=1)
    dist = exact_distance(model, x, y, norm)
    threat = threat_at_median(dist, norm, x[0].numel())
    exact = float((dist > threat.radius(x[0].numel())).double().mean())
    acc = {a: float(still_correct(model, run(a, model, x, y, threat).x_adv, y).double().mean())
           for a in ("apgd-ce", "apgd-dlr")}
    assert exact - 1e-9 <= acc["apgd-dlr"] <= acc["apgd-ce"] + 1 / len(x)


def test_dlr_needs_three_classes():
    model, x, y = linear_problem(4, num_classes=2)
    with pytest.raises(ValueError, match="3 classes"):
        run("apgd-dlr", model, x, y, ThreatModel("linf", 0.1))


@pytest.fixture(scope="module")
def trained_mlp(mnist_test_slice):
    """A 784-64-10 MLP trained for 3 epochs on mnist-embedded's train split (~98% train
    accuracy), with the conftest's 100 evaluation examples."""
    from gauntlet.benchmark.datasets import get_dataset

    x, y = get_dataset("mnist-embedded").split("train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(x), generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    xt, yt = mnist_test_slice
    return model, xt, yt


def test_apgd_ce_at_least_as_strong_as_pgd_on_a_trained_model(trained_mlp):
    model, x, y = trained_mlp
    assert float(still_correct(model, x, y).float().mean()) > 0.8
    threat = ThreatModel("linf", 0.1)
    acc = {}
    for attack_id in ("pgd", "apgd-ce"):
        res = run(attack_id, model, x, y, threat)
        threat.verify(res.x_adv, x)
        acc[attack_id] = float(still_correct(model, res.x_adv, y).float().mean())
    assert acc["apgd-ce"] <= acc["pgd"]
    assert acc["apgd-ce"] < 0.5  # the attack does real work at this ε


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_unbounded_threat_breaks_everything(norm):
    model, x, y = linear_problem(20, num_classes=3)
    threat = ThreatModel(norm, math.inf)
    res = run("apgd-ce", model, x, y, threat)
    threat.verify(res.x_adv, x)
    assert not still_correct(model, res.x_adv, y).any()


@pytest.mark.parametrize("attack_id, classes", [("apgd-dlr", 3), ("apgd-t", 5)])
def test_same_seed_same_output(attack_id, classes):
    model, x, y = linear_problem(30, num_classes=classes)
    threat = ThreatModel("l2", 0.02)
    a = run(attack_id, model, x, y, threat, seed=3, steps=20)
    b = run(attack_id, model, x, y, threat, seed=3, steps=20)
    assert torch.equal(a.x_adv, b.x_adv)
    assert a.info == b.info


class Noise(Step):
    """Adds fresh Gaussian noise on each call (a randomized defense)."""

    randomized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.randn_like(x)


def test_randomized_defense_uses_eot_and_returns_valid_points():
    model, x, y = linear_problem(16, num_classes=3)
    defense = Defense(model, steps=[Noise()])
    threat = ThreatModel("linf", 0.05)
    torch.manual_seed(0)  # the defense's own noise; the attack's draws use ctx.generator
    res = run("apgd-ce", defense, x, y, threat, steps=10)
    threat.verify(res.x_adv, x)
    assert res.info["eot"] == 10


def test_rejecting_defense_breaks_are_real_and_not_rejections():
    model, x, y = linear_problem(60, num_classes=3, seed=2)
    defense = Defense(RejectLowConfidence(model), rejects=True)
    dist = exact_distance(model, x, y, "linf")
    threat = threat_at_median(dist, "linf", x[0].numel())
    for attack_id in ("apgd-ce", "apgd-dlr"):
        res = run(attack_id, defense, x, y, threat)
        threat.verify(res.x_adv, x)
        with torch.no_grad():
            pred = defense(res.x_adv).argmax(1)
        broken = pred != y
        assert (pred[broken] < 3).all()  # a success is a wrong real class, never "reject"
        assert broken.any()
        # rejection only makes breaks harder: never more than the plain linear model's
        assert int(broken.sum()) <= int((dist <= threat.radius(x[0].numel())).sum())
