"""The per-example worst case at one threat model, with its exact 95% intervals.

Scoring (DESIGN.md): an example counts as robust at a threat model only if it survives
every attack run there, so the headline is the mean over examples of the minimum over
attacks of ``robust_correct`` (the per-example worst case, as AutoAttack reports it).
A failed job (``kind: "error"``) is never a survived attack: the worst case is over the
attacks that finished and is marked incomplete.

Every interval here is computed from the per-example arrays of the result files with
:func:`gauntlet.benchmark.intervals.accuracy_interval` (exact Clopper–Pearson; fractional scores of
randomized defenses handled), so result files written before intervals were recorded get
them too; the ``*_ci`` fields a runner writes into ``summary`` are used only when the
arrays are missing.

The naive baseline of a defense is chosen by trait, never by id: the attack whose record
declares ``naive_baseline`` (:func:`gauntlet.leaderboard.board.attack_traits`), preferring the one
that also ``needs_rejection`` (the rejection-blind baseline against a detector).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import pandas as pd

from gauntlet.benchmark.flags import naive_baseline_of
from gauntlet.benchmark.intervals import accuracy_interval
from gauntlet.leaderboard.board import Board, Run, attack_order, attack_traits

#: ``(low, high)`` of an exact 95% interval.
Interval = tuple[float, float]
#: Per-example keys of the two readings of a rejected adversarial input (schema 2).
REJECT_AS_WIN, REJECT_AS_ERROR = "robust_correct_reject_as_win", "robust_correct_reject_as_error"


def interval(scores: Sequence[float] | pd.Series | None) -> Interval | None:
    """The exact 95% interval of the mean of per-example scores (None: no examples)."""
    return None if scores is None else accuracy_interval([float(v) for v in scores])


def ci_columns(name: str) -> list[str]:
    """A figure's column and its interval columns: ``name``, ``name_ci_low``, ``name_ci_high``."""
    return [name, f"{name}_ci_low", f"{name}_ci_high"]


def with_ci(name: str, value: float | None, ci: Interval | None) -> dict[str, Any]:
    """A table row's figure and its interval under :func:`ci_columns`' names."""
    return {name: value, f"{name}_ci_low": ci[0] if ci else None, f"{name}_ci_high": ci[1] if ci else None}


def summary_interval(summary: dict[str, Any], key: str) -> Interval | None:
    """``summary[key]`` as an interval when a runner recorded one, else None."""
    value = summary.get(key)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1])
    return None


@dataclass(frozen=True)
class OtherFigure:
    """The robust accuracy under the other reading of a rejected adversarial input.

    The headline counts a rejection as a defense win for a detector and as an error for
    a defense that abstains (a smoothed classifier), as certification does; this is the
    figure under the other reading, recorded beside it (schema 2).

    Attributes:
        rejection: how this figure counts a rejected adversarial input: ``"win"`` or ``"error"``.
        accuracy: its per-example worst case over the attacks.
        ci: its exact 95% interval.
        per_attack: each attack's figure on the common examples.
        per_attack_ci: their intervals.
    """

    rejection: str
    accuracy: float
    ci: Interval | None
    per_attack: dict[str, float]
    per_attack_ci: dict[str, Interval | None]


