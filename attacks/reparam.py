"""The reparameterized attack (Athalye, Carlini & Wagner 2018, §4.3).

A defense that projects its input onto the range of a generator (Defense-GAN:
g(x) = G(argmin_z ‖G(z) − x‖)) has useless gradients, but with x = h(z) and
g(h(z)) = h(z) the attacker can optimize over z instead: the defended logits at h(z)
are the classifier's logits at h(z), which are differentiable in z.

Contract for defense authors
----------------------------
``defense.reparameterization`` returns None (no reparameterization) or an object with

* ``generate(z) -> x``: the differentiable map h from latent codes of shape (N, ...) to
  inputs of the defense's input shape, with g(h(z)) ≈ h(z) (a point the generator
  produces is left, approximately, unchanged by the defense's preprocessing);
* ``encode(x) -> z``: latent codes with h(z) ≈ x, e.g. the defense's own projection
  (the z the preprocessing finds); it is called once, without gradients.

``defense.classifier`` maps inputs to logits (with a last "reject" logit when
``defense.rejects``), as in :class:`gauntlet.defenses.pipeline.Defense`.

Attack
------
z₀ = encode(x); Adam (lr 0.01, 100 steps) minimizes, per example,
−L(classifier(h(z)), y) + λ·pen(h(z) − h(z₀))/r², L the cross-entropy on folded logits
and pen the squared excess over the threat ball (ℓ∞: Σ_i relu(|δ_i| − r)²; ℓ2:
relu(‖δ‖₂ − r)²; none when ε = ∞), λ = 10. The perturbation is the move along the
generator's range, h(z) − h(z₀), applied to x: a generator rarely reproduces x exactly
(a small VAE's h(z₀) is ~0.1 RMS from an MNIST digit, outside the ℓ2 ball), so requiring
h(z) itself to lie in the ball around x would leave no feasible point, while x + h(z) −
h(z₀) projects back near h(z) when the move follows the range. When h(z₀) = x this is
Athalye et al.'s x' = h(z). Every ``eval_every`` steps (and at the end) the candidate
threat.project(x + h(z) − h(z₀), x) is scored on the defense's exact forward pass (one
draw of a randomized defense), and the lowest-margin candidate per example is returned;
the clean point (the candidate at z₀) is one too. No random numbers are drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gauntlet.attacks.adaptive import AdaptiveView, BestTracker, evaluate
from gauntlet.attacks.base import ATTACKS, Attack, AttackContext, AttackResult
from gauntlet.attacks.losses import LOSSES, fold_reject
from gauntlet.benchmark.threats import ThreatModel


def ball_penalty(delta: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Per-example squared excess of ``delta`` over the threat ball, divided by r².

    Args:
        delta: perturbations h(z) − x.
        threat: the threat model (no penalty when ε = ∞).

    Returns:
        ℓ∞: Σ_i relu(|δ_i| − r)² / r²; ℓ2: relu(‖δ‖₂ − r)² / r², one value per example.
    """
    d = delta[0].numel()
    r = threat.radius(d)
    flat = delta.reshape(len(delta), -1)
    if math.isinf(r):
        return torch.zeros(len(delta), device=delta.device, dtype=delta.dtype)
    if threat.norm == "linf":
        excess = (flat.abs() - r).clamp_min(0).pow(2).sum(1)
    else:
        excess = (flat.norm(dim=1) - r).clamp_min(0).pow(2)
    return excess / max(r, 1e-12) ** 2


@ATTACKS.register
class Reparam(Attack):
    """Adam over the latent code of the defense's generator (BPDA by reparameterization)."""

    id = "reparam"
    adaptive = True
    summary = "Reparameterized attack through the defense's generator (Athalye et al. §4.3)"
    needs_reparameterization = True
    #: At its default: the adaptive attack of the defenses it applies to.
    FLOORS = {"steps": 100}

    @dataclass(frozen=True)
    class Params:
        """Latent-space attack parameters."""

        #: Adam steps on z.
        steps: int = 100
        #: Adam learning rate in latent units.
        lr: float = 0.01
        #: Weight λ of the ball penalty.
        penalty: float = 10.0
        #: Loss maximized on the classifier: "ce", "margin" or "dlr".
        loss: str = "ce"
        #: Score the projected candidate on the true defense every this many steps.
        eval_every: int = 10

    def budget(self) -> float:
        return float(self.params.steps)

    def run(self, defense: nn.Module, x: torch.Tensor, y: torch.Tensor,
            threat: ThreatModel, ctx: AttackContext) -> AttackResult:
        """Optimize the latent code; return the best projected candidate per example.

        Raises:
            ValueError: the defense exposes no reparameterization.
        """
        rep = getattr(defense, "reparameterization", None)
        if rep is None:
            raise ValueError("attack 'reparam' needs defense.reparameterization (see gauntlet.attacks.reparam)")
        p = self.params
        if p.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {p.eval_every}")
        view = AdaptiveView(defense, bpda=False, eot=1)
        rejects = view.rejects  # a detector's reject is folded in; an abstention is not
        loss_fn = LOSSES[p.loss]
        best = BestTracker(x)
        best.update(x, evaluate(view, x, y, "margin", grad=False).margin)

        with torch.no_grad():
            z = rep.encode(x).detach().clone()
            anchor = rep.generate(z)  # h(z₀): the defense's own reconstruction of x

        def score(z: torch.Tensor) -> None:
            with torch.no_grad():
                cand = threat.project(x + (rep.generate(z) - anchor), x)
                best.update(cand, evaluate(view, cand, y, "margin", grad=False).margin)

        # No score at z₀: its candidate x + h(z₀) − h(z₀) is x, scored above.
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=p.lr)
        for i in range(p.steps):
            with torch.enable_grad():
                xh = rep.generate(z)
                logits = fold_reject(defense.classifier(xh), y, rejects)
                obj = -loss_fn(logits, y) + p.penalty * ball_penalty(xh - anchor, threat)
                opt.zero_grad()
                obj.sum().backward()
            opt.step()
            if (i + 1) % p.eval_every == 0 or i + 1 == p.steps:
                score(z.detach())
        info = {"broken_fraction": float((best.margin < 0).float().mean())}
        return AttackResult(best.x, info)
