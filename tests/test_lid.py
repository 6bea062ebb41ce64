"""The LID detector (Ma et al. 2018): estimator, container, defense, recipe, committed weights."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gauntlet.benchmark.registry import build_defense, load_submission
from gauntlet.benchmark.scoring import score
from gauntlet.benchmark.threats import ThreatModel
from gauntlet.benchmark.training import TrainingJob
from gauntlet.defenses.pipeline import Defense
from gauntlet.defenses.lid import (LIDDetector, auc, craft, layer_outputs, lid_mle, lid_recipe,
                          pairwise_distances)

SUBMISSION = Path(__file__).resolve().parents[1] / "submissions" / "ma2018-lid"


def _blobs(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random strokes in [0, 1], MNIST-shaped."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    c = 6 + 16 * torch.rand(n, 2, 2, generator=g)
    d2 = ((yy - c[:, :, 0, None, None]) ** 2 + (xx - c[:, :, 1, None, None]) ** 2).amin(1)
    return torch.exp(-d2 / 20.0).unsqueeze(1)


def _container(n_reference: int = 30, k: int = 10, seed: int = 0) -> LIDDetector:
    torch.manual_seed(seed)
    m = LIDDetector(n_reference=n_reference, k=k).eval()
    m.set_reference(_blobs(n_reference, seed=seed + 1))
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# -- the estimator ------------------------------------------------------------------------

def test_lid_mle_closed_form() -> None:
    # r = (1, e): mean log(r_i / r_k) = (−1 + 0)/2, so LID = 2 (Ma et al. Eq. 4)
    d = torch.tensor([[math.e, 1.0, 5.0]])
    assert lid_mle(d, k=2).item() == pytest.approx(2.0)
    # r_i = (i/k)^(1/m): the distances of a uniform m-dimensional ball's quantiles
    k, m = 50, 4.0
    r = (torch.arange(1, k + 1, dtype=torch.float64) / k) ** (1 / m)
    expected = -1.0 / (torch.log((torch.arange(1, k + 1) / k).double()).mean() / m)
    assert lid_mle(r.view(1, -1), k).item() == pytest.approx(expected.item())


def test_lid_recovers_the_dimension_of_a_linear_subspace() -> None:
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(40, 3, generator=g, dtype=torch.float64))[0]  # 3-dim subspace of R^40
    points = (torch.rand(20000, 3, generator=g, dtype=torch.float64) * 2 - 1) @ basis.T
    query = torch.zeros(5, 3, dtype=torch.float64)
    query[:, 0] = torch.linspace(-0.2, 0.2, 5)
    lid = lid_mle(pairwise_distances(query @ basis.T, points), k=200)
    assert lid.mean().item() == pytest.approx(3.0, abs=0.4)


def test_pairwise_distances_match_cdist_and_lid_needs_k_neighbours() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 30, generator=g), torch.randn(11, 30, generator=g)
    torch.testing.assert_close(pairwise_distances(a, b), torch.cdist(a, b), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        lid_mle(torch.rand(2, 5), k=6)


def test_auc_is_the_mann_whitney_statistic() -> None:
    assert auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auc(torch.tensor([0.0]), torch.tensor([1.0])) == 0.0
    assert auc(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.5])) == pytest.approx((0.5 + 1 + 0 + 0) / 4)


# -- the container ------------------------------------------------------------------------

def test_layer_outputs_tap_every_layer_and_end_with_the_logits() -> None:
    m = _container()
    x = _blobs(4)
    outs = layer_outputs(m.classifier, x)
    # input, conv, relu, pool, conv, relu, pool, dense, relu, dense (Flatten skipped)
    assert len(outs) == m.n_layers == 10
    torch.testing.assert_close(outs[-1], m.classifier(x))
    assert [o.shape[1] for o in outs[:4]] == [784, 16 * 784, 16 * 784, 16 * 196]


def test_layer_outputs_of_a_residual_network_tap_inside_its_blocks_before_in_place_activations() -> None:
    torch.manual_seed(0)
    m = LIDDetector(in_channels=3, image_size=32, arch="resnet9", width=4, n_reference=20, k=5).eval()
    x = torch.rand(3, 3, 32, 32)
    outs = layer_outputs(m.classifier, x)
    assert len(outs) == m.n_layers
    torch.testing.assert_close(outs[-1], m.classifier(x))  # the scaled logits, not the head's output
    stem_conv, stem_bn, stem_relu = m.classifier.features[0]
    torch.testing.assert_close(outs[1], stem_conv(x).flatten(1))
    bn = stem_bn(stem_conv(x))
    torch.testing.assert_close(outs[2], bn.flatten(1))  # kept before ReLU(inplace=True) overwrote it
    torch.testing.assert_close(outs[3], bn.clamp_min(0).flatten(1))
    assert (outs[2] < 0).any()
    with pytest.raises(ValueError, match="arch"):
        LIDDetector(arch="vgg")


def test_reject_logit_fires_exactly_when_the_detector_score_passes_the_threshold() -> None:
    m = _container()
    m.weight.copy_(torch.linspace(-1, 1, m.n_layers))
    x = torch.cat([_blobs(6, seed=3), torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))])
    with torch.no_grad():
        s = m.detector_score(x)
        m.threshold.copy_(s.median())
        out = m(x)
    assert out.shape == (12, 11)
    logits = m.classifier(x)
    torch.testing.assert_close(out[:, :10], logits - logits.amax(1, keepdim=True))
    rejected = out.argmax(1) == 10
    assert torch.equal(rejected, s > m.threshold)
    assert 0 < int(rejected.sum()) < 12


def test_reject_logit_is_differentiable_in_the_input() -> None:
    m = _container()
    m.weight.fill_(1.0)
    x = _blobs(3, seed=5).requires_grad_(True)
    g = torch.autograd.grad(m(x)[:, -1].sum() - m(x)[:, :10].amax(1).sum(), x)[0]  # = Σ s·score
    assert torch.isfinite(g).all() and g.abs().amax() > 0


def test_reference_activations_are_cached_until_the_weights_change() -> None:
    m = _container()
    first = m.reference_activations()
    assert m.reference_activations() is first
    with torch.no_grad():
        m.classifier.head[-1].bias.add_(1.0)
    second = m.reference_activations()
    assert second is not first
    torch.testing.assert_close(second[-1][0], first[-1][0] + 1.0)


def test_reference_is_stored_as_8_bit_pixels_and_bad_arguments_raise() -> None:
    m = _container(n_reference=20, k=5)
    assert m.reference.dtype == torch.uint8
    x = torch.full((20, 1, 28, 28), 128 / 255)
    m.set_reference(x)
    torch.testing.assert_close(m.reference_images(), x)
    with pytest.raises(ValueError):
        m.set_reference(torch.zeros(3, 1, 28, 28))
    with pytest.raises(ValueError):
        LIDDetector(n_reference=10, k=20)
    with pytest.raises(ValueError):
        LIDDetector(reject_scale=0.0)


def test_defense_declares_rejection_and_is_deterministic() -> None:
    d = Defense(_container()).eval()  # the detector declares rejection; the pipeline reads it
    assert d.rejects and not d.randomized and d.differentiable
    x = _blobs(5)
    with torch.no_grad():
        torch.testing.assert_close(d(x), d(x), atol=0, rtol=0)
        # a row's output does not depend on the rest of the batch (fixed reference set)
        torch.testing.assert_close(d(x)[:2], d(x[:2]), atol=1e-5, rtol=1e-5)


def test_craft_stays_in_the_ball_and_bim_a_freezes_broken_examples() -> None:
    m = _container()
    x, y = _blobs(6), torch.arange(6)
    g = torch.Generator().manual_seed(0)
    for kind in ("fgsm", "bim-a", "bim-b"):
        xa = craft(m.classifier, x, y, kind, 0.1, 3, g)
        assert (xa - x).abs().amax() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    with pytest.raises(ValueError):
        craft(m.classifier, x, y, "jsma", 0.1, 3, g)


# -- the recipe ---------------------------------------------------------------------------

def test_recipe_fits_a_detector_at_its_false_positive_rate(one_thread) -> None:
    sub = load_submission(SUBMISSION / "manifest.yaml")
    from gauntlet.benchmark.datasets import get_dataset

    x, y = get_dataset("mnist-embedded").split("train")
    idx = torch.arange(0, 4000, 20)  # 200 images, 20 per class
    torch.manual_seed(0)
    model = LIDDetector(n_reference=40, k=10)
    gen = torch.Generator().manual_seed(0)
    job = TrainingJob(sub, model, Defense(model), x[idx], y[idx], gen, torch.device("cpu"), None,
                      SUBMISSION.parent)
    out = lid_recipe(job, epochs=2, n_detector=120, eps=(0.3,), kinds=("fgsm", "bim-b"), pgd_steps=3,
                     holdout=0.25, fpr=0.1)
    assert out is model and not out.training
    r = out.fit_report
    assert r["n_fit_images"] + r["n_heldout_images"] <= 120
    assert r["fit_clean_rejection"] == pytest.approx(0.1, abs=0.03)
    assert torch.isfinite(out.threshold) and out.weight.abs().sum() > 0
    ref = out.reference_images().flatten(1)
    gap = (ref[:, None] - x[idx].flatten(1)[None]).abs().amax(-1)
    assert (gap.amin(1) < 1e-6).all()  # the reference set is made of training images
    with torch.no_grad():
        logits = Defense(out)(x[:8])
    assert logits.shape == (8, 11) and torch.isfinite(logits).all()


def test_recipe_on_a_committed_residual_classifier_keeps_its_weights(one_thread) -> None:
    """ma2018-lid-cifar10: the detector is fitted to standard-cifar10's ResNet-9 as it is."""
    from tests.training_jobs import tiny_job

    job = tiny_job("ma2018-lid-cifar10", n=600)  # 500 of them are the reference set
    args = {**job.submission.manifest.train.args, "n_detector": 60, "pgd_steps": 2, "holdout": 0.25, "fpr": 0.1}
    out = lid_recipe(job, **args)
    standard = build_defense(load_submission(SUBMISSION.parent / "standard-cifar10" / "manifest.yaml")).classifier
    for name, value in standard.state_dict().items():
        torch.testing.assert_close(out.classifier.state_dict()[name], value)
    with torch.no_grad():
        logits = Defense(out)(job.x_train[:8])
    assert logits.shape == (8, 11) and torch.isfinite(logits).all()


