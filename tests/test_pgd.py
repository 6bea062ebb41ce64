"""PGD and the adaptive view: closed-form robust accuracy on a linear model, EOT averaging,
BPDA's exact forward, the channels-last fallback and the CPU pass splitting."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gauntlet.attacks.adaptive as adaptive
from gauntlet.attacks.adaptive import AdaptiveView, evaluate
from gauntlet.attacks.pgd import pgd
from gauntlet.benchmark.threats import ThreatModel
from gauntlet.defenses.models import LinearClassifier, SmallCNN
from gauntlet.defenses.pipeline import Defense, Step
from gauntlet.defenses.preprocess import BitDepth

SIDE = 8


def binary_linear(n: int = 200, seed: int = 0):
    """A random 2-class linear model on 8×8 inputs in [0.3, 0.7], labelled by the model."""
    g = torch.Generator().manual_seed(seed)
    model = LinearClassifier(SIDE * SIDE, 2)
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn(2, SIDE * SIDE, generator=g))
        model.linear.bias.copy_(-0.5 * model.linear.weight.sum(1))  # margins centred near 0
    x = 0.3 + 0.4 * torch.rand(n, 1, SIDE, SIDE, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def closed_form_robust(model: LinearClassifier, x: torch.Tensor, y: torch.Tensor,
                       threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(robust, clear): robust iff the margin |w·x+b| exceeds r·‖w_y − w_other‖_q (q the dual
    norm: ℓ1 for ℓ∞, ℓ2 for ℓ2; box inactive since x ± r stays in [0, 1]); ``clear`` drops
    the examples within 2% of the boundary, where float rounding decides."""
    w, b = model.linear.weight.detach().double(), model.linear.bias.detach().double()
    z = x.flatten(1).double() @ w.t() + b
    m = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, (1 - y)[:, None]).squeeze(1)
    q = 1 if threat.norm == "linf" else 2
    need = threat.radius(SIDE * SIDE) * (w[y] - w[1 - y]).norm(p=q, dim=1)
    return m > need, (m - need).abs() > 0.02 * need


@pytest.mark.parametrize("threat,random_start", [(ThreatModel("linf", 0.02), True),
                                                 (ThreatModel("l2", 0.02), False)])
def test_pgd_reaches_the_exact_robust_accuracy_of_a_linear_model(threat, random_start):
    model, x, y = binary_linear()
    assert threat.radius(SIDE * SIDE) < 0.3  # the box [0, 1] never binds
    robust, clear = closed_form_robust(model, x, y, threat)
    assert 0 < int(robust[clear].sum()) < int(clear.sum())  # both outcomes occur
    x_adv, info = pgd(AdaptiveView(Defense(model)), x, y, threat, steps=40, step_size=2.5 / 40,
                      restarts=1, random_start=random_start, loss="ce",
                      generator=torch.Generator().manual_seed(0))
    threat.verify(x_adv, x)
    with torch.no_grad():
        survived = model(x_adv).argmax(1) == y
    assert torch.equal(survived[clear], robust[clear])
    assert info["zero_grad_fraction"] == 0.0


def test_pgd_without_early_stop_gives_the_same_robust_set():
    model, x, y = binary_linear(seed=1)
    threat = ThreatModel("linf", 0.02)
    robust, clear = closed_form_robust(model, x, y, threat)
    x_adv, _ = pgd(AdaptiveView(Defense(model)), x, y, threat, steps=40, step_size=2.5 / 40, restarts=1,
                   random_start=True, loss="ce", generator=torch.Generator().manual_seed(0),
                   early_stop=False)
    with torch.no_grad():
        survived = model(x_adv).argmax(1) == y
    assert torch.equal(survived[clear], robust[clear])


def test_zero_gradient_fraction_of_a_gradient_free_step():
    model, x, y = binary_linear(n=20)
    defense = Defense(model, steps=[BitDepth(3)])  # round(): zero gradient almost everywhere
    _, info = pgd(AdaptiveView(defense, bpda=False), x, y, ThreatModel("linf", 0.02), steps=2,
                  step_size=0.5, restarts=1, random_start=True, loss="ce",
                  generator=torch.Generator().manual_seed(0))
    assert info["zero_grad_fraction"] == 1.0
    _, info = pgd(AdaptiveView(defense, bpda=True), x, y, ThreatModel("linf", 0.02), steps=2,
                  step_size=0.5, restarts=1, random_start=True, loss="ce",
                  generator=torch.Generator().manual_seed(0))
    assert info["zero_grad_fraction"] == 0.0