@dataclass(frozen=True)
class WorstCase:
    """The per-example worst case over the attacks run at one threat model.

    Attributes:
        accuracy: mean over examples of min over attacks of ``robust_correct``.
        worst_of_draws: the same with ``robust_correct_worst`` (worst of R draws).
        clean_accuracy: mean clean accuracy (averaged over the attacks' clean passes).
        n: examples common to every attack (the ones scored).
        attacks: attacks included, in display order.
        strongest: the single attack with the lowest robust accuracy; under the cascade
            (attacks after the baselines ran only on the examples still robust) the one
            that broke the most examples among those it ran on.
        strongest_accuracy: that attack's robust accuracy on the common examples (None
            when the cascade ran it on some of them only).
        per_attack: robust accuracy of each attack on the common examples.
        uneven: True when the attacks did not all cover the same examples.
        failed: attacks whose job failed at this threat (not in the worst case).
        accuracy_ci: exact 95% interval of ``accuracy``.
        worst_of_draws_ci: of ``worst_of_draws``.
        clean_ci: of ``clean_accuracy``.
        per_attack_ci: of each attack's robust accuracy on the common examples.
        naive: the naive baseline attack among ``attacks`` (by trait), or None.
        naive_blind: the naive baseline is the rejection-blind one (a detector).
        other: the figure under the other reading of a rejection, when recorded.
    """

    accuracy: float | None
    worst_of_draws: float | None
    clean_accuracy: float | None
    n: int
    attacks: list[str]
    strongest: str | None
    strongest_accuracy: float | None
    per_attack: dict[str, float]
    uneven: bool
    failed: list[str] = field(default_factory=list)
    accuracy_ci: Interval | None = None
    worst_of_draws_ci: Interval | None = None
    clean_ci: Interval | None = None
    per_attack_ci: dict[str, Interval | None] = field(default_factory=dict)
    naive: str | None = None
    naive_blind: bool = False
    other: OtherFigure | None = None

    @property
    def incomplete(self) -> bool:
        """True when some attack failed: the worst case is then only an upper bound."""
        return bool(self.failed)

    @property
    def strongest_ci(self) -> Interval | None:
        """The interval of the strongest single attack's accuracy."""
        return self.per_attack_ci.get(self.strongest) if self.strongest else None

    @property
    def naive_accuracy(self) -> float | None:
        """The naive baseline's robust accuracy on the common examples (None: not run)."""
        return self.per_attack.get(self.naive) if self.naive else None

    @property
    def naive_ci(self) -> Interval | None:
        """Its interval."""
        return self.per_attack_ci.get(self.naive) if self.naive else None


# -- naive baseline and rejection readings -----------------------------------------------------

def naive_attack(board: Board, runs: list[Run]) -> str | None:
    """The naive baseline among some attack runs, by trait
    (:func:`gauntlet.benchmark.flags.naive_baseline_of`, the flags' rule), in registry order."""
    by_id = {r.record["attack"]["id"]: r.record for r in runs}
    return naive_baseline_of({a: attack_traits(board, by_id[a]) for a in attack_order(board, list(by_id))})


def naive_baselines(board: Board) -> list[str]:
    """The registered attacks with the ``naive_baseline`` trait, in registry order."""
    return [a for a, c in board.catalog.items() if (c.get("traits") or {}).get("naive_baseline")]


def is_blind(board: Board, record: dict[str, Any]) -> bool:
    """Whether an attack record's attack is blind to the reject option (``needs_rejection``)."""
    return bool(attack_traits(board, record).get("needs_rejection"))


def defense_facts(board: Board, dataset: str, defense: str) -> dict[str, Any]:
    """The defense facts its attack records carry (randomized, differentiable, rejects,
    abstains, zero_gradients, reparameterization); empty for results written before
    facts were recorded."""
    for r in board.select("attack", dataset, defense):
        facts = r.record.get("defense", {}).get("facts")
        if facts:
            return dict(facts)
    return {}


def abstains(board: Board, dataset: str, defense: str) -> bool | None:
    """Whether the defense's reject output is an abstention (its headline then counts a
    rejected adversarial input as an error): ``defense.facts.abstains``, which every
    record carrying both readings has (schema 2); None for older records."""
    facts = defense_facts(board, dataset, defense)
    return bool(facts["abstains"]) if "abstains" in facts else None


def other_key(abstaining: bool | None) -> tuple[str, str]:
    """(per-example key, rejection reading) of the figure beside the headline."""
    return (REJECT_AS_WIN, "win") if abstaining else (REJECT_AS_ERROR, "error")