# -- the committed submission -------------------------------------------------------------

@pytest.fixture(scope="module")
def committed() -> torch.nn.Module:
    return build_defense(load_submission(SUBMISSION / "manifest.yaml"))


def test_committed_weights_classify_and_rarely_reject_clean_digits(committed, mnist_test_slice) -> None:
    x, y = mnist_test_slice
    s = score(committed, x[:50], y[:50], draws=1)
    assert s.correct.mean() >= 0.85  # rejected clean inputs count as errors
    assert s.rejected.mean() <= 0.15  # threshold set for 5% on clean training images
    assert committed.classifier.reference.shape[0] == 500


@pytest.mark.slow
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_rejection_aware_pgd_evades_the_detector_that_stops_blind_pgd(committed, mnist_test_slice, eps) -> None:
    """Carlini & Wagner (2017), Athalye et al. (2018, §5.1): LID stops part of an attack
    that ignores it (the runner's ``pgd-blind``), and none of one that attacks the
    detector too (runner's ``pgd``, reject logit folded into the loss)."""
    from gauntlet.attacks.base import AttackContext
    from gauntlet.attacks.registry import make_attack

    x, y = mnist_test_slice
    x, y = x[:40], y[:40]
    threat = ThreatModel("linf", eps)
    x_blind = make_attack("pgd-blind").run(committed, x, y, threat,
                                           AttackContext(torch.Generator().manual_seed(0))).x_adv
    threat.verify(x_blind, x)
    blind = score(committed, x_blind, y, draws=1)
    res = make_attack("pgd").run(committed, x, y, threat, AttackContext(torch.Generator().manual_seed(0)))
    threat.verify(res.x_adv, x)
    aware = score(committed, res.x_adv, y, draws=1)
    assert aware.rejected.mean() <= 0.05  # the aware attack avoids the detector
    assert aware.survives.mean() <= blind.survives.mean() + 0.05
    if eps == 0.3:
        with torch.no_grad():
            assert (committed(x_blind)[:, :10].argmax(1) != y).float().mean() >= 0.9  # classifier broken
        assert blind.rejected.mean() >= 0.15  # ... the detector catches part of the blind attack
        assert aware.survives.mean() <= 0.1
        assert blind.survives.mean() >= aware.survives.mean() + 0.15
