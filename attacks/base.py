"""The attack interface and the manifest-free attack registry.

An attack is a class with frozen default parameters (recorded in every result file)
and one method, :meth:`Attack.run`, that returns adversarial inputs inside the threat
model. The runner, not the attack, verifies them and scores them on the true defense.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from gauntlet.benchmark.applicability import not_applicable
from gauntlet.benchmark.streams import RowStreams
from gauntlet.benchmark.threats import ThreatModel


@dataclass
class AttackContext:
    """What the runner hands an attack besides the examples.

    Attributes:
        generator: where every random draw of the attack comes from: per-example streams
            with one row per example of the batch (:class:`gauntlet.benchmark.streams.RowStreams`,
            what the runner passes: an example draws the same whichever batch or cascade
            stage it is attacked in), or a seeded CPU generator (one stream per batch).
        surrogate: an undefended model of the same dataset (for ``transfer``), or None.
    """

    generator: RowStreams | torch.Generator
    surrogate: nn.Module | None = None


@dataclass
class AttackResult:
    """Adversarial inputs plus diagnostics recorded in the result file.

    Attributes:
        x_adv: adversarial inputs, same shape as the clean batch.
        info: JSON-ready diagnostics (queries used, gradient statistics, …).
    """

    x_adv: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class: subclasses set ``id``, ``summary``, a ``Params`` dataclass and ``run``."""

    id: ClassVar[str]
    summary: ClassVar[str]
    #: True when the attack reads no gradient (Square, random, transfer replay).
    gradient_free: ClassVar[bool] = False
    #: True when the attack only applies to defenses exposing a reparameterization.
    needs_reparameterization: ClassVar[bool] = False
    #: True for EOT variants: against a deterministic defense k draws are k copies of
    #: one gradient, so the attack would repeat its non-EOT twin at k times the cost.
    needs_randomness: ClassVar[bool] = False
    #: True for BPDA variants: when every step is differentiable the BPDA view is the
    #: raw gradient, so the attack would repeat its non-BPDA twin.
    needs_non_differentiable: ClassVar[bool] = False
    #: True for score-based attacks left out against randomized defenses, as AutoAttack's
    #: ``version="rand"`` leaves out Square (Croce & Hein 2020, §4): one noisy score per
    #: query makes the search a random walk, and EOT attacks cover these defenses.
    deterministic_only: ClassVar[bool] = False
    #: True when the attack only applies to defenses whose reject output is a detection
    #: (a rejected adversarial input is a defense win); not to abstaining ones.
    needs_rejection: ClassVar[bool] = False
    #: True when the attack only applies to defenses whose gradients are masked: a declared
    #: non-differentiable step, or zero/non-finite raw gradients observed at the clean points
    #: (gradient estimation, e.g. SPSA, is the field's answer to masked gradients).
    needs_masked_gradients: ClassVar[bool] = False
    #: True when the attack crafts its inputs on an undefended model of the dataset
    #: (``AttackContext.surrogate``, which the runner builds only for such attacks): not
    #: applicable where the project declares no surrogate (:mod:`gauntlet.benchmark.surrogates`).
    needs_surrogate: ClassVar[bool] = False

    #: Budget floors (:mod:`gauntlet.attacks.budgets`): budget parameter → the lowest value a
    #: manifest's ``attack_overrides`` may give it (never above the default). A parameter
    #: not listed cannot be overridden; a floor equal to the default fixes it, and an
    #: attack whose every floor is its default always runs at its full budget.
    FLOORS: ClassVar[dict[str, float]] = {}

    # -- traits read by flags, sweeps, the naive baseline and the leaderboard -----------
    # Recorded in every result file (:meth:`traits`), so no consumer keeps a list of ids.
    #: What a naive evaluation runs: PGD on raw gradients (against a detector, the
    #: rejection-blind variant, which declares ``needs_rejection`` too). Its ``info``
    #: carries the gradient statistics the ``zero-gradients`` and ``stochastic-gradients``
    #: flags read.
    naive_baseline: ClassVar[bool] = False
    #: Adapts to the defense (BPDA, EOT, reparameterization, or the full adaptive view):
    #: compared with the naive baseline by the ``adaptive-beats-naive`` flag.
    adaptive: ClassVar[bool] = False
    #: A single gradient step (FGSM): compared with the naive iterative baseline by the
    #: ``one-step-beats-iterative`` flag.
    one_step: ClassVar[bool] = False
    #: Uniform random sampling in the ball (the ``random-finds-more`` flag).
    random_sampling: ClassVar[bool] = False

    @classmethod
    def traits(cls) -> dict[str, bool]:
        """The attack's traits, JSON-ready (recorded in every result file)."""
        return {name: bool(getattr(cls, name)) for name in TRAITS}

    @dataclass(frozen=True)
    class Params:
        """No parameters."""

    def __init__(self, **overrides: Any) -> None:
        names = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"attack {self.id}: unknown parameter(s) {unknown}; known: {sorted(names)}")
        self.params = self.Params(**overrides)

    def describe(self) -> dict[str, Any]:
        """JSON-ready id and parameters."""
        return {"id": self.id, "params": dataclasses.asdict(self.params)}

    def budget(self) -> float:
        """Nominal queries per example (gradient or forward passes, times EOT draws) at
        these parameters: orders the cascade, cheap attacks first (:mod:`gauntlet.benchmark.cascade`)."""
        return 1.0

    def applies_to(self, defense: nn.Module) -> bool:
        """Whether this attack runs against ``defense`` at all (read from its declarations;
        the runner marks a defense whose randomness it observed as randomized, so a
        defense that hides its randomness still gets the EOT attacks)."""
        return self.not_applicable(defense_facts(defense)) is None

    @classmethod
    def not_applicable(cls, facts: dict[str, Any]) -> str | None:
        """Why this attack does not run against a defense with these facts, or None when it does.

        Args:
            facts: :func:`defense_facts` of the defense (as recorded in result files).
                A missing fact counts as unknown, and an attack that depends on it as
                not applicable (results written before the fact was recorded).
        """
        return not_applicable(cls.traits(), facts)

    def run(self, defense: nn.Module, x: torch.Tensor, y: torch.Tensor,
            threat: ThreatModel, ctx: AttackContext) -> AttackResult:
        """Search the threat model around ``x`` for inputs ``defense`` misclassifies."""
        raise NotImplementedError


