"""Transfer attack: PGD on an undefended surrogate, replayed on the defense.

A black-box baseline (Papernot et al. 2017; Athalye et al. 2018 list "black-box attacks
beat white-box attacks" as a sign of obfuscated gradients): the runner supplies
``ctx.surrogate``, an undefended model of the same dataset; PGD (:func:`gauntlet.attacks.pgd.pgd`,
100 steps of α = 2.5·ε/100 from a uniform random start, one run, cross-entropy) attacks
it without early stopping, so every example ends at the surrogate's lowest-margin point
(higher-confidence points transfer better). The defense is then queried once, in one
batched no-grad pass over the clean and the transferred points; per example the
transferred point is returned only if its margin on the defense is lower than the clean
point's, otherwise the clean input is returned. The defense's gradients are never read.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gauntlet.attacks.adaptive import AdaptiveView, evaluate
from gauntlet.attacks.base import ATTACKS, Attack, AttackContext, AttackResult
from gauntlet.attacks.pgd import pgd
from gauntlet.benchmark.threats import ThreatModel


@ATTACKS.register
class Transfer(Attack):
    """PGD on ``ctx.surrogate``, scored on the defense."""

    id = "transfer"
    summary = "Transfer from an undefended surrogate (PGD, 100 steps)"
    gradient_free = True
    needs_surrogate = True
    #: Every budget at its default: the defense is queried once whatever the steps (they
    #: cost surrogate passes only), so lowering them would save the defense nothing.
    FLOORS = {"steps": 100, "restarts": 1}

    @dataclass(frozen=True)
    class Params:
        """PGD on the surrogate (Madry et al. 2018 step rule)."""

        #: PGD iterations on the surrogate.
        steps: int = 100
        #: Step size α as a fraction of the raw radius ε (2.5/steps).
        step_size: float = 2.5 / 100
        #: PGD runs on the surrogate.
        restarts: int = 1
        #: Loss maximized on the surrogate: "ce", "margin" or "dlr".
        loss: str = "ce"

    def budget(self) -> float:
        return float(self.params.steps * self.params.restarts)

    def run(self, defense: nn.Module, x: torch.Tensor, y: torch.Tensor,
            threat: ThreatModel, ctx: AttackContext) -> AttackResult:
        """Attack the surrogate, replay on ``defense``.

        Raises:
            ValueError: the runner gave no surrogate model.
        """
        if ctx.surrogate is None:
            raise ValueError("attack 'transfer' needs ctx.surrogate (an undefended model of the "
                             "same dataset); the runner passed None")
        p = self.params
        x_sur, sur_info = pgd(AdaptiveView(ctx.surrogate), x, y, threat, steps=p.steps,
                              step_size=p.step_size, restarts=p.restarts, random_start=True,
                              loss=p.loss, generator=ctx.generator, early_stop=False)
        n = len(x)
        m = evaluate(AdaptiveView(defense), torch.cat([x, x_sur]), torch.cat([y, y]),
                     "margin", grad=False).margin
        better = m[n:] < m[:n]
        x_adv = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_sur, x)
        info = {
            "surrogate_broken_fraction": float((_surrogate_margin(ctx.surrogate, x_sur, y) < 0)
                                               .float().mean()),
            "kept_fraction": float(better.float().mean()),
            "defense_broken_fraction": float((torch.where(better, m[n:], m[:n]) < 0).float().mean()),
            "surrogate_zero_grad_fraction": sur_info["zero_grad_fraction"],
        }
        return AttackResult(x_adv, info)


def _surrogate_margin(surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return evaluate(AdaptiveView(surrogate), x, y, "margin", grad=False).margin
