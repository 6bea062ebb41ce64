"""Randomized smoothing as a defense (Cohen, Rosenfeld & Kolter 2019).

The smoothed classifier is g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ²I), with the
noise added in [0, 1] input space before any preprocessing. :class:`SmoothedDefense`
exposes it to the attack suite through two paths:

* ``forward`` (the exact, scored path) runs Monte-Carlo PREDICT (Cohen et al. 2019,
  Algorithm "PREDICT") with ``samples`` noise draws per example per call and returns
  ``C + 1`` columns: the smoothed class frequencies in the first ``C`` and the
  "abstain/reject" score last. The scores argmax to PREDICT's answer: the reject score
  is 2 (above every frequency) when PREDICT abstains and −1 otherwise. Frequencies, not
  one-hot vectors, so score-based attacks (Square) see the smoothed margin.
* the *differentiable* path used by :class:`gauntlet.attacks.adaptive.AdaptiveView` is
  ``classifier(steps(x))``: ``steps`` start with the randomized :class:`GaussianNoise`
  step, so EOT averages gradients of the base classifier over noise draws (the attack
  of Salman et al. 2019 on smoothed classifiers), and ``classifier`` is
  :class:`RejectColumn` around the base model. It appends a constant, very low reject
  logit so that the view also has ``C + 1`` columns: the shared
  :func:`gauntlet.attacks.losses.fold_reject` then handles both paths alike (a view logit
  ``min(z) − 30`` adds at most ``e^−30`` to the protected class, and no gradient).

Training: while the base model is in training mode (a recipe called ``model.train()``),
``forward`` returns the base model's logits on the input as given, so
:func:`gauntlet.defenses.recipes.standard` with ``noise_sigma = σ`` trains f under Gaussian
noise augmentation exactly as Cohen et al. did (their §4, "training").
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from scipy.stats import binom
from torch import nn

from gauntlet.defenses.pipeline import Defense, Step

#: How far below the smallest base logit the view's constant reject logit sits.
REJECT_LOGIT_GAP = 30.0

#: Rows per base-model forward pass on the CPU at most (cache-sized; measured in
#: ``tests/benchmarks/test_bench_certify.py``).
CPU_ROWS_PER_PASS = 256


class GaussianNoise(Step):
    """x ↦ x + σ·ε, ε ~ N(0, I), fresh on every call (no clipping, as Cohen et al.).

    Args:
        sigma: noise standard deviation in [0, 1] input units.
    """

    randomized = True
    differentiable = True

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sigma * torch.randn_like(x)


class RejectColumn(nn.Module):
    """The base model's logits with one constant, very low "reject" logit appended.

    Args:
        model: the base classifier f (C logits).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        low = z.detach().amin(dim=-1, keepdim=True) - REJECT_LOGIT_GAP
        return torch.cat([z, low], dim=-1)


