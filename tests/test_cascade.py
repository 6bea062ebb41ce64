"""Cascade adversarial training (Na, Ko & Mukhopadhyay 2018): blocks, recipe, committed model."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gauntlet.benchmark.registry import build_defense, load_submission
from gauntlet.benchmark.training import train_submission
from tests.training_jobs import synthetic_digits, tiny_job
from gauntlet.defenses.recipes import load_source
from gauntlet.defenses.cascade import (cascade_at, cascade_loss, level_index, sample_eps, source_examples,
                              step_ll)
from gauntlet.defenses.models import LinearClassifier, SmallCNN
from gauntlet.defenses.pipeline import Defense

ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS = ROOT / "submissions"
ID = "na2018-cascade-at"


def _frozen(model: torch.nn.Module) -> Defense:
    d = Defense(model).eval()
    for p in d.parameters():
        p.requires_grad_(False)
    return d


# -- blocks -------------------------------------------------------------------------------

def test_step_ll_is_one_signed_step_towards_the_least_likely_class() -> None:
    torch.manual_seed(0)
    lin = LinearClassifier()
    d = _frozen(lin)
    x = torch.full((6, 1, 28, 28), 0.5)
    x = x + 0.1 * torch.rand(x.shape)
    eps = torch.tensor([0.0, 0.01, 0.02, 0.05, 0.1, 0.2])
    xa = step_ll(d, x, eps)
    with torch.no_grad():
        logits = d(x)
    y_ll = logits.argmin(1)
    # closed form: ∇ₓ CE(Wx + b, y_ll) = Wᵀ(softmax − onehot(y_ll)); the step goes against it
    grad = (logits.softmax(1) - F.one_hot(y_ll, 10).float()) @ lin.linear.weight
    expected = (x - eps.view(-1, 1, 1, 1) * grad.view_as(x).sign()).clamp(0, 1)
    assert torch.allclose(xa, expected, atol=1e-6)
    assert ((xa - x).flatten(1).abs().amax(1) <= eps + 1e-6).all()
    with torch.no_grad():
        before = F.cross_entropy(d(x), y_ll, reduction="none")
        after = F.cross_entropy(d(xa), y_ll, reduction="none")
    assert (after[1:] < before[1:]).all()


def test_sample_eps_is_the_truncated_normal_or_the_maximum() -> None:
    g = torch.Generator().manual_seed(0)
    e = sample_eps(20000, 0.1, "truncated-normal", g)
    assert e.min() >= 0 and e.max() <= 0.1
    # E|N(0, σ)| = σ·√(2/π) with σ = ε/2 (slightly less after clipping at ε = 2σ)
    assert 0.9 * 0.05 * math.sqrt(2 / math.pi) < float(e.mean()) <= 0.05 * math.sqrt(2 / math.pi)
    assert torch.equal(sample_eps(5, 0.1, "max", g), torch.full((5,), 0.1))


def test_level_index_picks_the_level_of_the_drawn_eps() -> None:
    e = torch.tensor([0.0, 0.024, 0.026, 0.051, 0.099, 0.1])
    assert level_index(e, 0.1, 4).tolist() == [0, 0, 1, 2, 3, 3]


def test_cascade_loss_weights_cross_entropy_and_adds_the_pivot_distance() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = synthetic_digits(8)
    x_adv = (x + 0.1 * torch.rand(x.shape)).clamp(0, 1)
    last = model.head[-1]
    plain = cascade_loss(Defense(model), last, x, y, x_adv, adv_weight=0.3, pivot_weight=0.0)
    ce_clean = F.cross_entropy(model(x), y, reduction="sum")
    ce_adv = F.cross_entropy(model(x_adv), y, reduction="sum")
    assert torch.allclose(plain, (ce_clean + 0.3 * ce_adv) / (8 + 0.3 * 8), atol=1e-5)
    with_pivot = cascade_loss(Defense(model), last, x, y, x_adv, adv_weight=0.3, pivot_weight=0.01)
    embed = model.head[:-1](model.features(torch.cat([x, x_adv])))
    distance = 0.5 * (embed[8:] - embed[:8]).pow(2).sum()
    assert torch.allclose(with_pivot - plain, 0.01 * distance, rtol=1e-4)
    # the same input twice: zero distance, so the pivot adds nothing
    same = cascade_loss(Defense(model), last, x, y, x.clone(), adv_weight=0.3, pivot_weight=1.0)
    assert torch.allclose(same, cascade_loss(Defense(model), last, x, y, x.clone(), 0.3, 0.0), atol=1e-6)


def test_pivot_gradient_reaches_the_clean_embedding_only_without_stop_gradient() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = synthetic_digits(4)
    x = x.requires_grad_(True)
    x_adv = (x.detach() + 0.1).clamp(0, 1).requires_grad_(True)
    pivot = cascade_loss(Defense(model), model.head[-1], x, y, x_adv, 0.3, 1.0) - \
        cascade_loss(Defense(model), model.head[-1], x, y, x_adv, 0.3, 0.0)
    gx, gxa = torch.autograd.grad(pivot, [x, x_adv])
    assert gx.abs().max() < 1e-6 < gxa.abs().max()
    both = cascade_loss(Defense(model), model.head[-1], x, y, x_adv, 0.3, 1.0, stop_gradient=False) - \
        cascade_loss(Defense(model), model.head[-1], x, y, x_adv, 0.3, 0.0)
    gx, gxa = torch.autograd.grad(both, [x, x_adv])
    assert gx.abs().max() > 1e-6 and gxa.abs().max() > 1e-6


def test_load_source_builds_the_committed_network_and_refuses_paths_outside() -> None:
    a = load_source(SUBMISSIONS, "madry2018-pgd-at", "mnist-embedded", torch.device("cpu"))
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    for bad in ("/etc", "../tests", "no-such-submission", "."):
        with pytest.raises(ValueError, match="not a submission folder"):
            load_source(SUBMISSIONS, bad, "mnist-embedded", torch.device("cpu"))
    with pytest.raises(ValueError, match="is on"):
        load_source(SUBMISSIONS, "madry2018-pgd-at", "cifar10", torch.device("cpu"))


def test_source_examples_stay_in_their_level_ball_and_fool_a_weak_model(one_thread) -> None:
    torch.manual_seed(0)
    d = _frozen(LinearClassifier())
    x, y = synthetic_digits(16)
    with torch.no_grad():
        y = d(x).argmax(1)  # all correct at the start
    out = source_examples(d, x, y, 0.2, 2, 5, 0.5, torch.Generator().manual_seed(0))
    assert out.shape == (2, *x.shape)
    for level, eps in enumerate((0.1, 0.2)):
        dist = (out[level] - x).flatten(1).abs().amax(1)
        assert (dist <= eps + 1e-6).all() and dist.max() > eps / 2
        assert out[level].min() >= 0 and out[level].max() <= 1
    with torch.no_grad():
        assert (d(out[1]).argmax(1) == y).float().mean() < 0.5


def test_cascade_at_rejects_bad_arguments() -> None:
    job = tiny_job(ID, 8)
    for bad in ({"eps": 0.0}, {"levels": 0}, {"eps_sampling": "uniform"}, {"batch_size": 1},
                {"pivot_weight": -1.0}):
        with pytest.raises(ValueError):
            cascade_at(job, **bad)


# -- recipe -------------------------------------------------------------------------------

def test_cascade_at_trains_on_a_tiny_budget(one_thread) -> None:
    job = tiny_job(ID, 32)
    before = {k: v.clone() for k, v in job.model.state_dict().items()}
    model = cascade_at(job, source_steps=1, levels=2, epochs=1, pretrain_epochs=1, batch_size=16)
    assert model is job.model and not model.training
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


@pytest.mark.slow
def test_recipe_runs_from_the_manifest_without_writing(shared_data) -> None:
    sub = load_submission(SUBMISSIONS / ID / "manifest.yaml")
    weights = (sub.folder / "weights.pt").read_bytes()
    model, seconds = train_submission(sub, submissions_dir=SUBMISSIONS, data_dir=shared_data, write=False,
                                      overrides={"source_steps": 1, "levels": 1, "epochs": 1, "pretrain_epochs": 0})
    assert seconds > 0 and not model.training
    assert (sub.folder / "weights.pt").read_bytes() == weights


# -- the committed model ------------------------------------------------------------------

def test_committed_weights_load_and_classify_cleansynthetic_digits(mnist_test_slice) -> None:
    sub = load_submission(SUBMISSIONS / ID / "manifest.yaml")
    d = build_defense(sub)
    x, y = mnist_test_slice
    with torch.no_grad():
        acc = (d(x[:50]).argmax(1) == y[:50]).float().mean().item()
    assert acc >= 0.9, acc


@pytest.mark.slow
def test_committed_model_is_robust_like_adversarial_training(tmp_path) -> None:
    """Runner's fgsm/pgd/apgd-ce at ℓ∞ 0.1 on 40 examples: far above the standard model, no flag."""
    from gauntlet.benchmark.results import read_result
    from gauntlet.benchmark.runner import RunConfig, run

    defenses = ("standard-cnn-mnist", ID)
    summary = run(RunConfig(submissions_dir=SUBMISSIONS, defenses=defenses, attacks=("fgsm", "pgd", "apgd-ce"),
                            threats=("linf-0.1",), n_examples=40, results_dir=tmp_path, sweep=False, certify=False,
                            isolate=False), progress=False)
    assert summary.errors == []

    def acc(defense: str, attack: str) -> float:
        path = tmp_path / "mnist-embedded" / defense / "linf-0.1" / f"{attack}.json"
        return read_result(path)["summary"]["robust_accuracy"]

    for attack in ("pgd", "apgd-ce"):
        assert acc(ID, attack) >= acc("standard-cnn-mnist", attack) + 0.15, attack
    flags = read_result(tmp_path / "mnist-embedded" / ID / "linf-0.1" / "flags.json")["flags"]
    assert {f["id"] for f in flags if f["raised"]} == set()
