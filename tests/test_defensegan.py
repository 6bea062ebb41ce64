"""Defense-GAN (gauntlet.defenses.defensegan): projection, declarations, reparameterization, recipe,
committed weights, and naive versus adaptive attacks on a few test digits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gauntlet.attacks.adaptive import AdaptiveView, evaluate
from gauntlet.attacks.base import AttackContext
from gauntlet.attacks.registry import make_attack
from gauntlet.benchmark.registry import build_defense, load_submission
from gauntlet.benchmark.scoring import score
from gauntlet.benchmark.threats import get_threat
from gauntlet.benchmark.training import train_submission
from gauntlet.defenses.defensegan import DefenseGAN, DefenseGANModel, GeneratorProjection, project

SUBMISSIONS = Path(__file__).resolve().parents[1] / "submissions"
SUB_ID = "samangouei2018-defensegan"


def _tiny_defense(**args) -> DefenseGAN:
    torch.manual_seed(0)
    model = DefenseGANModel(latent_dim=4, hidden=16)
    defense = DefenseGAN(model, [], **{"iterations": 10, "restarts": 3, "lr": 0.1, **args}).eval()
    defense.requires_grad_(False)
    return defense


@pytest.fixture(scope="module")
def committed() -> DefenseGAN:
    return build_defense(load_submission(SUBMISSIONS / SUB_ID / "manifest.yaml"))


def test_projection_recovers_points_of_the_generator_range(committed) -> None:
    """x = G(z) is reproduced far better than a random image (the argmin is found)."""
    g = committed.steps[0].generator
    torch.manual_seed(0)
    with torch.no_grad():
        on_range = g(torch.randn(16, g.latent_dim))
    noise = torch.rand(16, 1, 28, 28)
    z, err = project(g, on_range, steps=25, restarts=4, lr=0.1)
    _, err_noise = project(g, noise, steps=25, restarts=4, lr=0.1)
    assert z.shape == (16, g.latent_dim) and err.shape == (16,)
    assert not z.requires_grad
    assert err.mean() < 0.1 * err_noise.mean()
    with torch.no_grad():
        assert torch.allclose(err, (g(z) - on_range).pow(2).flatten(1).sum(1), atol=1e-3)


def test_more_restarts_never_hurt_in_expectation(committed, mnist_test_slice) -> None:
    """Keeping the best of R starts (Algorithm 1) lowers the mean error versus R = 1."""
    g = committed.steps[0].generator
    x = mnist_test_slice[0][:20]
    torch.manual_seed(1)
    _, one = project(g, x, steps=10, restarts=1, lr=0.1)
    torch.manual_seed(1)
    _, many = project(g, x, steps=10, restarts=4, lr=0.1)
    assert many.mean() < one.mean()


def test_step_declarations_and_output() -> None:
    defense = _tiny_defense()
    step = defense.steps[0]
    assert isinstance(step, GeneratorProjection)
    assert step.differentiable is False and step.randomized is True
    assert defense.randomized and not defense.differentiable
    x = torch.rand(5, 1, 28, 28, requires_grad=True)
    assert torch.equal(step.approximation(x), x)  # BPDA identity
    with torch.enable_grad():
        out = step(x)
    assert out.shape == x.shape and not out.requires_grad
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(step(x), step(x)), "fresh random starts on every call"
    assert defense(x).shape == (5, 10)


def test_naive_gradient_is_zero_and_bpda_gradient_is_not() -> None:
    defense = _tiny_defense()
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    naive = evaluate(AdaptiveView(defense, bpda=False), x, y)
    bpda = evaluate(AdaptiveView(defense, bpda=True), x, y)
    assert naive.grad.abs().max() == 0
    assert bpda.grad.abs().max() > 0


def test_reparameterization_contract(committed) -> None:
    """generate is differentiable with the input's shape; g(h(z)) ≈ h(z); encode projects."""
    rep = committed.reparameterization
    d = committed.steps[0].generator.latent_dim
    torch.manual_seed(0)
    z = torch.randn(6, d, requires_grad=True)
    x = rep.generate(z)
    assert x.shape == (6, 1, 28, 28)
    torch.autograd.grad(x.sum(), z)  # differentiable in z
    x = x.detach()
    z_star = rep.encode(x)
    assert z_star.shape == (6, d) and not z_star.requires_grad
    with torch.no_grad():
        again = committed.preprocess(x)
    assert (again - x).pow(2).mean() < 0.1 * (torch.rand_like(x) - x).pow(2).mean()
    assert make_attack("reparam").applies_to(committed)


def test_wrapper_rejects_bad_arguments() -> None:
    model = DefenseGANModel(latent_dim=4, hidden=8)
    with pytest.raises(ValueError, match="no steps"):
        DefenseGAN(model, [GeneratorProjection(model.generator, 1, 1, 0.1)])
    with pytest.raises(ValueError):
        DefenseGAN(model, [], iterations=0)
    with pytest.raises(ValueError):
        DefenseGAN(model, [], lr=-1.0)


def test_recipe_trains_every_network_on_a_tiny_budget() -> None:
    sub = load_submission(SUBMISSIONS / SUB_ID / "manifest.yaml")
    torch.manual_seed(0)
    fresh = DefenseGANModel(**sub.manifest.model.args).state_dict()
    model, _ = train_submission(sub, submissions_dir=SUBMISSIONS, write=False,
                                overrides={"vae_epochs": 1, "epochs": 1})
    assert isinstance(model, DefenseGANModel) and not model.training
    state = model.state_dict()
    for prefix in ("generator.", "encoder.", "classifier."):
        assert any(not torch.equal(v, fresh[k]) for k, v in state.items() if k.startswith(prefix)), prefix
    assert all(torch.isfinite(v).all() for v in state.values())


def test_committed_weights_give_reasonable_clean_accuracy(committed, mnist_test_slice) -> None:
    x, y = (t[:50] for t in mnist_test_slice)
    torch.manual_seed(0)
    s = score(committed, x, y, draws=2)
    assert float(s.correct.mean()) >= 0.9
    with torch.no_grad():
        assert float((committed.classifier(x).argmax(1) == y).float().mean()) >= 0.9  # the bare classifier


def _robust(defense, attack_id: str, threat_id: str, x, y) -> float:
    attack = make_attack(attack_id)
    ctx = AttackContext(torch.Generator().manual_seed(0))
    threat = get_threat(threat_id)
    x_adv = attack.run(defense, x, y, threat, ctx).x_adv
    threat.verify(x_adv, x)
    torch.manual_seed(0)
    return float(score(defense, x_adv, y, draws=4).survives.mean())


def test_naive_pgd_fails_where_bpda_breaks_it(committed, mnist_test_slice) -> None:
    """Naive PGD sees zero gradients and leaves accuracy high; BPDA (identity) at ℓ∞ 0.3
    breaks most of the same digits (Athalye et al. 2018, §4.1)."""
    x, y = (t[:50] for t in mnist_test_slice)
    x, y = x[:12], y[:12]
    torch.manual_seed(0)
    keep = score(committed, x, y, draws=4).correct_all > 0
    x, y = x[keep], y[keep]
    assert _robust(committed, "pgd", "linf-0.3", x, y) >= 0.8
    assert _robust(committed, "pgd-bpda", "linf-0.3", x, y) <= 0.4
