"""The adaptive view of a defense: exact forward values, adapted gradients.

Athalye, Carlini & Wagner (2018) broke defenses by changing only how gradients are
computed, never what is scored:

* **BPDA** (§4.1): a non-differentiable step g keeps its exact value on the forward pass
  and uses its declared ``approximation`` g̃ on the backward pass (straight-through:
  ``g(x).detach() + g̃(x) − g̃(x).detach()``; identity when g̃ is the identity).
* **EOT** (§4.2): for randomized defenses the gradient of E_t f(t(x)) is E_t ∇f(t(x)),
  estimated with k draws. The k draws run as one batched pass of N·k rows.
* **Reparameterization** (§4.3) lives in :mod:`gauntlet.attacks.reparam`.

``bpda=False`` is the naive view: it back-propagates through each step as implemented.
A step whose output carries no gradient (a codec run outside autograd) then contributes
a zero gradient, which is what a naive evaluation sees and what the ``zero-gradients``
flag measures.

Speed (CPU): the classifier of a pipeline runs on a channels-last copy of its input
(oneDNN's native layout: on SmallCNN/MNIST the first convolution and max pooling run
several times faster, a forward pass ~1.7×, a PGD step 1.1–1.5×). Values are the same up to float rounding. A classifier that cannot take
that layout (``.view`` on a channels-last activation) is detected on the first call and
run as is from then on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gauntlet.attacks.losses import LOSSES, TARGETED_LOSSES, fold_reject, margin


class AdaptiveView(nn.Module):
    """A differentiable module over a defense.

    Args:
        defense: a :class:`gauntlet.defenses.pipeline.Defense` (or any module with the contract).
        bpda: replace non-differentiable steps' gradients by their approximation.
        eot: draws of the randomness averaged per gradient (ignored when the defense is
            deterministic, since every draw is the same).
    """

    def __init__(self, defense: nn.Module, bpda: bool = False, eot: int = 1) -> None:
        super().__init__()
        if eot < 1:
            raise ValueError(f"eot must be >= 1, got {eot}")
        self.defense = defense
        self.bpda = bpda
        self.eot = eot if getattr(defense, "randomized", False) else 1
        # A detector's reject logit is folded into the true class (the attacker must evade
        # it); an abstention counts as an error, so for the attacker it is one more wrong
        # class and is left unfolded.
        self.rejects = bool(getattr(defense, "rejects", False)) and not bool(getattr(defense, "abstains", False))
        #: The view applies the steps and the classifier itself (else: the defense as a whole).
        self.pipeline = _is_pipeline(defense)
        #: Run the classifier on channels-last input (None: not tried yet).
        self.channels_last: bool | None = None
        #: A defense that lives elsewhere (a sandbox, :mod:`gauntlet.benchmark.remote`) computes its
        #: view where it lives: the same steps, approximations and draws, one call.
        served = getattr(defense, "served_view", None)
        self.served = served(self.bpda, self.eot) if callable(served) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (k, N, C'): k draws of the exact defense, adapted gradients."""
        if self.served is not None:
            return self.served(x)
        n = x.shape[0]
        h = x.repeat(self.eot, *([1] * (x.dim() - 1))) if self.eot > 1 else x
        steps = getattr(self.defense, "steps", None) if self.pipeline else None
        if steps is None:  # a defense that is not a pipeline: differentiate it as is
            out = _connect(self.defense(h), h)
        else:
            for step in steps:
                h = self._apply(step, h)
            out = _connect(self._classify(h), h)
        return out.view(self.eot, n, *out.shape[1:])

    def _classify(self, h: torch.Tensor) -> torch.Tensor:
        """The classifier on ``h``, in channels-last layout on the CPU when it accepts it."""
        classifier = self.defense.classifier
        if self.channels_last is False or h.dim() != 4 or h.device.type != "cpu":
            return classifier(h)
        try:
            out = classifier(_channels_last(h))
        except RuntimeError:
            if self.channels_last:  # it worked before: a genuine error
                raise
            self.channels_last = False
            return classifier(h)
        self.channels_last = True
        return out

    def _apply(self, step: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if getattr(step, "differentiable", True):
            return _connect(step(x), x)
        if not self.bpda:
            return _connect(step(x), x)
        with torch.no_grad():
            exact = step(x)
        approx = step.approximation(x)
        return exact.detach() + approx - approx.detach()


def _is_pipeline(defense: nn.Module) -> bool:
    """Whether the view may apply ``defense``'s steps and classifier itself (BPDA needs
    that): true when ``forward`` is :class:`Defense`'s ``classifier(steps(x))``. A subclass
    that overrides ``forward`` is differentiated as a whole, unless it declares
    ``pipeline_view = True`` (its steps and classifier are a differentiable stand-in for
    its forward, as the noisy base classifier is for a smoothed one)."""
    from gauntlet.defenses.pipeline import Defense  # here: the site imports attacks, never defenses

    if isinstance(defense, Defense):
        declared = getattr(defense, "pipeline_view", None)
        return type(defense).forward is Defense.forward if declared is None else bool(declared)
    return getattr(defense, "steps", None) is not None  # duck-typed pipelines (tests, plugins)


def _channels_last(h: torch.Tensor) -> torch.Tensor:
    """A channels-last copy of (N, C, H, W) ``h``, differentiable. ``h.contiguous(
    memory_format=...)`` returns a one-channel tensor unchanged, and convolutions then
    keep the slow NCHW path, so the strides are set explicitly."""
    return torch.empty_like(h, memory_format=torch.channels_last).copy_(h)


def _connect(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Keep the autograd graph connected: an output computed outside autograd (numpy,
    Pillow) gets a zero gradient instead of breaking ``backward``."""
    if x.requires_grad and not out.requires_grad:
        return out.detach() + 0.0 * x.sum()
    return out


@dataclass
class Evaluation:
    """One gradient query of the view at a batch of points.

    Attributes:
        loss: per-example loss averaged over the k draws.
        grad: ∂loss/∂x (averaged over draws), or None when not requested.
        margin: per-example margin averaged over draws (negative = misclassified).
        logits: per-example logits averaged over draws, reject folded in.
    """

    loss: torch.Tensor
    grad: torch.Tensor | None
    margin: torch.Tensor
    logits: torch.Tensor


#: Rows (examples × draws) per forward/backward pass on the CPU. Larger batches allocate
#: activations the allocator hands back to the OS between passes, and re-faulting those
#: pages costs more than the batch saves (SmallCNN, 320 rows: ~10k page faults and ~20%
#: slower per pass than 80-row passes; tests/benchmarks/test_bench_attacks.py).
#: An example's k draws always share one pass; None disables the split.
CPU_ROWS_PER_PASS: int | None = 128


#: Fewest rows (examples × draws) a CPU pass holds: below a few rows oneDNN and the BLAS
#: take other kernels, whose float rounding differs from the batched ones, so
#: :func:`evaluate` pads a smaller batch with copies of its first row. With it an
#: example's values do not depend on how many examples share its pass, which the
#: cascade's exactness needs (an attack's last few robust examples form small batches).
#: How few depends on the CPU: on an AVX2 Xeon SmallCNN's logits and gradients were
#: bit-equal from 4 rows on; on an AVX-512/AMX Xeon the zoo's SmallCNN and ResNet-9
#: (plain and thermometer) differ at 1–5 rows and are bit-equal from 6 on. 8 covers both
#: (`tests/test_speed_cascade.py` checks every batch size from 1 to 40); the padding
#: costs at most 7 rows, only on the smallest passes.
MIN_ROWS_PER_PASS = 8


def evaluate(view: AdaptiveView, x: torch.Tensor, y: torch.Tensor, loss: str = "ce",
             grad: bool = True, target: torch.Tensor | None = None) -> Evaluation:
    """Loss, margin and (optionally) input gradient of the view at ``x``.

    The loss of each example is the mean over its k draws, so its gradient is the EOT
    estimate E_t ∇f(t(x)) in a single backward pass. On the CPU, large batches run as
    consecutive passes of about :data:`CPU_ROWS_PER_PASS` rows, each holding all k draws
    of its examples; the per-example results are the same.

    Args:
        view: the adaptive view.
        x: the points.
        y: true labels.
        loss: a key of :data:`gauntlet.attacks.losses.LOSSES`, or of
            :data:`gauntlet.attacks.losses.TARGETED_LOSSES` together with ``target``.
        grad: also return ∂loss/∂x.
        target: per-example target classes, for a targeted loss only.

    Returns:
        The :class:`Evaluation` at ``x``.

    Raises:
        ValueError: a targeted loss without ``target``, or ``target`` with another loss.
    """
    if (loss in TARGETED_LOSSES) != (target is not None):
        raise ValueError(f"loss {loss!r} " + ("needs per-example targets" if target is None
                                              else "takes no target"))
    rows = CPU_ROWS_PER_PASS
    per_pass = len(x) if rows is None else max(1, rows // getattr(view, "eot", 1))
    short = MIN_ROWS_PER_PASS - len(x) * getattr(view, "eot", 1)
    if x.device.type == "cpu" and len(x) and short > 0:
        # Below MIN_ROWS_PER_PASS rows the CPU kernels round differently: pad with copies
        # of the first row, so an example's values do not depend on how many share its pass.
        pad = torch.cat([torch.arange(len(x)), torch.zeros(short, dtype=torch.long)]).to(x.device)
        full = _evaluate(view, x[pad], y[pad], loss, grad, None if target is None else target[pad])
        n = len(x)
        return Evaluation(loss=full.loss[:n], grad=full.grad[:n] if grad else None,
                          margin=full.margin[:n], logits=full.logits[:n])
    if x.device.type != "cpu" or len(x) <= per_pass:
        return _evaluate(view, x, y, loss, grad, target)
    targets = target.split(per_pass) if target is not None else [None] * len(y.split(per_pass))
    parts = [_evaluate(view, xs, ys, loss, grad, ts)
             for xs, ys, ts in zip(x.split(per_pass), y.split(per_pass), targets)]
    return Evaluation(loss=torch.cat([p.loss for p in parts]),
                      grad=torch.cat([p.grad for p in parts]) if grad else None,
                      margin=torch.cat([p.margin for p in parts]),
                      logits=torch.cat([p.logits for p in parts]))


def _evaluate(view: AdaptiveView, x: torch.Tensor, y: torch.Tensor, loss: str,
              grad: bool, target: torch.Tensor | None = None) -> Evaluation:
    x = x.detach().requires_grad_(grad)
    with torch.enable_grad() if grad else torch.no_grad():
        logits = view(x)  # (k, N, C')
        k, n = logits.shape[:2]
        yk = y.repeat(k)
        folded = fold_reject(logits.reshape(k * n, -1), yk, view.rejects)
        if target is None:
            per_row = LOSSES[loss](folded, yk).view(k, n)
        else:
            per_row = TARGETED_LOSSES[loss](folded, yk, target.repeat(k)).view(k, n)
        value = per_row.mean(0)
        g = torch.autograd.grad(value.sum(), x)[0].contiguous() if grad else None
    folded = folded.detach().view(k, n, -1)
    return Evaluation(loss=value.detach(), grad=g,
                      margin=margin(folded, y.expand(k, n)).mean(0),
                      logits=folded.mean(0))


#: Draws a margin estimate must average before it may choose an attack's kept point: below
#: that (single-draw PGD against a randomized defense) the lowest margin seen is mostly a
#: lucky draw, and the attacks keep their last iterate instead (EOT's k = 10 qualifies).
MIN_SELECTION_DRAWS = 10


def zero_gradient_rows(grad: torch.Tensor) -> torch.Tensor:
    """Per row: True when the gradient is all zero or has a non-finite value (shattered or
    cut gradients: the ``zero-gradients`` flag and the ``zero_gradients`` fact)."""
    flat = grad.reshape(len(grad), -1)
    return (~torch.isfinite(flat).all(1)) | (flat.abs().amax(1) == 0)


def observed_gradients(defense: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The share of examples whose raw input gradient (the naive view, cross-entropy) is
    zero or non-finite at the clean point: shattered or cut gradients a manifest did not
    declare (``defense_facts``' ``zero_gradients``)."""
    if len(x) == 0:
        return {"zero_fraction": 0.0, "examples": 0}
    zero = zero_gradient_rows(evaluate(AdaptiveView(defense), x, y, "ce").grad)
    return {"zero_fraction": round(float(zero.float().mean()), 6), "examples": len(x)}


class BestTracker:
    """The point an attack returns, per example: the lowest-margin point seen so far
    (AutoAttack keeps its best point too: an attack must not lose a success it found on
    the way), or, when margins cannot rank points (``select=False``), the last iterate.

    Against a randomized defense seen through fewer than :data:`MIN_SELECTION_DRAWS`
    draws per margin, the lowest margin seen is mostly a lucky draw (naive ``pgd`` on
    smoothing σ = 0.25 at ℓ∞ 0.1: 79.0% with the best point against 74.7% with the last
    iterate), so :meth:`for_view` turns selection off there; :meth:`update` is then a
    no-op (its margins need not be computed) and :meth:`last` records the final iterate.
    """

    def __init__(self, x: torch.Tensor, select: bool = True) -> None:
        self.x = x.detach().clone()
        self.margin = torch.full((x.shape[0],), float("inf"), device=x.device)
        #: The kept point is chosen by margin (else: the last iterate).
        self.select = select

    @classmethod
    def for_view(cls, view: AdaptiveView, x: torch.Tensor) -> BestTracker:
        """A tracker that selects by margin unless ``view`` sees a randomized defense
        through fewer than :data:`MIN_SELECTION_DRAWS` draws per margin."""
        randomized = view.eot > 1 or bool(getattr(view.defense, "randomized", False))
        return cls(x, select=not randomized or view.eot >= MIN_SELECTION_DRAWS)

    @property
    def kept(self) -> str:
        """Which point is returned, for the attack's ``info``."""
        return "lowest-margin point" if self.select else "last iterate"

    def last(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        """Record the final iterate of rows ``idx`` (kept only without selection)."""
        if not self.select:
            self.x[idx] = x.detach()

    def update(self, x: torch.Tensor, m: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """Record ``x`` where its margin ``m`` beats the best so far (rows ``idx``)."""
        if not self.select:
            return
        if idx is None:
            idx = torch.arange(self.x.shape[0], device=self.x.device)
        better = m < self.margin[idx]
        if better.any():
            rows = idx[better]
            self.x[rows] = x[better].detach()
            self.margin[rows] = m[better]