# -- worst case ------------------------------------------------------------------------

def failed_attacks(board: Board, dataset: str, defense: str, threat: str) -> list[str]:
    """Attacks whose job failed at a threat model (error records at attack paths, build
    failures included), in registry order."""
    return attack_order(board, [e.name for e in board.errors(dataset, defense, threat) if e.is_attack_slot])


def worst_case(board: Board, dataset: str, defense: str, threat: str) -> WorstCase | None:
    """Per-example worst case over every attack run at one threat model (None: no run).

    Examples are aligned by their test-split index; when attacks covered different
    examples, only the examples common to all of them are scored (``uneven``). Attacks
    whose job failed are not part of it; they are listed in ``failed``. Every figure
    carries its exact 95% interval, from the per-example scores it is the mean of.
    """
    runs = board.select("attack", dataset, defense, threat)
    if not runs:
        return None
    failed = failed_attacks(board, dataset, defense, threat)
    order = attack_order(board, [r.record["attack"]["id"] for r in runs])
    by_id = {r.record["attack"]["id"]: r for r in runs}

    def frame(key: str) -> pd.DataFrame:
        cols = {a: pd.Series(by_id[a].record["per_example"][key],
                             index=by_id[a].record["dataset"]["indices"], dtype=float) for a in order}
        return pd.concat(cols, axis=1, join="inner")

    robust, worst, clean = frame("robust_correct"), frame("robust_correct_worst"), frame("clean_correct")
    sizes = {len(r.record["dataset"]["indices"]) for r in runs}
    n = len(robust)
    naive = naive_attack(board, runs)
    blind = naive is not None and is_blind(board, by_id[naive].record)
    if n == 0:
        return WorstCase(None, None, None, 0, order, None, None, {}, True, failed, naive=naive, naive_blind=blind)
    # A single attack's accuracy is defined where it ran on every clean-correct example:
    # under the cascade (null scores where it was not run) only the baselines did.
    whole = [a for a in order if not robust[a].isna().any()]
    per_attack = {a: float(robust[a].mean()) for a in whole}
    if len(whole) == len(order):  # every attack on every example: the lowest accuracy
        strongest = min(order, key=lambda a: (per_attack[a], order.index(a)))
    else:  # the cascade: the most examples broken among those it ran on
        breaks = {a: int(((clean[a] > 0.5) & (robust[a] <= 0.5)).sum()) for a in order}
        strongest = max(order, key=lambda a: (breaks[a], -order.index(a)))
    low = robust.min(axis=1)
    low_draws = worst.min(axis=1)
    clean_mean = clean.mean(axis=1)
    return WorstCase(
        accuracy=float(low.mean()), worst_of_draws=float(low_draws.mean()),
        clean_accuracy=float(clean_mean.mean()),
        n=n, attacks=order, strongest=strongest, strongest_accuracy=per_attack.get(strongest),
        per_attack=per_attack, uneven=len(sizes) > 1 or n != sizes.pop(), failed=failed,
        accuracy_ci=interval(low), worst_of_draws_ci=interval(low_draws), clean_ci=interval(clean_mean),
        per_attack_ci={a: interval(robust[a]) for a in whole}, naive=naive, naive_blind=blind,
        other=_other_figure(board, dataset, defense, runs, order, frame))


def _other_figure(board: Board, dataset: str, defense: str, runs: list[Run], order: list[str],
                  frame: Any) -> OtherFigure | None:
    """The worst case under the other reading of a rejection, when every attack recorded it."""
    if not all(REJECT_AS_WIN in r.record["per_example"] and REJECT_AS_ERROR in r.record["per_example"]
               for r in runs):
        return None
    key, reading = other_key(abstains(board, dataset, defense))
    scores = frame(key)
    if scores.empty:
        return None
    low = scores.min(axis=1)
    whole = [a for a in order if not scores[a].isna().any()]
    return OtherFigure(reading, float(low.mean()), interval(low), {a: float(scores[a].mean()) for a in whole},
                       {a: interval(scores[a]) for a in whole})


