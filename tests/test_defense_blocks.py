"""Unit tests of the defense building blocks (issue 4): each block's own behavior."""
from __future__ import annotations

import pytest
import torch

from gauntlet.defenses.jpeg import JPEG
from gauntlet.defenses.quilting import Quilting, build_database
from gauntlet.defenses.randomized import RandomCropRescale, RandomResizePad, _resample
from gauntlet.defenses.sap import SAP, SAPSmallCNN, sap
from gauntlet.defenses.thermometer import Thermometer
from gauntlet.defenses.tv_min import TVMinimization, total_variation, tv_reconstruct


def _digits(n: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth blob images in [0, 1] that look like strokes on a black background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centers = 8 + 12 * torch.rand(n, 2, generator=g)
    d2 = (yy - centers[:, 0, None, None]) ** 2 + (xx - centers[:, 1, None, None]) ** 2
    return torch.exp(-d2 / 30.0).unsqueeze(1)


# -- thermometer ----------------------------------------------------------------------

def test_thermometer_code_of_066_with_10_levels() -> None:
    code = Thermometer(levels=10)(torch.full((1, 1, 1, 1), 0.66)).flatten()
    assert "".join(str(int(v)) for v in code) == "1111110000"


def test_thermometer_shape_and_channel_order() -> None:
    x = torch.tensor([0.05, 0.55]).view(1, 2, 1, 1)
    out = Thermometer(levels=4)(x)
    assert out.shape == (1, 8, 1, 1)
    assert out.flatten().tolist() == [0, 0, 0, 0, 1, 1, 0, 0]


def test_thermometer_ramp_is_a_monotone_stand_in_with_background_gradient() -> None:
    t = Thermometer(levels=16)
    x = torch.linspace(0, 1, 201).view(1, 1, 1, 201)
    code, ramp = t(x), t.approximation(x)
    assert ramp.shape == code.shape
    assert torch.equal(ramp[code == 1], code[code == 1])  # agrees wherever τ_k = 1
    assert (ramp >= 0).all() and (ramp <= 1).all()
    assert (ramp.diff(dim=-1) >= 0).all()  # monotone in x, like the step
    # black background (x = 0) gets a gradient through every channel
    zero = torch.zeros(1, 1, 2, 2, requires_grad=True)
    t.approximation(zero).sum().backward()
    assert (zero.grad > 0).all()
    assert not t.differentiable and not t.randomized


def test_thermometer_rejects_bad_levels() -> None:
    with pytest.raises(ValueError):
        Thermometer(levels=1)


# -- JPEG -----------------------------------------------------------------------------

def test_jpeg_changes_the_input_and_is_roughly_idempotent() -> None:
    x = _digits() + 0.05 * torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    x = x.clamp(0, 1)
    jpeg = JPEG(quality=75)
    once = jpeg(x)
    twice = jpeg(once)
    first = (once - x).abs().mean()
    second = (twice - once).abs().mean()
    assert once.shape == x.shape and once.dtype == x.dtype
    assert first > 2e-3
    assert second < 0.5 * first
    assert jpeg(x).equal(once)  # a codec is deterministic


def test_jpeg_quality_orders_the_error_and_handles_rgb() -> None:
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    err = [(JPEG(q)(x) - x).abs().mean() for q in (20, 95)]
    assert err[0] > err[1]
    with pytest.raises(ValueError):
        JPEG(quality=0)
    with pytest.raises(ValueError):
        JPEG()(torch.rand(2, 2, 8, 8))


# -- randomized transformations -------------------------------------------------------

@pytest.mark.parametrize("step", [RandomCropRescale(crop=24), RandomResizePad(out_size=32)])
def test_random_draws_differ_between_calls_and_rows(step) -> None:
    torch.manual_seed(0)
    x = _digits(1).repeat(16, 1, 1, 1)
    a, b = step(x), step(x)
    assert step.randomized
    assert not torch.equal(a, b)
    distinct_rows = {tuple(r.flatten().tolist()) for r in a}
    assert len(distinct_rows) > 4


def test_resample_places_and_crops_exactly() -> None:
    x = _digits(2)
    placed = _resample(x, torch.ones(2), torch.zeros(2, 2), 32, "nearest")
    assert torch.equal(placed[..., :28, :28], x)
    assert placed[..., 28:, :].abs().max() == 0 and placed[..., :, 28:].abs().max() == 0
    same = _resample(x, torch.ones(2), torch.zeros(2, 2), 28, "bilinear")
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    # scale ½: output pixel j reads input pixel centre (j + ½)·½ + shift − ½, so with
    # shift 7.25 every even output pixel 2m lands exactly on input pixel 7 + m
    crop = _resample(x, torch.full((2,), 0.5), torch.full((2, 2), 7.25), 28, "bilinear")
    torch.testing.assert_close(crop[..., ::2, ::2], x[..., 7:21, 7:21], atol=1e-5, rtol=0)


def test_resize_pad_keeps_the_image_and_pads_zeros() -> None:
    torch.manual_seed(1)
    x = torch.ones(64, 1, 28, 28)
    out = RandomResizePad(out_size=32)(x)
    assert out.shape == (64, 1, 32, 32)
    ones = out.flatten(1).sum(1)
    # a resized side r ∈ [28, 32) covers r² pixels of ones, the rest is zero padding
    assert ((ones >= 28 ** 2) & (ones <= 31 ** 2)).all()
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_crop_rescale_is_differentiable() -> None:
    x = _digits(2).requires_grad_()
    RandomCropRescale(crop=20)(x).sum().backward()
    assert x.grad.abs().sum() > 0


# -- TV minimization ------------------------------------------------------------------

def test_tv_reconstruction_reduces_total_variation() -> None:
    g = torch.Generator().manual_seed(0)
    x = (_digits() + 0.2 * torch.randn(8, 1, 28, 28, generator=g)).clamp(0, 1)
    out = TVMinimization(keep_prob=0.5, weight=0.03, iterations=40)(x)
    assert out.shape == x.shape
    assert (total_variation(out) < 0.8 * total_variation(x)).all()
    assert out.min() >= 0 and out.max() <= 1


def test_tv_reconstruction_fits_kept_pixels_when_weight_is_small() -> None:
    x = _digits(4)
    keep = torch.ones_like(x)
    out = tv_reconstruct(x, keep, weight=1e-4, iterations=60)
    torch.testing.assert_close(out, x, atol=5e-3, rtol=0)


def test_tv_inpaints_dropped_pixels_of_a_constant_image() -> None:
    x = torch.full((2, 1, 16, 16), 0.7)
    keep = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    out = tv_reconstruct(x, keep, weight=0.03, iterations=200)
    torch.testing.assert_close(out, x, atol=2e-2, rtol=0)


def test_tv_draws_differ_between_calls_and_rows() -> None:
    torch.manual_seed(0)
    x = _digits(1).repeat(4, 1, 1, 1)
    step = TVMinimization()
    a, b = step(x), step(x)
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    assert step.randomized and not step.differentiable


# -- quilting -------------------------------------------------------------------------

def _quilting(k: int = 3) -> tuple[Quilting, torch.Tensor]:
    db = build_database(_digits(16, seed=3), patch=4, size=256, generator=torch.Generator().manual_seed(0))
    step = Quilting(patch=4, size=len(db), channels=1, k=k)
    step.load_state_dict({"patches": db})
    return step, db.float() / 255


def test_quilting_refuses_a_database_that_is_not_8_bit() -> None:
    db = build_database(_digits(4), patch=4, size=20, generator=torch.Generator().manual_seed(0))
    step = Quilting(patch=4, size=len(db), channels=1, k=3)
    with pytest.raises(ValueError, match="uint8"):
        step.load_state_dict({"patches": db.float() / 255})


def test_quilting_output_is_made_only_of_database_patches() -> None:
    torch.manual_seed(0)
    step, db = _quilting()
    out = step(_digits(3, seed=5))
    tiles = out.unfold(2, 4, 4).unfold(3, 4, 4).reshape(-1, 16)
    found = (tiles[:, None, :] == db.reshape(1, -1, 16)).all(-1).any(1)
    assert found.all()


def test_quilting_picks_among_the_k_nearest_and_varies() -> None:
    torch.manual_seed(0)
    step, db = _quilting(k=1)
    x = _digits(2, seed=7)
    out = step(x)
    # k = 1: each tile is the database patch nearest to the input tile
    tiles = x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(-1, 16)
    nearest = torch.cdist(tiles, db.reshape(-1, 16)).argmin(1)
    assert torch.equal(out.unfold(2, 4, 4).unfold(3, 4, 4).reshape(-1, 16), db.reshape(-1, 16)[nearest])
    step_k, _ = _quilting(k=5)
    assert not torch.equal(step_k(x), step_k(x))


def test_build_database_patches_are_distinct_training_patches() -> None:
    x = _digits(4)
    db = build_database(x, patch=4, size=50, generator=torch.Generator().manual_seed(0))
    assert db.shape == (50, 1, 4, 4) and db.dtype == torch.uint8
    assert len(torch.unique(db.reshape(50, -1), dim=0)) == 50
    db = db.float() / 255
    every = torch.nn.functional.unfold((x * 255).round() / 255, 4, stride=1).transpose(1, 2).reshape(-1, 16)
    assert all((every - p.reshape(1, 16)).abs().amax(1).min() < 1e-6 for p in db)


# -- SAP ------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", ["exact", "poisson"])
def test_sap_is_unbiased_in_expectation(sampling: str) -> None:
    torch.manual_seed(0)
    h = torch.rand(3, 40) * (torch.rand(3, 40) > 0.3)
    draws = torch.stack([sap(h, frac=0.5, sampling=sampling) for _ in range(2000)])
    mean, se = draws.mean(0), draws.std(0) / 2000 ** 0.5
    assert ((mean - h).abs() <= 5 * se + 1e-6).all()
    # pruning actually happens, and survivors are scaled up
    one = sap(h, frac=0.5, sampling=sampling)
    assert (one == 0).sum() > (h == 0).sum()
    assert (one[one > 0] >= h[one > 0]).all()


def test_sap_keeps_zeros_zero_and_handles_all_zero_rows() -> None:
    h = torch.zeros(2, 10)
    h[0, 3] = 2.0
    out = sap(h)
    assert out[1].abs().sum() == 0
    torch.testing.assert_close(out[0], h[0])  # p = 1: always kept, scale 1
    assert sap(h, sampling="poisson")[1].abs().sum() == 0
    with pytest.raises(ValueError):
        sap(h, sampling="bernoulli")


def test_sap_exact_draws_keep_at_most_r_units() -> None:
    torch.manual_seed(0)
    h = torch.rand(50, 100) + 0.01
    kept = (sap(h, frac=0.1) != 0).sum(1)
    assert (kept <= 10).all() and (kept >= 1).all()


def test_sap_model_is_random_in_eval_and_plain_in_train() -> None:
    torch.manual_seed(0)
    m = SAPSmallCNN(frac=0.5)
    x = _digits(4)
    m.train()
    assert torch.equal(m(x), m(x))
    m.eval()
    assert not torch.equal(m(x), m(x))
    assert SAPSmallCNN.randomized and SAP.randomized
    from gauntlet.defenses.models import SmallCNN
    assert set(m.state_dict()) == set(SmallCNN().state_dict())
