"""The defense contract: a pipeline of preprocessing steps in front of a classifier.

A :class:`Defense` maps a batch in [0, 1] to logits and declares what an adaptive
attack needs (DESIGN.md, "A defense"):

* each :class:`Step` gives its exact ``forward`` (what is scored), whether true
  gradients exist (``differentiable``), a differentiable stand-in for the backward
  pass (``approximation``, BPDA; Athalye et al. 2018, §4.1: identity by default), and
  whether each call draws fresh randomness (``randomized``, then EOT applies);
* a defense may expose a reparameterization ``h(z)`` with ``g(h(z)) = h(z)``
  (``reparameterization``), used by the ``reparam`` attack;
* a defense that may reject an input (a detector, an abstaining smoothed classifier)
  sets ``rejects = True`` and returns one extra, last logit for "reject".
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Step(nn.Module):
    """One preprocessing step. Subclasses override ``forward`` and the declarations."""

    #: True gradients exist and are useful.
    differentiable: bool = True
    #: Each call draws fresh randomness.
    randomized: bool = False

    def approximation(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable stand-in g̃ with g̃(x) ≈ g(x), used on the backward pass (BPDA)."""
        return x


class Defense(nn.Module):
    """``classifier(step_n(...step_1(x)))`` plus the declarations the attacks read.

    Args:
        classifier: maps the last step's output to logits. May itself declare
            ``randomized = True`` (e.g. stochastic activation pruning).
        steps: preprocessing steps applied in order.
        rejects: the last logit column means "reject the input" (also set when the
            classifier itself declares ``rejects = True``, e.g. a detector).
    """

    #: Whether attacks may run ``classifier(steps(x))`` themselves (BPDA, EOT) instead of
    #: ``forward``: None = only when ``forward`` is not overridden. A subclass whose own
    #: ``forward`` differs but whose steps and classifier stand in for it sets True.
    pipeline_view: bool | None = None
    #: The reject output is an *abstention* ("I do not know", a smoothed classifier's
    #: PREDICT), not a detection: scoring counts an abstention on an adversarial input as
    #: an error, as certified accuracy does, and attacks count it as a success. A
    #: detector (``abstains = False``) wins when it rejects an adversarial input.
    abstains: bool = False
    #: Set by the runner when it observes zero or non-finite raw input gradients at the
    #: clean points (gradient masking no step declared); gradient estimation then applies.
    zero_gradients: bool = False

    def __init__(self, classifier: nn.Module, steps: Sequence[Step] = (), rejects: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.steps = nn.ModuleList(steps)
        self.rejects = rejects or bool(getattr(classifier, "rejects", False))

    #: Set (through ``randomized = True``) when the manifest declares randomness or the
    #: runner observes it although no step or classifier declares it.
    _randomized_override: bool = False

    @property
    def randomized(self) -> bool:
        """Whether two calls on the same input may differ."""
        return (self._randomized_override or any(s.randomized for s in self.steps)
                or bool(getattr(self.classifier, "randomized", False)))

    @randomized.setter
    def randomized(self, value: bool) -> None:
        self._randomized_override = bool(value)

    @property
    def differentiable(self) -> bool:
        """Whether every step has useful true gradients."""
        return all(s.differentiable for s in self.steps)

    @property
    def reparameterization(self) -> nn.Module | None:
        """A generator ``h`` with ``g(h(z)) = h(z)`` and an ``encode(x) -> z``, or None."""
        return None

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The exact preprocessing ``g(x)``."""
        for step in self.steps:
            x = step(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Exact logits of the defended model (what is scored)."""
        return self.classifier(self.preprocess(x))
