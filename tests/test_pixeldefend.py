"""PixelDefend (Song et al. 2018): the PixelCNN, exact wavefront purification, the submission."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gauntlet.attacks.adaptive import AdaptiveView, evaluate
from gauntlet.benchmark.registry import build_defense, load_submission
from gauntlet.defenses.pixelcnn import MaskedConv, PixelCNN
from gauntlet.defenses.pixeldefend import (PixelDefend, PixelDefendModel, PixelDefendPurifier, purify, purify_raster,
                                  train_pixeldefend)
from tests.training_jobs import tiny_job

SUBMISSION = Path(__file__).resolve().parents[1] / "submissions" / "song2018-pixeldefend"


def _random_pixelcnn(seed: int = 0, **kw) -> PixelCNN:
    """A tiny PixelCNN with large random weights (so argmax decisions vary across pixels)."""
    torch.manual_seed(seed)
    m = PixelCNN(**kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.7)
    return m


# -- the PixelCNN ---------------------------------------------------------------------------

def test_masks_a_and_b() -> None:
    a, b = MaskedConv(1, 1, 2, "A"), MaskedConv(1, 1, 1, "B")
    assert a.mask[0, 0].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.mask[0, 0].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert (a.right_reach, b.right_reach) == (2, 1)
    with pytest.raises(ValueError):
        MaskedConv(1, 1, 0, "A")


@pytest.mark.parametrize("kw", [dict(levels=4, channels=3, first_half=2, layers=2, half=1),
                                dict(levels=3, channels=2, first_half=1, layers=1, half=2)])
def test_receptive_field_is_causal_and_the_reach_is_tight(kw: dict) -> None:
    """∂logits(r, c)/∂x(r', c') ≠ 0 only on the dependency set, and somewhere at column c + w."""
    m = _random_pixelcnn(**kw).double()
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()  # positive weights and inputs: no ReLU is dead, every path carries gradient
    v, w = m.up_reach, m.right_reach
    r, c = 7, 6
    x = torch.rand(1, 1, 10, 13, dtype=torch.float64, requires_grad=True)
    m(x)[0, :, :, r, c].pow(2).sum().backward()
    dep = x.grad[0, 0] != 0
    rows, cols = torch.meshgrid(torch.arange(10), torch.arange(13), indexing="ij")
    allowed = ((rows == r) & (cols < c)) | ((rows < r) & (rows >= r - v) & ((cols - c).abs() <= w))
    assert not (dep & ~allowed).any()
    assert dep[:r, c + w].any() and not dep[r, c]
    # the wavefront index of every dependency is smaller
    t = cols + (w + 1) * rows
    assert (t[dep] < c + (w + 1) * r).all()


def test_nll_is_bits_per_dimension() -> None:
    m = PixelCNN(levels=8, channels=4, first_half=1, layers=0)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()  # uniform predictive distribution: exactly log2(8) bits per pixel
    assert torch.allclose(m.nll(torch.rand(3, 1, 5, 5)), torch.full((3,), 3.0))


def test_colour_channels_of_a_pixel_see_only_the_pixels_before_it() -> None:
    """Three channels: each channel's logits at (r, c) depend on every channel of earlier
    pixels and on no channel of (r, c) itself (p(x_i) = Π_c p(x_i^c | x_<i)), and the
    likelihood is normalized over each channel's levels."""
    m = _random_pixelcnn(levels=4, channels=3, first_half=2, layers=1, half=1, in_channels=3).double()
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()
    x = torch.rand(1, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    logits = m(x)
    assert logits.shape == (1, 4, 3, 7, 8)
    r, c = 4, 5
    g = torch.autograd.grad(logits[0, :, :, r, c].pow(2).sum(), x)[0][0]
    assert (g[:, r, c] == 0).all() and (g[:, r, c + 1:] == 0).all()
    assert (g[:, r, c - 1] != 0).all()  # every channel of the pixel to the left
    torch.testing.assert_close(logits.softmax(1).sum(1), torch.ones(1, 3, 7, 8, dtype=torch.float64))


# -- purification ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw,eps", [(dict(levels=8, channels=6, first_half=2, layers=2, half=1), 0.2),
                                    (dict(levels=5, channels=4, first_half=1, layers=1, half=2), 0.3),
                                    (dict(levels=16, channels=4, first_half=3, layers=1, half=1), 0.01),
                                    (dict(levels=8, channels=6, first_half=2, layers=2, half=1, in_channels=3), 0.2)])
def test_wavefront_equals_raster_decoding(kw: dict, eps: float) -> None:
    m = _random_pixelcnn(**kw)
    x = torch.rand(3, m.in_channels, 9, 11, generator=torch.Generator().manual_seed(1))
    fast, slow = purify(m, x, eps), purify_raster(m, x, eps)
    assert torch.equal(fast, slow)
    rounded = m.values()[m.quantize(x)]
    if eps > 0.5 / (m.levels - 1):
        assert (fast != rounded).any()  # the model's choices matter, not just rounding
    else:
        assert torch.equal(fast, rounded)  # below half a level only the nearest one is allowed


