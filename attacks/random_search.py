"""Uniform random sampling in the threat ball: the gradient-masking control.

If random points find adversarial examples that gradient attacks missed, the
gradients were masked (Athalye, Carlini & Wagner 2018, "Identifying obfuscated and
masked gradients": random sampling finds adversarial examples; Carlini et al. 2019,
"On evaluating adversarial robustness", same check in its checklist).

The attack draws ``samples`` points per example uniformly from the ball (ℓ2: uniform
in volume; :meth:`ThreatModel.uniform_delta`), clips them to [0, 1], scores them on the
defense's exact forward pass (no gradients, one draw of a randomized defense per point)
and keeps the lowest-margin point per example. With ε = ∞ the points are uniform in the
box. Every example receives all its samples (no early stop), so the count is exactly
``samples``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gauntlet.attacks.adaptive import AdaptiveView, BestTracker, evaluate
from gauntlet.attacks.base import ATTACKS, Attack, AttackContext, AttackResult
from gauntlet.benchmark import streams
from gauntlet.benchmark.streams import Draws
from gauntlet.benchmark.threats import ThreatModel


def random_search(defense: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                  samples: int = 100, chunk: int = 10,
                  generator: Draws) -> tuple[torch.Tensor, dict]:
    """The lowest-margin of ``samples`` uniform points in the ball, per example.

    Args:
        defense: the defense, queried through its exact forward pass only.
        x: clean inputs in [0, 1].
        y: true labels.
        threat: the threat model.
        samples: points drawn per example.
        chunk: samples per example evaluated in one batched forward pass.
        generator: per-example streams (:class:`gauntlet.benchmark.streams.RowStreams`) or a
            seeded CPU generator.

    Returns:
        (x_best, info) with ``samples`` and ``broken_fraction`` (share of examples with a
        sampled point of negative margin).

    Raises:
        ValueError: ``samples`` or ``chunk`` below 1.
    """
    if samples < 1 or chunk < 1:
        raise ValueError(f"samples and chunk must be >= 1, got {samples} and {chunk}")
    view = AdaptiveView(defense, bpda=False, eot=1)
    best = BestTracker(x)
    # A deterministic defense's broken example stays broken: it draws no more samples.
    drop = not bool(getattr(defense, "randomized", False))
    active = torch.arange(len(x), device=x.device)
    done = 0
    while done < samples and len(active):
        k, n = min(chunk, samples - done), len(active)
        xa = x[active]
        xk = xa.repeat(k, *([1] * (x.dim() - 1)))  # row j·n + i is example i
        draws = streams.fork(streams.rows(generator, active), k)
        cand = threat.project(xk + threat.uniform_delta(xk, draws), xk)
        m = evaluate(view, cand, y[active].repeat(k), "margin", grad=False).margin.view(k, n)
        m_best, j = m.min(0)
        best.update(cand[j * n + torch.arange(n, device=x.device)], m_best, active)
        done += k
        if drop:
            active = active[best.margin[active] >= 0]
    return best.x, {"samples": samples, "broken_fraction": float((best.margin < 0).float().mean())}


@ATTACKS.register
class RandomSearch(Attack):
    """Uniform random points in the ε-ball, best margin kept."""

    id = "random"
    summary = "Uniform random sampling in the ball (100 points per example)"
    gradient_free = True
    random_sampling = True
    #: At its default: the black-box attack that applies to every defense, so a
    #: full-budget black-box attack always runs (:mod:`gauntlet.attacks.budgets`).
    FLOORS = {"samples": 100}

    @dataclass(frozen=True)
    class Params:
        """Random sampling parameters."""

        #: Points drawn per example.
        samples: int = 100
        #: Samples per example evaluated in one batched forward pass.
        chunk: int = 10

    def budget(self) -> float:
        return float(self.params.samples)

    def run(self, defense: nn.Module, x: torch.Tensor, y: torch.Tensor,
            threat: ThreatModel, ctx: AttackContext) -> AttackResult:
        p = self.params
        x_adv, info = random_search(defense, x, y, threat, samples=p.samples, chunk=p.chunk,
                                    generator=ctx.generator)
        return AttackResult(x_adv, info)
