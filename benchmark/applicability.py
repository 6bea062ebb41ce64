"""Which attacks run against which defense: one pure rule over data.

An attack declares traits (:data:`gauntlet.attacks.base.TRAITS`, recorded in every result file
and in the catalog ``<results>/attacks.json``); a defense has facts
(:func:`gauntlet.attacks.base.defense_facts`, recorded in every result file). The rule below reads
only those two mappings, so the runner (through ``Attack.not_applicable``) and the
leaderboard (from the files, importing no attack code) decide alike.
"""
from __future__ import annotations

from typing import Any, Mapping


def not_applicable(traits: Mapping[str, Any], facts: Mapping[str, Any]) -> str | None:
    """Why an attack with ``traits`` does not run against a defense with ``facts``, or None.

    A missing fact counts as unknown, and an attack that depends on it as not applicable
    (results written before the fact was recorded); a missing trait as False. The one
    exception is ``surrogate`` (whether the project declares a surrogate model for the
    dataset, :mod:`gauntlet.benchmark.surrogates`): results written before it was recorded were run
    with a surrogate whenever one existed, so a missing ``surrogate`` counts as present.
    """
    def fact(name: str, default: bool) -> bool:
        value = facts.get(name)
        return default if value is None else bool(value)

    def needs(name: str) -> bool:
        return bool(traits.get(name, False))

    if needs("needs_reparameterization") and not fact("reparameterization", False):
        return "the defense exposes no reparameterization"
    if needs("needs_randomness") and not fact("randomized", False):
        return "the defense is deterministic: EOT would repeat one gradient k times"
    if needs("needs_non_differentiable") and fact("differentiable", True):
        return "every step is differentiable: BPDA would be the raw gradient"
    if needs("deterministic_only") and fact("randomized", True):
        return "left out against randomized defenses, as in AutoAttack's version='rand'"
    if needs("needs_rejection") and not fact("rejects", False):
        return "the defense never rejects an input"
    if needs("needs_rejection") and fact("abstains", False):
        return "the defense's reject output is an abstention, which counts as an error"
    if needs("needs_masked_gradients") and fact("differentiable", True) and not fact("zero_gradients", False):
        return "the defense's raw gradients are neither declared nor observed masked"
    if needs("needs_surrogate") and not fact("surrogate", True):
        return "the project declares no surrogate model for this dataset (benchmark/surrogates.py)"
    return None
