"""Random sampling, transfer and the reparameterized attack on closed-form models."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gauntlet.attacks.base import AttackContext
from gauntlet.attacks.registry import make_attack, make_attack_unchecked
from gauntlet.benchmark.threats import ThreatModel
from gauntlet.defenses.models import LinearClassifier
from gauntlet.defenses.pipeline import Defense, Step
from tests.dummies import OpaqueIdentity


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_problem(n: int, side: int = 8, seed: int = 0):
    """A random two-class linear model and inputs in [0.3, 0.7] labelled by the model."""
    g = torch.Generator().manual_seed(seed)
    model = LinearClassifier(side * side, 2)
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn(2, side * side, generator=g))
        model.linear.bias.zero_()
    x = 0.3 + 0.4 * torch.rand(n, 1, side, side, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def exact_distance(w_diff: torch.Tensor, margin: torch.Tensor, norm: str) -> torch.Tensor:
    """|margin| / ‖w‖_q with q the dual norm (ℓ1 for ℓ∞, ℓ2 for ℓ2), box ignored."""
    return margin / w_diff.norm(p=1 if norm == "linf" else 2, dim=-1)


def linear_distance(model: LinearClassifier, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    w = model.linear.weight.detach().double()
    diff = w[y] - w[1 - y]
    return exact_distance(diff, (x.flatten(1).double() * diff).sum(1), norm)


def still_correct(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def run(attack_id: str, defense, x, y, threat, seed: int = 0, surrogate=None, **params):
    ctx = AttackContext(generator=torch.Generator().manual_seed(seed), surrogate=surrogate)
    return make_attack_unchecked(attack_id, **params).run(defense, x, y, threat, ctx)


# -- random ----------------------------------------------------------------------------

@pytest.mark.parametrize("norm,eps,frac", [("linf", 0.3, 1 / 20), ("l2", 0.125, 1 / 10)])
def test_random_finds_breaks_far_inside_the_ball_and_only_real_ones(norm, eps, frac):
    model, x, y = linear_problem(80)
    threat = ThreatModel(norm, eps)
    r = threat.radius(x[0].numel())
    res = run("random", model, x, y, threat)
    assert make_attack("random").params.samples >= 100
    threat.verify(res.x_adv, x)
    broken = ~still_correct(model, res.x_adv, y)
    assert res.info["broken_fraction"] == pytest.approx(float(broken.float().mean()))
    dist = linear_distance(model, x, y, norm)
    assert (dist[broken] <= r + 1e-6).all()  # no break beyond the exact distance
    easy = dist < frac * r
    assert easy.sum() >= 5 and broken[easy].all()


def test_random_unbounded_threat_samples_the_box():
    model, x, y = linear_problem(10)
    threat = ThreatModel("linf", math.inf)
    res = run("random", model, x, y, threat, samples=20)
    threat.verify(res.x_adv, x)
    assert (res.x_adv - x).abs().amax() > 0.3  # uniform in [0, 1], not a small ball


def test_random_same_seed_same_output():
    model, x, y = linear_problem(10)
    threat = ThreatModel("l2", 0.05)
    a, b = (run("random", model, x, y, threat, seed=4) for _ in range(2))
    assert torch.equal(a.x_adv, b.x_adv)


# -- transfer --------------------------------------------------------------------------

def test_transfer_from_an_exact_surrogate_reaches_the_exact_robust_accuracy():
    model, x, y = linear_problem(60)
    defense = Defense(model, steps=[OpaqueIdentity()])  # gradients masked, same function
    dist = linear_distance(model, x, y, "linf")
    threat = ThreatModel("linf", float(dist.median()))
    res = run("transfer", defense, x, y, threat, surrogate=copy.deepcopy(model))
    threat.verify(res.x_adv, x)
    robust = still_correct(defense, res.x_adv, y)
    clear = (dist / threat.eps - 1).abs() > 0.01
    assert torch.equal(robust[clear], (dist > threat.eps)[clear])
    assert pytest.approx(res.info["defense_broken_fraction"]) == float((~robust).float().mean())


def test_transfer_keeps_the_clean_point_when_the_transferred_one_is_worse():
    model, x, y = linear_problem(20)
    anti = copy.deepcopy(model)
    with torch.no_grad():
        anti.linear.weight.neg_()  # its adversarial direction raises the true margin
    threat = ThreatModel("linf", 0.05)
    res = run("transfer", model, x, y, threat, surrogate=anti)
    assert torch.equal(res.x_adv, x)
    assert res.info["kept_fraction"] == 0.0


def test_transfer_needs_a_surrogate():
    model, x, y = linear_problem(4)
    with pytest.raises(ValueError, match="surrogate"):
        run("transfer", model, x, y, ThreatModel("linf", 0.1))


def test_transfer_same_seed_same_output():
    model, x, y = linear_problem(10)
    threat = ThreatModel("l2", 0.02)
    a, b = (run("transfer", model, x, y, threat, seed=1, surrogate=model, steps=10) for _ in range(2))
    assert torch.equal(a.x_adv, b.x_adv)


# -- reparam ---------------------------------------------------------------------------

class AffineGenerator(nn.Module):
    """h(z) = c + B z with orthonormal columns B: encode is the exact projection."""

    def __init__(self, basis: torch.Tensor, center: float, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("basis", basis)
        self.center = center
        self.shape = shape

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return (self.center + z @ self.basis.t()).view(-1, *self.shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.center) @ self.basis


class ProjectToRange(Step):
    """Defense-GAN in miniature: project onto the generator's range, no gradient."""

    differentiable = False

    def __init__(self, gen: AffineGenerator) -> None:
        super().__init__()
        self.gen = gen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.gen.generate(self.gen.encode(x))