class ScriptedShift(Step):
    """A randomized step whose "random" shifts are read, in order, from a fixed table, so
    one batched call of k·N rows and k calls of N rows see exactly the same draws."""

    randomized = True

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.used = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = self.table[self.used:self.used + len(x)]
        self.used += len(x)
        return x + shift


def test_eot_gradient_is_the_mean_of_single_draw_gradients(monkeypatch):
    monkeypatch.setattr(adaptive, "CPU_ROWS_PER_PASS", None)  # the table is read in row order:
    monkeypatch.setattr(adaptive, "MIN_ROWS_PER_PASS", 0)  # no split passes, no padded rows
    torch.manual_seed(0)
    k, n = 5, 6
    model = SmallCNN(image_size=SIDE, width=4, hidden=16)
    x, y = torch.rand(n, 1, SIDE, SIDE), torch.randint(0, 10, (n,))
    table = 0.3 * torch.randn(k * n, 1, SIDE, SIDE)
    step = ScriptedShift(table)
    defense = Defense(model, steps=[step]).eval()
    batched = evaluate(AdaptiveView(defense, eot=k), x, y, "ce")
    step.used = 0
    singles = [evaluate(AdaptiveView(defense, eot=1), x, y, "ce") for _ in range(k)]
    torch.testing.assert_close(batched.grad, torch.stack([s.grad for s in singles]).mean(0))
    torch.testing.assert_close(batched.loss, torch.stack([s.loss for s in singles]).mean(0))
    torch.testing.assert_close(batched.margin, torch.stack([s.margin for s in singles]).mean(0))
    distinct = torch.stack([s.grad for s in singles]).flatten(1)
    assert (distinct - distinct[0]).abs().amax() > 0  # the draws do differ


def test_bpda_view_forward_is_the_exact_defense_and_its_gradient_straight_through():
    torch.manual_seed(0)
    model = SmallCNN(image_size=SIDE, width=4, hidden=16).eval()
    defense = Defense(model, steps=[BitDepth(2)])
    x, y = torch.rand(7, 1, SIDE, SIDE), torch.randint(0, 10, (7,))
    view = AdaptiveView(defense, bpda=True)
    with torch.no_grad():
        torch.testing.assert_close(view(x)[0], defense(x))
    ev = evaluate(view, x, y, "ce")
    z = defense.preprocess(x).requires_grad_(True)  # identity approximation: ∂L/∂x = ∂L/∂g(x)
    expected = torch.autograd.grad(nn.functional.cross_entropy(model(z), y, reduction="sum"), z)[0]
    torch.testing.assert_close(ev.grad, expected)


class FlattensWithView(nn.Module):
    """A classifier that calls ``.view`` on a conv activation: fails on channels-last input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * SIDE * SIDE, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


def test_view_falls_back_when_the_classifier_rejects_channels_last():
    torch.manual_seed(0)
    defense = Defense(FlattensWithView())
    x, y = torch.rand(4, 1, SIDE, SIDE), torch.randint(0, 10, (4,))
    view = AdaptiveView(defense)
    ev = evaluate(view, x, y, "ce")
    assert view.channels_last is False
    with torch.no_grad():
        torch.testing.assert_close(ev.logits, defense(x))


def test_channels_last_view_matches_the_defense():
    torch.manual_seed(0)
    defense = Defense(SmallCNN(image_size=SIDE, width=4, hidden=16).eval())
    x, y = torch.rand(5, 1, SIDE, SIDE), torch.randint(0, 10, (5,))
    view = AdaptiveView(defense)
    ev = evaluate(view, x, y, "ce")
    assert view.channels_last is True
    assert ev.grad.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(ev.logits, defense(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eot", [1, 3])
def test_split_passes_give_the_same_evaluation(monkeypatch, eot):
    torch.manual_seed(0)
    defense = Defense(SmallCNN(image_size=SIDE, width=4, hidden=16).eval())
    x, y = torch.rand(11, 1, SIDE, SIDE), torch.randint(0, 10, (11,))
    view = AdaptiveView(defense, eot=eot)  # deterministic: eot collapses to 1
    monkeypatch.setattr(adaptive, "CPU_ROWS_PER_PASS", None)
    whole = evaluate(view, x, y, "dlr")
    monkeypatch.setattr(adaptive, "CPU_ROWS_PER_PASS", 4)
    split = evaluate(view, x, y, "dlr")
    for field in ("loss", "grad", "margin", "logits"):
        torch.testing.assert_close(getattr(split, field), getattr(whole, field), rtol=1e-5, atol=1e-6)
    assert evaluate(view, x, y, "ce", grad=False).grad is None
    assert not math.isnan(float(split.loss.sum()))