def test_purify_stays_within_eps_and_outputs_levels() -> None:
    m = _random_pixelcnn(levels=11, channels=4, first_half=2, layers=1)
    x = torch.rand(4, 1, 12, 12)
    out = purify(m, x, 0.25)
    k = out * 10
    assert torch.allclose(k, k.round(), atol=1e-5)
    assert (out - x).abs().max() <= 0.25 + 1e-5
    # ε below half a level: the nearest level, i.e. plain quantization
    assert torch.equal(purify(m, x, 0.0), m.values()[m.quantize(x)])


def test_purify_is_batch_independent_and_rejects_bad_input() -> None:
    m = _random_pixelcnn(levels=8, channels=4, first_half=2, layers=1)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(purify(m, x, 0.2)[2:3], purify(m, x[2:3], 0.2))
    with pytest.raises(ValueError):
        purify(m, torch.rand(2, 3, 8, 8), 0.1)
    with pytest.raises(ValueError):
        purify(_random_pixelcnn(levels=8, channels=4, first_half=2, layers=1, in_channels=3), x, 0.1)
    with pytest.raises(ValueError):
        purify(m, x, -0.1)


def test_step_declarations_and_views() -> None:
    """Naive gradients through argmax decoding are zero; BPDA's identity gives a gradient."""
    model = PixelDefendModel(levels=8, channels=4, first_half=2, layers=1).eval()
    defense = PixelDefend(model, [], eps_defend=0.1).eval()
    step = defense.steps[0]
    assert isinstance(step, PixelDefendPurifier) and not step.differentiable and not step.randomized
    assert not defense.randomized and defense.classifier is model.classifier
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    assert torch.equal(defense(x), defense(x))
    naive = evaluate(AdaptiveView(defense, bpda=False), x, y)
    bpda = evaluate(AdaptiveView(defense, bpda=True), x, y)
    assert naive.grad.abs().max() == 0
    assert bpda.grad.abs().max() > 0
    assert torch.allclose(naive.loss, bpda.loss)
    with pytest.raises(ValueError):
        PixelDefend(model, [step])


# -- the submission -------------------------------------------------------------------------

def test_recipe_on_a_tiny_budget() -> None:
    sub = load_submission(SUBMISSION / "manifest.yaml")
    model = train_pixeldefend(tiny_job("song2018-pixeldefend", n=16), pixelcnn_epochs=1, classifier_epochs=1)
    assert isinstance(model, PixelDefendModel) and not model.training
    fresh = PixelDefendModel(**sub.manifest.model.args)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_colour_recipe_trains_the_pixelcnn_and_copies_the_committed_classifier() -> None:
    """song2018-pixeldefend-cifar10: a colour PixelCNN in front of standard-cifar10's ResNet-9 as it is."""
    job = tiny_job("song2018-pixeldefend-cifar10", n=16)
    before = {k: v.clone() for k, v in job.model.pixelcnn.state_dict().items()}
    model = train_pixeldefend(job, **{**job.submission.manifest.train.args, "pixelcnn_epochs": 1})
    assert any(not torch.equal(v, before[k]) for k, v in model.pixelcnn.state_dict().items())
    standard = build_defense(load_submission(SUBMISSION.parent / "standard-cifar10" / "manifest.yaml")).classifier
    for name, value in standard.state_dict().items():
        torch.testing.assert_close(model.classifier.state_dict()[name], value)
    with torch.no_grad():
        assert PixelDefend(model, [], eps_defend=0.0627)(job.x_train[:4]).shape == (4, 10)


@pytest.fixture(scope="module")
def committed():
    sub = load_submission(SUBMISSION / "manifest.yaml")
    return build_defense(sub, "cpu")


def test_committed_weights_give_a_good_density_and_clean_accuracy(committed, mnist_test_slice) -> None:
    x, y = mnist_test_slice[0][:50], mnist_test_slice[1][:50]
    cnn = committed.steps[0].pixelcnn
    with torch.no_grad():
        bits = cnn.nll(x).mean().item()
        acc = (committed(x).argmax(1) == y).float().mean().item()
    assert bits < 1.0  # log2(32) = 5 bits for a uniform model
    assert acc >= 0.9


@pytest.mark.slow
def test_naive_pgd_fails_and_bpda_breaks_it(committed, mnist_test_slice) -> None:
    """Athalye et al. (2018, §5.4.1): raw gradients through PixelDefend are useless, BPDA is not.

    At ε = 0.3 > ε_defend = 0.1 the purifier cannot pull a pixel back to where it was; at
    ε ≤ ε_defend on MNIST it mostly can (measured: BPDA leaves 0.90 at ε = 0.1).
    """
    from gauntlet.attacks.base import AttackContext
    from gauntlet.attacks.registry import make_attack_unchecked
    from gauntlet.benchmark.threats import ThreatModel

    x, y = mnist_test_slice[0][:10], mnist_test_slice[1][:10]
    threat = ThreatModel("linf", 0.3)
    acc = {}
    for attack_id in ("pgd", "pgd-bpda"):
        attack = make_attack_unchecked(attack_id, steps=20, step_size=2.5 / 20)
        x_adv = attack.run(committed, x, y, threat, AttackContext(torch.Generator().manual_seed(0))).x_adv
        with torch.no_grad():
            acc[attack_id] = (committed(x_adv).argmax(1) == y).float().mean().item()
    assert acc["pgd"] >= 0.7
    assert acc["pgd-bpda"] <= 0.3