# -- certificates ----------------------------------------------------------------------

class Certified(NamedTuple):
    """Certified accuracy at a threat model: the value, the method, the exact 95% interval."""

    accuracy: float
    method: str
    ci: Interval | None


def certified_outcomes(record: dict[str, Any], radius: float) -> list[float] | None:
    """0/1 per example: certified correct with radius ≥ ``radius`` (None: no arrays)."""
    per = record.get("per_example") or {}
    if "radius" not in per or "correct" not in per or len(per["radius"]) != len(per["correct"]):
        return None
    return [float(bool(c) and float(r) >= radius) for r, c in zip(per["radius"], per["correct"])]


def certificate_interval(record: dict[str, Any], threat: str) -> Interval | None:
    """The exact 95% interval of a certify record's certified accuracy at a threat.

    Certified accuracy is a count k of 0/1 outcomes over the certified examples
    (``per_example.correct``), so the interval is Clopper–Pearson on that k of n; the
    record's ``summary.certified_accuracy_ci`` only when the arrays are missing.
    """
    summary = record["summary"]
    value = summary["certified_accuracy"].get(threat)
    if value is None:
        return None
    correct = (record.get("per_example") or {}).get("correct")
    if correct:
        n = len(correct)
        k = min(n, max(0, round(float(value) * n)))
        return interval([1.0] * k + [0.0] * (n - k))
    return summary_interval(summary.get("certified_accuracy_ci") or {}, threat)


def certified(board: Board, dataset: str, defense: str, threat: str) -> Certified | None:
    """Certified accuracy at a threat model, the best over certificates, with its interval
    (:func:`certificate_interval`). The value is the record's ``summary.certified_accuracy``
    (the runner counted it from the same per-example arrays)."""
    found = []
    for r in board.select("certify", dataset, defense):
        value = r.record["summary"]["certified_accuracy"].get(threat)
        if value is not None:
            found.append(Certified(float(value), r.record["method"], certificate_interval(r.record, threat)))
    return max(found, key=lambda c: (c.accuracy, c.method)) if found else None


def certified_curve(record: dict[str, Any]) -> pd.DataFrame:
    """Certified accuracy versus raw ℓ2 radius with exact 95% intervals.

    At each radius of the record's curve grid (and 0) the outcomes are 0/1 per example
    (certified correct at that radius), so the interval is Clopper–Pearson from the
    per-example ``radius``/``correct`` arrays. Records without the arrays give the
    recorded curve without intervals. Columns: radius, accuracy, ci_low, ci_high.
    """
    curve = record["summary"].get("curve") or {}
    radii = [float(r) for r in curve.get("radius") or []]
    rows = []
    if certified_outcomes(record, 0.0) is not None:
        for r in sorted(set(radii) | ({0.0} if radii else set())):
            outcomes = certified_outcomes(record, r)
            ci = interval(outcomes)
            rows.append({"radius": r, "accuracy": sum(outcomes) / len(outcomes) if outcomes else float("nan"),
                         "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None})
    else:
        rows = [{"radius": r, "accuracy": float(a), "ci_low": None, "ci_high": None}
                for r, a in zip(radii, curve.get("accuracy") or [])]
    return pd.DataFrame(rows, columns=["radius", "accuracy", "ci_low", "ci_high"])


def threat_dim(board: Board, dataset: str) -> int | None:
    """Input dimension d of a dataset: the registry's, else the one recorded in attack records."""
    from gauntlet.benchmark.datasets import DATASETS

    if dataset in DATASETS:
        return DATASETS[dataset].dim
    dims = [r.record["threat"].get("dim") for r in board.select("attack", dataset)]
    return next((int(d) for d in dims if d), None)

