"""SPSA, and the gradient-free suite against the exact robust set of a masked linear model.

The closed form (tests/linear_exact.py) is checked first against the dual-norm formula
and random feasible points; then a linear classifier whose forward reads ``x.detach()``
(every input gradient is zero, so gradient attacks see nothing) is attacked by the
gradient-free attacks that run against such a defense, and the per-example worst case is
compared with the exact robust accuracy.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gauntlet.attacks.adaptive import AdaptiveView, evaluate
from gauntlet.attacks.registry import make_attack
from gauntlet.benchmark.threats import ThreatModel
from gauntlet.defenses.pipeline import Defense
from tests.linear import exact_distance, linear_problem, still_correct
from tests.linear_exact import exact_robustness
from tests.dummies import OpaqueIdentity, RejectLowConfidence, run_attack

pytestmark = pytest.mark.usefixtures("one_thread")

#: The gradient-free attacks that run against a deterministic defense with masked
#: gradients, minus ``transfer``, which needs an undefended surrogate model (with the
#: exact model as surrogate it would be PGD on the true weights, not a black-box test).
GRADIENT_FREE_SUITE = ("square", "random", "spsa")

FACTS = {"randomized": False, "differentiable": True, "rejects": False, "abstains": False,
         "zero_gradients": False, "reparameterization": False}


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, seed: int = 0, **params):
    return run_attack("spsa", model, x, y, threat, seed=seed, **params)


class MaskedLinear(nn.Module):
    """z = W·flatten(x) + b computed from ``x.detach()``: every input gradient is zero."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", bias.float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().flatten(1) @ self.weight.t() + self.bias


def ridge_mnist_linear(per_class: int = 100, ridge: float = 100.0) -> MaskedLinear:
    """Ridge least squares onto one-hot labels, fit on the first ``per_class`` training
    images of each mnist-embedded class (its training split is sorted by class, so its
    first 1,000 rows hold three classes only). Deterministic: a float64 normal equation.
    Nearest-centroid weights would need no fit, but their margins are so wide that
    nothing is breakable at ℓ2 0.005 (robust = clean), which would make the test vacuous."""
    from gauntlet.benchmark.datasets import get_dataset

    x, y = get_dataset("mnist-embedded").split("train")
    sel = torch.cat([(y == k).nonzero().flatten()[:per_class] for k in range(10)])
    a = torch.cat([x[sel].flatten(1).double(), torch.ones(len(sel), 1, dtype=torch.float64)], 1)
    target = nn.functional.one_hot(y[sel], 10).double()
    sol = torch.linalg.solve(a.t() @ a + ridge * torch.eye(a.shape[1], dtype=torch.float64), a.t() @ target)
    return MaskedLinear(sol[:-1].t(), sol[-1])


# -- the closed form -------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_closed_form_is_the_dual_norm_formula_when_the_box_is_slack(norm):
    model, x, y = linear_problem(30, num_classes=4, seed=3)
    w, b = model.linear.weight, model.linear.bias
    d = x[0].numel()
    eps = 0.05 if norm == "linf" else 0.2 / math.sqrt(d)  # r ≤ 0.2 < 0.3: inside [0, 1]
    ex = exact_robustness(w, b, x, y, ThreatModel(norm, eps))
    r = ThreatModel(norm, eps).radius(d)
    dist = exact_distance(model, x, y, norm)
    assert ex.correct.all()
    assert torch.equal(ex.broken, dist <= r)  # no tie at these random values
    z = x.flatten(1).double() @ w.double().t() + b.double()
    c = w.double()[y].unsqueeze(1) - w.double().unsqueeze(0)
    want = (z.gather(1, y[:, None]) - z) - r * c.norm(p=1 if norm == "linf" else 2, dim=-1)
    own = nn.functional.one_hot(y, 4).bool()
    assert torch.allclose(ex.min_margin[~own], want[~own], rtol=0, atol=1e-9)