class GeneratorDefense(Defense):
    def __init__(self, classifier: nn.Module, gen: AffineGenerator) -> None:
        super().__init__(classifier, steps=[ProjectToRange(gen)])
        self.gen = gen

    @property
    def reparameterization(self) -> AffineGenerator:
        return self.gen


def generator_problem(n: int = 40, side: int = 6, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = side * side
    basis = torch.linalg.qr(torch.randn(d, k, generator=g))[0]
    gen = AffineGenerator(basis, 0.5, (1, side, side))
    x = gen.generate(0.15 * torch.randn(4 * n, k, generator=g))
    x = x[((x > 0.2) & (x < 0.8)).flatten(1).all(1)][:n]  # data on the generator's range
    model = LinearClassifier(d, 2)
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn(2, d, generator=g))
        model.linear.bias.copy_(-0.5 * model.linear.weight.sum(1))  # logits = W·(x − c)
        y = model(x).argmax(1)
    return GeneratorDefense(model, gen), model, basis, x, y


def test_reparam_reaches_the_exact_l2_robust_accuracy_of_a_projected_linear_model():
    defense, model, basis, x, y = generator_problem()
    # the defense is linear: logits = W·P(x − c), P = B·Bᵀ, so the minimal ℓ2
    # perturbation is margin / ‖P(w_y − w_other)‖₂, and it lies in the generator's range
    w = model.linear.weight.detach().double()
    diff = w[y] - w[1 - y]
    p_diff = diff @ (basis.double() @ basis.double().t())
    margin = ((x.flatten(1).double() - 0.5) * p_diff).sum(1)
    dist = exact_distance(p_diff, margin, "l2")
    d = x[0].numel()
    threat = ThreatModel("l2", float(dist.median()) / math.sqrt(d))
    r = threat.radius(d)
    assert r < 0.2  # inputs in [0.2, 0.8]: the box never binds
    assert make_attack("pgd").run(defense, x, y, threat, AttackContext(torch.Generator())) \
        .info["zero_grad_fraction"] == 1.0  # the naive attack sees no gradient at all
    res = run("reparam", defense, x, y, threat)
    threat.verify(res.x_adv, x)
    robust = still_correct(defense, res.x_adv, y)
    clear = (dist / r - 1).abs() > 0.02
    assert torch.equal(robust[clear], (dist > r)[clear])


def test_reparam_applies_only_to_defenses_with_a_generator():
    model, x, y = linear_problem(4)
    attack = make_attack("reparam")
    assert not attack.applies_to(Defense(model))
    with pytest.raises(ValueError, match="reparameterization"):
        attack.run(Defense(model), x, y, ThreatModel("linf", 0.1), AttackContext(torch.Generator()))


def test_reparam_is_deterministic_and_valid_in_linf():
    defense, _, _, x, y = generator_problem(n=10)
    threat = ThreatModel("linf", 0.05)
    a, b = (run("reparam", defense, x, y, threat, steps=20) for _ in range(2))
    threat.verify(a.x_adv, x)
    assert torch.equal(a.x_adv, b.x_adv)
