"""The contract every registered attack and every landed submission keeps, in the style
of scikit-learn's ``parametrize_with_checks``: one parametrized check per (attack or
submission, property), so that a new registration is checked without a line of test code.

Attacks, on a 4-class linear model (cheap, exact): the result stays inside the threat and
[0, 1], the input is not mutated, a seed reproduces it, ε = 0 returns x, and it runs
against a randomized and a rejecting defense wherever the applicability rule
(:mod:`gauntlet.benchmark.applicability`) lets it run. Submissions, built from their
manifests on inputs of their dataset's shape: the declared randomness is what the
forward pass does, and each non-differentiable step's approximation has its forward
pass's shape.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gauntlet.attacks.base import defense_facts
from gauntlet.attacks.registry import attack_ids, make_attack_unchecked
from gauntlet.benchmark.applicability import not_applicable
from gauntlet.benchmark.datasets import get_dataset
from gauntlet.benchmark.registry import build_defense, load_submission
from gauntlet.benchmark.threats import get_threat
from gauntlet.defenses.pipeline import Defense
from gauntlet.defenses.smoothing import GaussianNoise
from tests.dummies import OpaqueIdentity, RejectLowConfidence, run_attack
from tests.linear import linear_problem

ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS = sorted(p.parent.name for p in (ROOT / "submissions").glob("*/manifest.yaml"))
THREATS = ("linf-0.031", "l2-0.005")
#: Small budgets where an attack has them: the contract is about behaviour, not strength.
SMALL = {"steps": 5, "n_iter": 5, "n_queries": 50, "restarts": 1, "n_restarts": 1, "iterations": 5,
         "samples": 8, "eot": 2, "k": 2, "n_targets": 2}


def _defenses():
    model, x, y = linear_problem(6, num_classes=4, side=8, seed=11)
    return {
        "plain": Defense(model),
        "randomized": Defense(model, [GaussianNoise(0.02)]),
        "rejecting": Defense(RejectLowConfidence(model), rejects=True),
        "non-differentiable": Defense(model, [OpaqueIdentity()]),
        "randomized-non-differentiable": Defense(model, [OpaqueIdentity(), GaussianNoise(0.02)]),
    }, model, x, y


def _small(attack_id: str) -> dict:
    import dataclasses

    names = {f.name for f in dataclasses.fields(make_attack_unchecked(attack_id).Params)}
    return {k: v for k, v in SMALL.items() if k in names}


def _run(attack_id, defense, x, y, threat, surrogate, seed=0):
    torch.manual_seed(seed)  # a randomized defense draws from torch's global generator
    return run_attack(attack_id, defense, x, y, threat, seed=seed, surrogate=surrogate, **_small(attack_id))


def _applicable(attack_id: str, defense) -> str | None:
    return not_applicable(make_attack_unchecked(attack_id).traits(), {**defense_facts(defense), "surrogate": True})


@pytest.mark.parametrize("kind", ["plain", "randomized", "rejecting", "non-differentiable",
                                  "randomized-non-differentiable"])
@pytest.mark.parametrize("threat_id", THREATS)
@pytest.mark.parametrize("attack_id", attack_ids())
def test_attack_stays_in_the_threat_keeps_its_input_and_reproduces(attack_id, threat_id, kind):
    defenses, model, x, y = _defenses()
    defense = defenses[kind]
    reason = _applicable(attack_id, defense)
    if reason:
        pytest.skip(f"{attack_id} does not run against a {kind} defense: {reason}")
    threat = get_threat(threat_id)
    x0 = x.clone()
    first = _run(attack_id, defense, x, y, threat, model)
    assert torch.equal(x, x0), "the attack changed its input"
    xa = first.x_adv
    assert xa.shape == x.shape and xa.dtype == x.dtype and torch.isfinite(xa).all()
    assert xa.min() >= 0 and xa.max() <= 1
    threat.verify(xa, x)
    again = _run(attack_id, defense, x, y, threat, model)
    assert torch.equal(again.x_adv, xa), "the same seed gave other points"


@pytest.mark.parametrize("attack_id", attack_ids())
def test_attack_at_eps_zero_returns_x(attack_id):
    defenses, model, x, y = _defenses()
    defense = defenses["plain"] if not _applicable(attack_id, defenses["plain"]) else next(
        (d for d in defenses.values() if not _applicable(attack_id, d)), None)
    if defense is None:
        pytest.skip(f"{attack_id} runs against none of the contract's defenses")
    for norm in ("linf", "l2"):
        out = _run(attack_id, defense, x, y, get_threat(f"{norm}-0"), model)
        assert torch.equal(out.x_adv, x), norm


def test_every_attack_runs_somewhere_in_the_contract():
    """The contract's defenses cover every attack except those needing a reparameterization."""
    defenses, *_ = _defenses()
    never = [a for a in attack_ids() if all(_applicable(a, d) for d in defenses.values())]
    assert all(make_attack_unchecked(a).traits().get("needs_reparameterization") for a in never), never


def _built(sub_id: str):
    sub = load_submission(ROOT / "submissions" / sub_id / "manifest.yaml")
    defense = build_defense(sub)
    x = torch.rand(4, *get_dataset(sub.manifest.dataset).shape, generator=torch.Generator().manual_seed(0))
    return sub, defense, x


@pytest.mark.parametrize("sub_id", SUBMISSIONS)
def test_submission_declared_randomness_is_its_behaviour(sub_id):
    sub, defense, x = _built(sub_id)
    with torch.no_grad():
        torch.manual_seed(1)
        a = defense(x)
        torch.manual_seed(2)
        b = defense(x)
    varies = not torch.equal(a, b)
    declared = bool(sub.manifest.properties.randomized) or bool(defense.randomized)
    assert varies == declared, f"declared randomized={declared}, two draws {'differ' if varies else 'agree'}"


@pytest.mark.parametrize("sub_id", SUBMISSIONS)
def test_submission_step_approximations_have_the_forward_shape(sub_id):
    _, defense, x = _built(sub_id)
    h = x
    for step in getattr(defense, "steps", []):
        with torch.no_grad():
            out = step(h)
            if not getattr(step, "differentiable", True):
                assert step.approximation(h).shape == out.shape, type(step).__name__
        h = out
