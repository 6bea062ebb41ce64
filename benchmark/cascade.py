"""The cascade: at a threat, each attack runs only on the examples still robust.

The per-example worst case over a suite of attacks is a minimum; an example that an
earlier attack broke outright (robust score 0: misclassified, or wrong in every scoring
draw of a randomized defense) keeps worst case 0 whatever later attacks do, so they need
not run on it. AutoAttack runs its attacks this way (``autoattack.py``, ``robust_flags``).
Which attacks run where is read from the attacks' traits, never from their ids:

* **Baselines** run on every example, because the leaderboard and the flags compare
  them with the rest: the naive baselines (``naive_baseline``: ``pgd``, and ``pgd-blind``
  against a detector) and the one-step attack (``one_step``: FGSM, for
  ``one-step-beats-iterative``).
* **The cascade** follows, each attack on the examples that neither the naive baseline
  the flags compare with (:func:`gauntlet.benchmark.flags.naive_baseline_of`) nor an earlier
  cascade attack broke, in this order: white-box attacks (adaptive ones first),
  then uniform random sampling (``random_sampling``), then the other black-box attacks;
  within a group the cheaper first (:meth:`gauntlet.attacks.base.Attack.budget`).

The other baselines prune nothing: the cascade's attacks are then exactly the ones that
``adaptive-beats-naive`` counts as adaptive, tried on every example naive PGD left; and
since every white-box attack comes before the black-box ones and random sampling first
among those, ``black-box-beats-white-box`` and ``random-finds-more`` count the same
examples as with every attack on every example. The flags are therefore those of the
full run; so is the per-example worst case for a deterministic defense, because an
example's draws come from its own stream (:mod:`gauntlet.benchmark.streams`) and its passes are
batch-invariant (:data:`gauntlet.attacks.adaptive.MIN_ROWS_PER_PASS`), so what an attack does on
an example does not depend on which others it attacks beside it. A randomized defense's
own draws come from the global generator, which the batch shares: its cascade worst case
is a sound upper bound, equal to the full run's up to that randomness.

An attack's result file marks the examples it ran on (``per_example.attacked``) and
records null scores for the ones the cascade skipped (docs/results.md).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from gauntlet.attacks.base import Attack


def is_baseline(attack: Attack) -> bool:
    """Runs on every example (a naive baseline or the one-step attack)."""
    return bool(attack.naive_baseline or attack.one_step)


def pruning_records(baselines: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Of the baselines' records at a threat (attack id → record, the ones that applied),
    the one whose breaks remove examples from the cascade: the naive baseline's that the
    ``adaptive-beats-naive`` flag compares with."""
    from gauntlet.benchmark.flags import naive_baseline

    chosen = naive_baseline(baselines)
    return [baselines[chosen]] if chosen is not None else []


def order(attacks: Sequence[Attack]) -> tuple[list[Attack], list[Attack]]:
    """(baselines, cascade) in running order; the order of ``attacks`` breaks ties."""
    baselines = [a for a in attacks if is_baseline(a)]
    rest = [a for a in attacks if not is_baseline(a)]

    def group(a: Attack) -> int:
        if not a.gradient_free:
            return 0 if a.adaptive else 1
        return 2 if a.random_sampling else 3

    cascade = sorted(rest, key=lambda a: (group(a), a.budget()))  # stable
    return baselines, cascade


def still_robust(clean: Sequence[float], records: Sequence[dict[str, Any]]) -> list[bool]:
    """Per example: clean-correct (score above 0) and not broken outright (robust score 0)
    by any of ``records`` (their ``per_example.robust_correct``; a null score, an example
    that record's attack did not run on, breaks nothing)."""
    out = [c > 0 for c in clean]
    for rec in records:
        for i, v in enumerate(rec["per_example"]["robust_correct"]):
            if v is not None and not math.isnan(v) and v <= 0:
                out[i] = False
    return out