#: Names of the boolean traits every attack class declares (:meth:`Attack.traits`).
TRAITS = ("gradient_free", "adaptive", "naive_baseline", "one_step", "random_sampling", "needs_rejection",
          "needs_randomness", "needs_non_differentiable", "needs_reparameterization", "needs_masked_gradients",
          "deterministic_only", "needs_surrogate")


def defense_facts(defense: nn.Module) -> dict[str, bool]:
    """What decides which attacks apply to a defense (recorded in every result file).

    ``abstains``: the reject output is an abstention (a smoothed classifier's "I do not
    know"), which scoring counts as an error, as certification does; otherwise a rejected
    adversarial input (a detection) is a defense win. ``zero_gradients``: the harness
    observed zero or non-finite raw input gradients at the clean points (set by the
    runner on the defense, like observed randomness).
    """
    return {"randomized": bool(getattr(defense, "randomized", False)),
            "differentiable": bool(getattr(defense, "differentiable", True)),
            "rejects": bool(getattr(defense, "rejects", False)),
            "abstains": bool(getattr(defense, "abstains", False)),
            "zero_gradients": bool(getattr(defense, "zero_gradients", False)),
            "reparameterization": getattr(defense, "reparameterization", None) is not None}


class Registry:
    """Name → class, rejecting duplicates and suggesting close names on a typo."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Class decorator adding ``cls`` under ``cls.id``."""
        if cls.id in self._items:
            raise ValueError(f"duplicate {self.kind} id {cls.id!r}")
        self._items[cls.id] = cls
        return cls

    def get(self, name: str) -> type:
        """The class registered as ``name``.

        Raises:
            KeyError: with the closest registered names.
        """
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Registered: {sorted(self._items)}") from None

    def ids(self) -> list[str]:
        """Registered ids in registration order."""
        return list(self._items)


ATTACKS = Registry("attack")
