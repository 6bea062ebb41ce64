"""FGSM and projected gradient descent, naive and adaptive.

PGD (Madry et al. 2018, Eq. 2): x ← Π(x + α·step(∇L)), from a uniform random start in
the ball, with step(·) the steepest-ascent direction of the threat's norm (sign for ℓ∞,
normalized gradient for ℓ2). Defaults: 40 steps (Madry et al.'s MNIST budget) of size
α = 2.5·ε/steps (the step rule of Madry et al.'s ``robustness`` library, large enough to
cross the ball from any start), cross-entropy loss.

The same loop runs on four views of the defense (:mod:`gauntlet.attacks.adaptive`): raw
gradients (``pgd``, what a naive evaluation does), BPDA (``pgd-bpda``), EOT
(``pgd-eot``) and both (``pgd-bpda-eot``). Every variant keeps the lowest-margin point it
visited, and stops attacking an example of a deterministic defense once it is broken.
Against a randomized defense seen one draw per gradient (``pgd``, ``pgd-bpda``, FGSM) a
visited point's margin is a single noisy draw, so such a run returns its last iterate
(:class:`gauntlet.attacks.adaptive.BestTracker`); with EOT the kept point is chosen on the k-draw
mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gauntlet.attacks.adaptive import AdaptiveView, BestTracker, evaluate, zero_gradient_rows
from gauntlet.attacks.base import ATTACKS, Attack, AttackContext, AttackResult
from gauntlet.benchmark import streams
from gauntlet.benchmark.streams import Draws
from gauntlet.benchmark.threats import ThreatModel


def pgd(view: AdaptiveView, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
        steps: int, step_size: float, restarts: int, random_start: bool, loss: str,
        generator: Draws, early_stop: bool = True) -> tuple[torch.Tensor, dict]:
    """Run PGD on ``view`` and return the best point per example and diagnostics.

    Args:
        step_size: α as a fraction of the threat's raw radius.
        early_stop: drop examples of a deterministic defense once broken.

    Returns:
        (x_best, info) with ``info["zero_grad_fraction"]``: among the examples attacked
        (those a deterministic defense already misclassifies are not, under early
        stopping), the share whose first gradient, at their starting point, was zero or
        non-finite (the ``zero-gradients`` flag); for a randomized defense seen one draw at a time (no EOT) also
        ``info["gradient_draw_cosine"]``: the median cosine similarity between that
        gradient and a second one drawn at the same points (the ``stochastic-gradients``
        flag; one extra gradient query).

    Cost: ``restarts × steps`` gradient queries plus one forward pass per restart (the
    last point) and one for the clean point when starting at random; an example that a
    deterministic defense misclassifies is dropped as soon as it is found.
    """
    d = x[0].numel()
    alpha = threat.step_size(d, step_size)
    stochastic = view.eot > 1 or bool(getattr(view.defense, "randomized", False))
    drop = early_stop and not stochastic
    best = BestTracker.for_view(view, x)  # one noisy draw per point cannot rank points
    if random_start and best.select:  # the clean point competes too (else step 1 is at x)
        best.update(x, evaluate(view, x, y, loss, grad=False).margin)
    zero: torch.Tensor | None = None  # per attacked example: first gradient zero/non-finite
    cosine: torch.Tensor | None = None  # per attacked example: cos(∇ draw 1, ∇ draw 2) at the start
    for restart in range(restarts):
        active = torch.arange(len(x), device=x.device)
        if drop and (random_start or restart > 0):
            active = active[best.margin >= 0]
        if len(active) == 0:
            break
        x0, y0 = x[active], y[active]
        xa = threat.random_start(x0, streams.rows(generator, active)) if random_start else x0.clone()
        box = _linf_box(threat, x0)
        for _ in range(steps):
            ev = evaluate(view, xa, y0, loss)
            best.update(xa, ev.margin, active)
            if zero is None:
                zero = zero_gradient_rows(ev.grad)
                # A second single draw: how noisy is one gradient? (Not when every first
                # gradient is zero: the cosine is undefined and the query would be wasted.)
                if stochastic and view.eot == 1 and not bool(zero.all()):
                    cosine = _draw_cosine(ev.grad, evaluate(view, xa, y0, loss).grad)
            g = ev.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            if box is None:
                xa = threat.project(xa + threat.step(g, alpha), x0)
            else:  # ℓ∞: the sign step, then the projection onto the ball ∩ [0,1] = one clamp
                xa = torch.clamp(xa.add_(g.sign_(), alpha=alpha), *box)
            if drop:
                keep = best.margin[active] >= 0
                if not keep.all():
                    active, x0, y0, xa = active[keep], x0[keep], y0[keep], xa[keep]
                    if box is not None:
                        box = (box[0][keep], box[1][keep])
                    if len(active) == 0:
                        break
        if len(active):
            best.last(xa, active)
            if best.select:
                best.update(xa, evaluate(view, xa, y0, loss, grad=False).margin, active)
    fraction = float(zero.float().mean()) if zero is not None else 0.0
    info: dict = {"zero_grad_fraction": fraction}
    if cosine is not None:
        finite = cosine[torch.isfinite(cosine)]
        info["gradient_draw_cosine"] = float(finite.median()) if len(finite) else None
    info["kept"] = best.kept
    return best.x, info


def _draw_cosine(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Per row, the cosine similarity of two gradient estimates (NaN where one is zero)."""
    a, b = g1.flatten(1).double(), g2.flatten(1).double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _linf_box(threat: ThreatModel, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For ℓ∞, the feasible set around ``x0`` is a box [lo, hi] (the ball ∩ [0, 1]), so
    projecting onto it is clamping; its corners are the threat's own projections of the
    points 0 and 1. None for other norms."""
    if threat.norm != "linf":
        return None
    return threat.project(torch.zeros_like(x0), x0), threat.project(torch.ones_like(x0), x0)


class PGD(Attack):
    """PGD on raw gradients: what a naive evaluation runs."""

    id = "pgd"
    summary = "PGD, raw gradients (naive)"
    naive_baseline = True
    bpda = False
    eot_default = 1
    #: Every budget at its default: α = 2.5·ε/40 is tied to the 40 steps (Madry et al.'s
    #: rule), so fewer steps would not cross the ball, and one run, one draw are minimal.
    FLOORS = {"steps": 40, "restarts": 1, "eot": 1}

    @dataclass(frozen=True)
    class Params:
        """PGD parameters (Madry et al. 2018)."""

        #: Iterations per restart.
        steps: int = 40
        #: Step size α as a fraction of the raw radius ε (2.5/steps: Madry et al.'s rule).
        step_size: float = 2.5 / 40
        #: Random restarts (each from a uniform point in the ball).
        restarts: int = 1
        #: Start from a uniform random point in the ball rather than x.
        random_start: bool = True
        #: Loss maximized: "ce" (cross-entropy), "margin" or "dlr".
        loss: str = "ce"
        #: Draws of the defense's randomness averaged per gradient (EOT).
        eot: int = 1

    def view(self, defense: nn.Module) -> AdaptiveView:
        """The view of the defense this variant attacks through."""
        return AdaptiveView(defense, bpda=self.bpda, eot=self.params.eot)

    def budget(self) -> float:
        p = self.params
        return float(p.steps * p.restarts * p.eot)

    def run(self, defense, x, y, threat, ctx: AttackContext) -> AttackResult:
        p = self.params
        x_adv, info = pgd(self.view(defense), x, y, threat, steps=p.steps, step_size=p.step_size,
                          restarts=p.restarts, random_start=p.random_start, loss=p.loss,
                          generator=ctx.generator)
        return AttackResult(x_adv, info)


@ATTACKS.register
class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of length ε from x,
    on raw gradients (sign for ℓ∞, normalized gradient for ℓ2)."""

    id = "fgsm"
    summary = "FGSM, one step, raw gradients"
    naive_baseline = False
    one_step = True
    #: One step is what FGSM is: nothing to lower.
    FLOORS = {"steps": 1, "restarts": 1, "eot": 1}

    @dataclass(frozen=True)
    class Params(PGD.Params):
        """One full-ε step from the clean input."""

        steps: int = 1
        step_size: float = 1.0
        random_start: bool = False


ATTACKS.register(PGD)


@ATTACKS.register
class PGDBPDA(PGD):
    """PGD through the BPDA view (Athalye et al. 2018, §4.1)."""

    id = "pgd-bpda"
    summary = "PGD with BPDA through non-differentiable steps"
    bpda = True
    naive_baseline = False
    adaptive = True
    needs_non_differentiable = True


@ATTACKS.register
class PGDEOT(PGD):
    """PGD with expectation over transformation, k draws per gradient (§4.2)."""

    id = "pgd-eot"
    summary = "PGD with EOT over the defense's randomness"
    needs_randomness = True
    naive_baseline = False
    adaptive = True
    #: Draws per gradient may drop to 2, the fewest that still average the randomness
    #: (k = 1 is the non-EOT twin, which runs anyway); steps and runs as PGD's.
    FLOORS = {"steps": 40, "restarts": 1, "eot": 2}

    @dataclass(frozen=True)
    class Params(PGD.Params):
        """PGD with k = 10 draws per gradient."""

        eot: int = 10


@ATTACKS.register
class PGDBPDAEOT(PGDEOT):
    """PGD with both BPDA and EOT (Athalye et al. 2018, §4.1–4.2)."""

    id = "pgd-bpda-eot"
    summary = "PGD with BPDA and EOT"
    bpda = True
    needs_non_differentiable = True


class BlindView(AdaptiveView):
    """The defense as a rejection-blind attacker models it: the reject logit is dropped,
    so the loss only asks for a wrong class and ignores whether the detector fires."""

    def __init__(self, defense: nn.Module, bpda: bool = False, eot: int = 1) -> None:
        super().__init__(defense, bpda=bpda, eot=eot)
        self.rejects = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the real classes only, (k, N, C)."""
        return super().forward(x)[..., :-1]


@ATTACKS.register
class PGDBlind(PGD):
    """PGD on raw gradients of the class logits only, ignoring the reject option.

    The attack a detector's authors typically evaluate against (Carlini & Wagner 2017,
    "Adversarial Examples Are Not Easily Detected", §3: the zero-knowledge adversary).
    It is scored on the real defense, where a rejected input is a failed attack, and it
    runs only against defenses that reject, as the baseline the rejection-aware attacks
    (every other attack folds the reject logit into its loss) are compared with.
    """

    id = "pgd-blind"
    summary = "PGD blind to the reject option (detector-unaware baseline)"
    needs_rejection = True

    def view(self, defense: nn.Module) -> AdaptiveView:
        return BlindView(defense, bpda=self.bpda, eot=self.params.eot)