def binomial_two_sided_pvalue(top: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Two-sided binomial test of H0: p = 1/2 for ``top`` successes in ``top + second``.

    For p = 1/2 the distribution is symmetric, so the exact two-sided p-value (the one
    ``scipy.stats.binomtest(k, n, 0.5).pvalue`` returns) is ``min(1, 2·F(min(k, n−k)))``
    with F the binomial CDF. Vectorized over examples (tests check it against
    ``binomtest``).

    Returns:
        (N,) float64 p-values on the CPU.
    """
    k = top.detach().cpu().numpy().astype(np.int64)
    n = k + second.detach().cpu().numpy().astype(np.int64)
    p = np.minimum(1.0, 2.0 * binom.cdf(np.minimum(k, n - k), n, 0.5))
    p[n == 0] = 1.0
    return torch.from_numpy(p)


def sample_counts(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, num: int,
                  sigma: float, *, batch: int, generator: torch.Generator | None = None,
                  autocast: bool = False) -> torch.Tensor:
    """Counts of ``model``'s top class over ``num`` noise draws per example, batched.

    The N·num noisy rows are laid out example-major and cut into forward passes of at
    most ``batch`` rows (at most :data:`CPU_ROWS_PER_PASS` on the CPU, where small
    passes stay in cache), so the draws of several examples share one pass when ``num``
    is below ``batch`` (Cohen et al.'s reference code runs one example at a time). Each
    pass fills one preallocated buffer with N(0, σ²) noise in place and adds the clean
    examples by broadcasting, without materializing repeats; on the CPU the buffer is
    channels-last (about 1.7× faster convolutions), with a fallback to the standard
    layout for a model that rejects it. Counted on ``x``'s device with ``torch.bincount``.

    Args:
        model: maps noisy inputs (rows, C, H, W) to logits (rows, K); the function
            being smoothed (base classifier composed with any preprocessing).
        x: clean inputs (N, C, H, W) in [0, 1].
        num: noise draws per example.
        sigma: noise standard deviation.
        batch: maximum rows per forward pass.
        generator: RNG on ``x``'s device; the global RNG when None.
        autocast: run the model under CUDA autocast (fp16). Ignored off CUDA: never
            autocast on the CPU (bf16 there changes predictions).

    Returns:
        (N, K) int64 counts on ``x``'s device.

    Raises:
        ValueError: on ``num < 0``, ``batch < 1`` or when no sample is drawn.
    """
    if num < 0 or batch < 1:
        raise ValueError(f"need num >= 0 and batch >= 1, got num={num}, batch={batch}")
    n = x.shape[0]
    total = n * num
    if total == 0:
        raise ValueError("no samples drawn (empty batch or num = 0)")
    on_cpu = x.device.type == "cpu"
    rows = min(batch, total, CPU_ROWS_PER_PASS if on_cpu else batch)
    use_amp = autocast and x.device.type == "cuda"
    channels_last = on_cpu and x.dim() == 4
    counts: torch.Tensor | None = None
    with torch.inference_mode():
        buf = _buffer(x, rows, channels_last)
        for start in range(0, total, rows):
            stop = min(start + rows, total)
            noisy = buf[:stop - start].normal_(0.0, sigma, generator=generator)
            _add_clean(noisy, x, start, num)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                try:
                    logits = model(noisy)
                except RuntimeError:
                    if not channels_last or counts is not None:
                        raise  # a genuine error, not the layout
                    channels_last = False  # the model rejects channels-last input
                    buf = _buffer(x, rows, False)
                    noisy = buf[:stop - start].copy_(noisy)
                    logits = model(noisy)
            k = logits.shape[-1]
            if counts is None:
                counts = torch.zeros(n, k, dtype=torch.long, device=x.device)
            first, last = start // num, (stop - 1) // num
            owner = torch.arange(start, stop, device=x.device).div_(num, rounding_mode="floor")
            local = (owner - first).mul_(k).add_(logits.argmax(dim=-1))
            span = last - first + 1
            counts[first:last + 1] += torch.bincount(local, minlength=span * k).view(span, k)
    if counts is None:
        raise ValueError("no samples drawn (empty batch or num = 0)")
    return counts


def _buffer(x: torch.Tensor, rows: int, channels_last: bool) -> torch.Tensor:
    """An uninitialized (rows, *x.shape[1:]) buffer; channels-last strides set explicitly
    (``contiguous(memory_format=...)`` leaves a one-channel tensor in the layout whose
    convolutions take the slow path)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((rows, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)


def _add_clean(noisy: torch.Tensor, x: torch.Tensor, start: int, num: int) -> None:
    """Add the clean examples to a pass's noise in place, by broadcasting.

    Row r of ``noisy`` is global row ``start + r`` of the example-major layout, which
    belongs to example ``(start + r) // num``: a pass is at most a partial example, a
    block of whole ones and another partial one.
    """
    size, pos = noisy.shape[0], 0
    head = min((num - start % num) % num, size)
    if head:
        noisy[:head].add_(x[start // num])
        pos = head
    whole = (size - pos) // num
    if whole:
        first = (start + pos) // num
        block = noisy[pos:pos + whole * num].view(whole, num, *x.shape[1:])
        block.add_(x[first:first + whole].unsqueeze(1))
        pos += whole * num
    if pos < size:
        noisy[pos:].add_(x[(start + pos) // num])


def predict_from_counts(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """PREDICT's answer from class counts (Cohen et al. 2019; Hung et al. 2019 test).

    Args:
        counts: (N, C) noise-sample counts per class.
        alpha: the test's level: abstain unless p ≤ alpha.

    Returns:
        (N,) int64 class, −1 where PREDICT abstains (on ``counts``' device).
    """
    top2 = counts.topk(2, dim=1)
    p = binomial_two_sided_pvalue(top2.values[:, 0], top2.values[:, 1]).to(counts.device)
    return torch.where(p <= alpha, top2.indices[:, 0], torch.full_like(top2.indices[:, 0], -1))


class SmoothedDefense(Defense):
    """The smoothed classifier g around a base classifier f (see the module docstring).

    Args:
        classifier: the base classifier f.
        steps: preprocessing applied after the noise (usually none).
        sigma: noise level σ in [0, 1] input units.
        samples: noise draws per example in each ``forward`` call (PREDICT's n).
        alpha: PREDICT's level.
        batch: rows per base-model forward pass.
    """

    #: Attacks run the noisy base classifier with EOT (the soft smoothed classifier of
    #: Salman et al. 2019), not PREDICT's counts, which have no gradient.
    pipeline_view = True
    #: PREDICT's reject output is an abstention: an error in the headline, as in certified
    #: accuracy (Cohen et al. 2019 count abstentions as wrong).
    abstains = True

    def __init__(self, classifier: nn.Module, steps: Sequence[Step] = (), sigma: float = 0.25,
                 samples: int = 100, alpha: float = 0.001, batch: int = 1000) -> None:
        if samples < 2:
            raise ValueError(f"samples must be >= 2, got {samples}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        super().__init__(RejectColumn(classifier), [GaussianNoise(sigma), *steps], rejects=True)
        self.sigma = float(sigma)
        self.samples = int(samples)
        self.alpha = float(alpha)
        self.batch = int(batch)

    @property
    def base(self) -> nn.Module:
        """The base classifier f."""
        return self.classifier.model

    def base_logits(self, z: torch.Tensor) -> torch.Tensor:
        """f(preprocess(z)) on an already noisy input ``z``: the function being smoothed."""
        for step in list(self.steps)[1:]:
            z = step(z)
        return self.base(z)

    def counts(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """(N, C) counts of f's top class over ``samples`` noise draws per example.

        Uses the global RNG on ``x``'s device (the defense is randomized).
        """
        return sample_counts(self.base_logits, x, samples, self.sigma, batch=self.batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """PREDICT scores, (N, C + 1); the base logits while f is being trained."""
        if self.base.training:
            return self.base_logits(x)
        with torch.no_grad():
            counts = self.counts(x, self.samples)
            pred = predict_from_counts(counts, self.alpha)
            freq = counts.to(x.dtype) / self.samples
            reject = torch.where(pred < 0, 2.0, -1.0).to(freq).unsqueeze(1)
            return torch.cat([freq, reject], dim=1)