def test_l2_closed_form_with_an_active_box_beats_every_feasible_point():
    g = torch.Generator().manual_seed(0)
    d, n = 12, 8
    w = torch.randn(3, d, generator=g, dtype=torch.float64)
    b = torch.zeros(3, dtype=torch.float64)
    x = torch.rand(n, d, generator=g, dtype=torch.float64) ** 3  # many values near 0: the box binds
    y = (x @ w.t()).argmax(1)
    threat = ThreatModel("l2", 0.4 / math.sqrt(d))
    ex = exact_robustness(w, b, x, y, threat)
    other = ~nn.functional.one_hot(y, 3).bool()
    lower, upper = ex.min_margin[other], ex.min_margin_upper[other]
    assert (upper - lower).abs().max() < 1e-12  # the bisection bracket is closed
    # 20,000 random feasible points per example never go below the optimum
    delta = threat.uniform_delta(x.repeat(2000, 1), g)
    pts = threat.project(x.repeat(2000, 1) + delta, x.repeat(2000, 1)).view(2000, n, d)
    z = pts @ w.t()
    sampled = (z.gather(2, y.view(1, n, 1).expand(2000, n, 1)) - z).amin(0)  # (n, 3)
    assert (sampled[other] >= lower - 1e-9).all()
    # a huge radius leaves only the box: the optimum is the box corner (the ℓ∞ program at ε = 1)
    big = exact_robustness(w, b, x, y, ThreatModel("l2", 10.0))
    box = exact_robustness(w, b, x, y, ThreatModel("linf", 1.0))
    assert torch.allclose(big.min_margin[other], box.min_margin[other], rtol=0, atol=1e-12)


def test_ties_follow_argmax_first_index():
    # z_0 = 0.5 and z_1 = x on one input: at x' = 0.5 the two logits tie exactly
    x = torch.ones(1, 1)
    threat = ThreatModel("linf", 0.5)
    low = exact_robustness(torch.tensor([[0.0], [1.0]]), torch.tensor([0.5, 0.0]), x,
                           torch.tensor([1]), threat)
    high = exact_robustness(torch.tensor([[1.0], [0.0]]), torch.tensor([0.0, 0.5]), x,
                            torch.tensor([0]), threat)
    assert low.min_margin[0, 0] == 0 and high.min_margin[0, 1] == 0
    assert low.broken.item() and not high.broken.item()  # the tie goes to the lower index
    assert low.borderline.item() and high.borderline.item()
    tie = torch.tensor([[0.5, 0.5]])
    assert tie.argmax(1).item() == 0  # what the scorer does at that point


# -- the gradient-free suite against the exact robust set --------------------------------

def _suite_against_exact(model: MaskedLinear, x: torch.Tensor, y: torch.Tensor,
                         threat: ThreatModel, seed: int = 0) -> dict[str, float]:
    ex = exact_robustness(model.weight, model.bias, x, y, threat)
    robust = ex.correct.clone()
    without_spsa = ex.correct.clone()
    per_attack: dict[str, float] = {}
    for attack_id in GRADIENT_FREE_SUITE:
        res = run_attack(attack_id, model, x, y, threat, seed=seed)
        threat.verify(res.x_adv, x)  # (a)
        ok = still_correct(model, res.x_adv, y)
        false_break = ~ok & ex.robust & ~ex.borderline
        assert not false_break.any(), \
            f"{attack_id} broke provably robust examples {false_break.nonzero().flatten().tolist()}"  # (b)
        robust &= ok
        per_attack[attack_id] = float(ok.double().mean())
        if attack_id != "spsa":
            without_spsa &= ok
    out = {"exact": ex.robust_accuracy, "suite": float(robust.double().mean()),
           "without_spsa": float(without_spsa.double().mean()), "borderline": int(ex.borderline.sum())}
    print(f"{threat.id} n={len(x)}: exact robust accuracy {out['exact']:.2f}, gradient-free suite "
          f"{out['suite']:.2f}, without spsa {out['without_spsa']:.2f}, borderline {out['borderline']}; "
          f"per attack {per_attack}")  # (d)
    assert out["suite"] - out["exact"] <= 0.02 + 1e-9  # (c)
    return out


def _masked_problem(mnist_test_slice, n: int):
    model = ridge_mnist_linear()
    x, y = mnist_test_slice
    x, y = x[:n], y[:n]
    grad = evaluate(AdaptiveView(model), x, y, "ce").grad
    assert grad.abs().max() == 0  # the premise: gradient attacks see nothing
    return model, x, y


@pytest.mark.parametrize("threat", [ThreatModel("l2", 0.005), ThreatModel("linf", 0.1)], ids=str)
def test_gradient_free_suite_reaches_the_exact_robust_accuracy(threat, mnist_test_slice):
    # ~20 s on one core for both threats (Square's 5,000 queries on the robust examples
    # dominate), so the full 100 examples run in CI
    model, x, y = _masked_problem(mnist_test_slice, 100)
    out = _suite_against_exact(model, x, y, threat)
    assert out["exact"] < float(still_correct(model, x, y).double().mean())  # something to break


# -- applicability, validity, determinism ------------------------------------------------

