"""APGD-T (targeted DLR, AutoAttack's standard version): a closed-form case where only
the targeted attack succeeds, the reference's target order, early exit across targets,
class-count checks, applicability, rejection and determinism."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gauntlet.attacks.apgd import target_classes
from gauntlet.attacks.base import defense_facts
from gauntlet.attacks.losses import TARGETED_LOSSES
from gauntlet.attacks.registry import make_attack
from gauntlet.benchmark.threats import ThreatModel
from gauntlet.defenses.pipeline import Defense, Step
from tests.linear import exact_distance, linear_problem, still_correct
from tests.dummies import RejectLowConfidence, run_attack as run

pytestmark = pytest.mark.usefixtures("one_thread")


class DecoyLinear(nn.Module):
    """z = W(x − x0) + z0 on (N, 1, 8, 8) inputs (d = 64), x0 = 0.5, true class 0.

    z0 = (0, −0.8, −6, −100, …), w_1 − w_0 = 0.1·1, w_2 − w_0 = −1·1 (w_0 = 0 and the
    other rows 0). With s = Σ_i (x − x0)_i, |s| ≤ 64ε = 6.4 at ε = 0.1:

    * class 1 is a decoy: z_0 − z_1 = 0.8 − 0.1·s ≥ 0.16 > 0 on the whole ball;
    * class 2 is reachable: z_0 − z_2 = 6 + s = −0.4 < 0 at the vertex s = −6.4;
    * the other classes are 100 below and out of reach.

    Every gradient is a multiple of the all-ones vector, so sign steps move s. The CE
    gradient is (0.1·p_1 − p_2)·1, positive for s > −2.63, and the untargeted DLR
    −(0.8 − 0.1s)/(6 + s) has derivative 1.4/(6 + s)² > 0: from every start APGD draws
    (|s| ≲ 2, the sum of 64 coordinates on the ε-sphere) both climb to the class-1 vertex,
    a local maximum of the loss that is no adversarial example. The targeted DLR with
    target class 2 (the 3rd largest clean logit: APGD-T's 2nd target),
    −(6 + s)/(z_π1 − (z_π3 + z_π4)/2), decreases in s and reaches the class-2 vertex.
    """

    def __init__(self) -> None:
        super().__init__()
        w = torch.zeros(10, 64)
        w[1], w[2] = 0.1, -1.0
        self.register_buffer("w", w)
        self.register_buffer("z0", torch.tensor([0.0, -0.8, -6.0] + [-100.0] * 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - 0.5) @ self.w.t() + self.z0


@pytest.mark.parametrize("seed", [0, 1])
def test_targeted_apgd_breaks_what_untargeted_apgd_misses(seed):
    model = DecoyLinear()
    x, y = torch.full((8, 1, 8, 8), 0.5), torch.zeros(8, dtype=torch.long)
    threat = ThreatModel("linf", 0.1)
    # the closed form: the decoy vertex keeps class 0, the opposite vertex is class 2
    assert still_correct(model, x + 0.1, y).all()
    assert (model(x - 0.1).argmax(1) == 2).all()
    out = {}
    for attack_id in ("apgd-ce", "apgd-dlr", "apgd-t"):
        res = run(attack_id, model, x, y, threat, seed=seed)
        threat.verify(res.x_adv, x)
        out[attack_id] = res
    assert still_correct(model, out["apgd-ce"].x_adv, y).all()
    assert still_correct(model, out["apgd-dlr"].x_adv, y).all()
    assert not still_correct(model, out["apgd-t"].x_adv, y).any()
    # the 1st target (the decoy) breaks nothing, the 2nd breaks all, and the attack
    # stops there: the remaining 7 targets have nothing left to attack
    info = out["apgd-t"].info
    assert info["broken_per_target"] == [0, 8]
    assert info["targets_run"] == 2 and info["target_classes"] == 9
    assert info["zero_grad_fraction"] == 0.0


def test_target_order_is_the_references():
    # reference (APGDAttack_targeted.perturb): the target of run t = 2, …, 10 is
    # logits.sort(dim=1)[1][:, -t], the class with the t-th largest clean logit
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(0))
    y = logits.argmax(1)
    ref = torch.stack([logits.sort(dim=1)[1][:, -t] for t in range(2, 11)], 1)
    assert torch.equal(target_classes(logits, y, 9), ref)
    # a misclassified example never gets its true class as a target
    wrong = (y + 1) % 10
    assert not (target_classes(logits, wrong, 9) == wrong[:, None]).any()


def _spy_targets(monkeypatch) -> list[torch.Tensor]:
    """Record the target tensor of every targeted-loss call (of the examples the attack
    passes: no padding of small passes, gauntlet.attacks.adaptive.MIN_ROWS_PER_PASS)."""
    monkeypatch.setattr("gauntlet.attacks.adaptive.MIN_ROWS_PER_PASS", 0)
    seen: list[torch.Tensor] = []
    original = TARGETED_LOSSES["dlr-targeted"]

    def spy(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(target.clone())
        return original(logits, y, target)

    monkeypatch.setitem(TARGETED_LOSSES, "dlr-targeted", spy)
    return seen


def _runs(seen: list[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive distinct target tensors: one per target run."""
    out: list[torch.Tensor] = []
    for t in seen:
        if not out or len(t) != len(out[-1]) or not torch.equal(t, out[-1]):
            out.append(t)
    return out


def test_attack_runs_the_targets_in_the_references_order(monkeypatch):
    model, x, y = linear_problem(12, num_classes=10)
    seen = _spy_targets(monkeypatch)
    res = run("apgd-t", model, x, y, ThreatModel("linf", 1e-6), steps=3)  # breaks nothing
    with torch.no_grad():
        logits = model(x)
    ref = [logits.sort(dim=1)[1][:, -t] for t in range(2, 11)]
    runs = _runs(seen)
    assert len(runs) == 9 and all(torch.equal(a, b) for a, b in zip(runs, ref))
    assert len(seen) == 9 * (1 + 3)  # start + 3 iterations per target
    assert res.info["targets_run"] == 9 and res.info["broken_per_target"] == [0] * 9


def test_broken_examples_are_never_attacked_again(monkeypatch):
    """Deterministic defense: an example misclassified at the clean point is never
    attacked, and one broken on target 2 is not attacked on target 3."""
    model = DecoyLinear()
    x = torch.full((4, 1, 8, 8), 0.5)
    x[3] -= 0.1  # the class-2 vertex: misclassified from the start
    y = torch.zeros(4, dtype=torch.long)
    assert not still_correct(model, x[3:], y[3:]).any()
    seen = _spy_targets(monkeypatch)
    res = run("apgd-t", model, x, y, ThreatModel("linf", 0.1))
    assert max(len(t) for t in seen) == 3  # example 3 never reaches the loss
    assert res.info["broken_per_target"] == [0, 3] and res.info["targets_run"] == 2
    runs = _runs(seen)
    assert torch.equal(runs[0], torch.ones(3, dtype=torch.long))  # 2nd largest clean logit
    assert torch.equal(runs[-1], torch.full((len(runs[-1]),), 2))  # 3rd: class 2
    # the 2nd target's first step (2ε along the sign) lands on the class-2 vertex: the
    # run ends there (start + 1 iteration) instead of spending its 100 iterations
    assert [len(t) for t in seen if bool((t == 2).all())] == [3, 3]


def test_needs_four_classes_and_caps_the_targets():
    threat = ThreatModel("linf", 0.05)
    model, x, y = linear_problem(4, num_classes=3)
    with pytest.raises(ValueError, match="4 classes"):
        run("apgd-t", model, x, y, threat)
    model, x, y = linear_problem(4, num_classes=4)
    res = run("apgd-t", model, x, y, threat, steps=5)
    assert res.info["target_classes"] == 3
    with pytest.raises(ValueError, match="n_target_classes"):
        run("apgd-t", model, x, y, threat, n_target_classes=0)


class Noise(Step):
    """Adds fresh Gaussian noise on each call (a randomized defense)."""

    randomized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.randn_like(x)


def test_left_out_against_randomized_defenses():
    cls = type(make_attack("apgd-t"))
    assert cls.adaptive and cls.deterministic_only
    facts = {"randomized": True, "differentiable": True, "rejects": False, "reparameterization": False}
    reason = cls.not_applicable(facts)
    assert reason and "rand" in reason
    assert cls.not_applicable({**facts, "randomized": False}) is None
    assert cls.not_applicable({}) is not None  # randomness unknown: left out
    model, x, y = linear_problem(6, num_classes=4)
    assert make_attack("apgd-t").applies_to(Defense(model))
    randomized = Defense(model, steps=[Noise()])
    assert defense_facts(randomized)["randomized"] and not make_attack("apgd-t").applies_to(randomized)
    # forced anyway, it still runs with EOT and stays in the threat model
    torch.manual_seed(0)
    threat = ThreatModel("linf", 0.05)
    res = run("apgd-t", randomized, x, y, threat, steps=4, n_target_classes=2)
    threat.verify(res.x_adv, x)
    assert res.info["eot"] == 10 and res.info["targets_run"] == 2


def test_rejecting_defense_targets_real_classes_and_breaks_are_not_rejections(monkeypatch):
    model, x, y = linear_problem(60, num_classes=4, seed=2)
    defense = Defense(RejectLowConfidence(model), rejects=True)
    dist = exact_distance(model, x, y, "linf")
    threat = ThreatModel("linf", float(dist.median()))
    seen = _spy_targets(monkeypatch)
    res = run("apgd-t", defense, x, y, threat)
    threat.verify(res.x_adv, x)
    assert res.info["target_classes"] == 3  # 4 real classes: the reject logit is no target
    assert all(bool((t < 4).all()) for t in seen)
    with torch.no_grad():
        pred = defense(res.x_adv).argmax(1)
    broken = pred != y
    assert (pred[broken] < 4).all()  # a success is a wrong real class, never "reject"
    assert broken.any()
    assert int(broken.sum()) <= int((dist <= threat.radius(x[0].numel())).sum())