def test_runs_only_where_gradients_are_masked_and_the_defense_is_deterministic():
    cls = type(make_attack("spsa"))
    assert cls.gradient_free and cls.needs_masked_gradients and cls.deterministic_only
    assert "masked" in cls.not_applicable(FACTS)
    assert cls.not_applicable({**FACTS, "differentiable": False}) is None
    assert cls.not_applicable({**FACTS, "zero_gradients": True}) is None
    assert cls.not_applicable({**FACTS, "zero_gradients": True, "randomized": True})
    assert cls.traits()["needs_masked_gradients"] is True


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_seed_same_output(norm):
    model, x, y = linear_problem(6, num_classes=3, side=5)  # 25 inputs: rows of 3·25 signs, not whole bytes
    threat = ThreatModel(norm, 0.03)
    a = run(model, x, y, threat, seed=3, iterations=5, samples=6)
    b = run(model, x, y, threat, seed=3, iterations=5, samples=6)
    c = run(model, x, y, threat, seed=4, iterations=5, samples=6)
    assert torch.equal(a.x_adv, b.x_adv) and a.info == b.info
    assert not torch.equal(a.x_adv, c.x_adv)
    small = run(model, x, y, threat, seed=3, iterations=5, samples=6, max_rows=2)  # one example per batch
    # batching is memory only: the same signs, the same points up to the float rounding
    # of differently sized matrix products
    assert torch.allclose(a.x_adv, small.x_adv, rtol=0, atol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_radius_returns_the_input_and_input_is_not_mutated(norm):
    model, x, y = linear_problem(5, num_classes=3)
    before = x.clone()
    res = run(model, x, y, ThreatModel(norm, 0.0))
    assert torch.equal(res.x_adv, x) and res.x_adv is not x
    assert res.info["queries"] == [0] * 5
    res = run(model, x, y, ThreatModel(norm, 0.05), iterations=3)
    assert torch.equal(x, before)
    assert not torch.equal(res.x_adv, x)


def test_query_count_and_early_stop():
    model, x, y = linear_problem(6, num_classes=3)
    y = y.clone()
    y[0] = (y[0] + 1) % 3  # misclassified from the start: the starting point is its only query
    res = run(model, x, y, ThreatModel("linf", 0.001), iterations=4, samples=8)
    q = res.info["queries"]
    assert q[0] == 1 and all(v == 1 + 4 * 9 for v in q[1:])  # start + (8 probes + 1 check) per step
    assert res.info["iterations_run"] == 4


def test_estimate_is_the_gradient_on_a_linear_model():
    # finite differences of a linear function are exact, so ĝ = (1/n) Σ_k (c·v_k) v_k
    # concentrates on c: E[v vᵀ] = I; with 4096 pairs in 16 dimensions the cosine is ~1
    from gauntlet.attacks.spsa import spsa_gradient

    model, x, y = linear_problem(3, num_classes=2, side=4)
    g = spsa_gradient(AdaptiveView(model), x, y, pairs=4096, delta=0.01, max_rows=8192,
                      generator=torch.Generator().manual_seed(0))
    w = model.linear.weight.detach()
    sign = torch.where(y == 0, 1.0, -1.0).view(-1, 1)
    true = sign * (w[0] - w[1])
    cos = nn.functional.cosine_similarity(g.flatten(1), true, dim=1)
    assert (cos > 0.95).all()


def test_rejects_bad_parameters():
    model, x, y = linear_problem(2)
    with pytest.raises(ValueError, match="even"):
        run(model, x, y, ThreatModel("linf", 0.1), samples=7)
    with pytest.raises(ValueError, match="iterations"):
        run(model, x, y, ThreatModel("linf", 0.1), iterations=0)
    with pytest.raises(ValueError, match="delta"):
        run(model, x, y, ThreatModel("linf", 0.1), delta=0.0)


def test_rejecting_defense_breaks_are_wrong_classes_never_rejections():
    model, x, y = linear_problem(40, num_classes=3, seed=2)
    defense = Defense(RejectLowConfidence(copy.deepcopy(model)), steps=[OpaqueIdentity()], rejects=True)
    assert make_attack("spsa").applies_to(defense)  # declared non-differentiable
    dist = exact_distance(model, x, y, "linf")
    threat = ThreatModel("linf", float(dist.median()))
    res = run(defense, x, y, threat)
    threat.verify(res.x_adv, x)
    with torch.no_grad():
        pred = defense(res.x_adv).argmax(1)
    broken = pred != y
    assert broken.any()
    assert (pred[broken] < 3).all()  # a success is a wrong real class, never "reject"
    # rejection only makes breaks harder: never more than the plain linear model's
    assert int(broken.sum()) <= int((dist <= threat.eps).sum())
