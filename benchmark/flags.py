"""Gradient-masking flags, computed from per-attack, per-example results.

Each flag is a symptom listed by Athalye, Carlini & Wagner (2018, §3.1) or Carlini et al.
(2019, "On Evaluating Adversarial Robustness", §4) of an evaluation whose gradients
mislead. A flag is evidence to look at, not a verdict. Flags are pure functions of
result records, so the runner stores them and the site can explain them.

"Broken by attack a" for an example means: its clean prediction is right (more than
half of the draws for a randomized defense) and its robust score under a is at most
one half. A per-example comparison fires when at least ``max(1, 2% of n)`` examples
are concerned, so that one noisy example does not raise a flag on a large run.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

#: Which attacks a flag compares is read from the traits every attack record carries
#: (``attack.traits``, declared on the attack class: :data:`gauntlet.attacks.base.TRAITS`), never
#: from a list of ids, so a new attack is counted by declaring its traits. Records written
#: before traits were recorded take them from the registry by id.


def traits(record: dict[str, Any]) -> dict[str, bool]:
    """The attack traits of a result record (from the file, else from the registry)."""
    recorded = (record.get("attack") or {}).get("traits")
    if recorded is not None:
        return dict(recorded)
    try:
        from gauntlet.attacks.base import ATTACKS
        from gauntlet.attacks.registry import attack_ids

        attack_ids()  # load the registry
        return ATTACKS.get(record["attack"]["id"]).traits()
    except (KeyError, ImportError):
        return {}


def _with(attacks: dict[str, dict], trait: str, value: bool = True) -> tuple[str, ...]:
    return tuple(a for a, r in attacks.items() if bool(traits(r).get(trait, False)) == value)


def naive_baseline_of(traits_by_attack: Mapping[str, Mapping[str, bool]]) -> str | None:
    """The attack a naive evaluation runs among attacks given as id → traits (in order):
    the first with the ``naive_baseline`` trait; against a detector the rejection-blind
    one (which also declares ``needs_rejection``), the baseline a detector's authors
    evaluate against. The flags and the leaderboard both choose by this rule."""
    naive = [a for a, t in traits_by_attack.items() if t.get("naive_baseline")]
    specific = [a for a in naive if traits_by_attack[a].get("needs_rejection")]
    return (specific or naive or [None])[0]


def naive_baseline(attacks: dict[str, dict]) -> str | None:
    """:func:`naive_baseline_of` among ``attacks`` (id → result record)."""
    return naive_baseline_of({a: traits(r) for a, r in attacks.items()})


FLAG_DOCS: dict[str, str] = {
    "one-step-beats-iterative":
        "FGSM breaks examples that the naive iterative PGD on the same raw gradients did not: the loss surface "
        "is not smooth enough for gradient steps to follow (Athalye et al. 2018, §3.1).",
    "black-box-beats-white-box":
        "A black-box attack (one that reads no gradient of the defense: Square, SPSA, transfer, random "
        "sampling) breaks examples that every gradient attack missed: the gradients are masked or "
        "obfuscated.",
    "unbounded-attack-fails":
        "Naive PGD with ε = ∞ (still inside [0, 1]) leaves more than 1% of examples correctly "
        "classified; an unbounded attack should reach ~100% success.",
    "random-finds-more":
        "Uniform random sampling in the ε-ball breaks examples the gradient attacks did not.",
    "non-monotone-in-eps":
        "Robust accuracy rises with ε somewhere on the accuracy-versus-ε sweep; a stronger adversary "
        "can never do worse, so the attack is failing.",
    "zero-gradients":
        "More than 5% of examples have zero or non-finite input gradients under raw PGD: "
        "shattered or vanishing gradients.",
    "adaptive-beats-naive":
        "An adaptive attack (BPDA, EOT, reparameterization, or APGD on the full adaptive view) breaks "
        "examples that the naive baseline (PGD on raw gradients; against a detector, PGD blind to the "
        "reject option) did not, and the worst case over the naive baseline and the adaptive attacks lies at least "
        "5 points below the naive accuracy: the raw gradients mislead, "
        "the central symptom of Athalye et al. (2018).",
    "stochastic-gradients":
        "The defense is randomized and two draws of its input gradient at the same points point in "
        "different directions (median cosine similarity below 0.9): a single-draw gradient is a noisy "
        "estimate, so attacks need expectation over transformation (Athalye et al. 2018, §4.2).",
    "undeclared-randomness":
        "The manifest declares the defense deterministic, but two identical calls gave different outputs.",
    "certificate-violated":
        "An example certified at this threat was broken by an attack (a wrong class in at least half "
        "of the scoring draws; an abstention is not a wrong class): certified accuracy is a lower "
        "bound and empirical accuracy an upper bound, so this is a bug in the certificate, the attack "
        "or the defense (expected at most about α·n times for randomized smoothing).",
}

ZERO_GRAD_THRESHOLD = 0.05
ADAPTIVE_GAP = 0.05
COSINE_THRESHOLD = 0.9
UNBOUNDED_THRESHOLD = 0.01
MONOTONE_TOLERANCE = 0.02


def _min_count(n: int) -> int:
    return max(1, math.ceil(0.02 * n))


def broken(record: dict[str, Any]) -> np.ndarray:
    """Per-example boolean: clean-correct and broken by this attack."""
    pe = record["per_example"]
    clean = np.asarray(pe["clean_correct"], dtype=float)
    robust = np.asarray(pe["robust_correct"], dtype=float)  # null (not attacked) → NaN: not broken
    return (clean > 0.5) & (robust <= 0.5)


def worst_case_accuracy(records: list[dict[str, Any]]) -> float:
    """Mean over examples of the minimum ``robust_correct`` over ``records`` (null scores,
    examples an attack did not run on under the cascade, are skipped; an example no record
    scored counts as broken, as the cascade skipped it; NaN without records)."""
    if not records:
        return math.nan
    rows = np.asarray([r["per_example"]["robust_correct"] for r in records], dtype=float)
    low = np.where(np.isnan(rows), np.inf, rows).min(axis=0)
    return float(np.where(np.isinf(low), 0.0, low).mean())


def _union(records: dict[str, dict], ids: tuple[str, ...], n: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    for a in ids:
        if a in records:
            out |= broken(records[a])
    return out


def _flag(flag_id: str, raised: bool, **numbers: Any) -> dict[str, Any]:
    return {"id": flag_id, "raised": bool(raised), "meaning": FLAG_DOCS[flag_id], "numbers": numbers}


def compute_flags(attacks: dict[str, dict], *, unbounded: dict | None = None,
                  sweep: list[tuple[float, float]] | None = None,
                  randomness: dict | None = None,
                  certificate: dict | None = None) -> list[dict[str, Any]]:
    """All flags for one defense at one threat.

    Args:
        attacks: attack id → attack result record at this threat.
        unbounded: the ``pgd`` record at ``linf-inf``, if run.
        sweep: (ε, worst-case accuracy) points of this threat's norm, in ε order.
        randomness: ``{"declared": bool, "varied": bool, "max_abs_diff": float}``.
        certificate: ``{"violations": [dataset indices certified here but broken by an
            attack], "allowed": int, "certified": int}``, if the defense is certified.

    Returns:
        One entry per applicable flag: ``{id, raised, meaning, numbers}``.
    """
    if not attacks:
        return []
    n = len(next(iter(attacks.values()))["per_example"]["clean_correct"])
    need = _min_count(n)
    flags = []
    white_box, black_box = _with(attacks, "gradient_free", False), _with(attacks, "gradient_free")
    naive_all, naive = _with(attacks, "naive_baseline"), naive_baseline(attacks)
    one_step, adaptive = _with(attacks, "one_step"), _with(attacks, "adaptive")
    if one_step and naive_all:
        extra = int((_union(attacks, one_step, n) & ~_union(attacks, naive_all, n)).sum())
        flags.append(_flag("one-step-beats-iterative", extra >= need, examples=extra, threshold=need, n=n))
    white = _union(attacks, white_box, n)
    if black_box:
        extra = int((_union(attacks, black_box, n) & ~white).sum())
        flags.append(_flag("black-box-beats-white-box", extra >= need, examples=extra, threshold=need, n=n))
    sampling = _with(attacks, "random_sampling")
    if sampling:
        extra = int((_union(attacks, sampling, n) & ~white).sum())
        flags.append(_flag("random-finds-more", extra >= need, examples=extra, threshold=need, n=n))
    if unbounded is not None:
        acc = float(unbounded["summary"]["robust_accuracy"])
        flags.append(_flag("unbounded-attack-fails", acc > UNBOUNDED_THRESHOLD,
                           accuracy_at_eps_inf=acc, threshold=UNBOUNDED_THRESHOLD))
    if sweep and len(sweep) > 1:
        rises = [(e1, a0, a1) for (e0, a0), (e1, a1) in zip(sweep, sweep[1:]) if a1 > a0 + MONOTONE_TOLERANCE]
        worst = max(rises, key=lambda r: r[2] - r[1]) if rises else None
        flags.append(_flag("non-monotone-in-eps", bool(rises), rises=len(rises),
                           largest_rise=round(worst[2] - worst[1], 6) if worst else 0.0,
                           at_eps=worst[0] if worst else None, tolerance=MONOTONE_TOLERANCE))
    # Gradient statistics come from the naive baselines' raw gradients (the first that has them).
    stats = [attacks[a].get("info", {}) for a in naive_all]
    frac = next((i["zero_grad_fraction"] for i in stats if i.get("zero_grad_fraction") is not None), None)
    if frac is not None:
        flags.append(_flag("zero-gradients", float(frac) > ZERO_GRAD_THRESHOLD, fraction=float(frac),
                           threshold=ZERO_GRAD_THRESHOLD))
    if naive is not None and adaptive:
        extra = int((_union(attacks, adaptive, n) & ~broken(attacks[naive])).sum())
        naive_acc = float(attacks[naive]["summary"]["robust_accuracy"])
        # the worst case of naive + adaptive, not the best single adaptive attack: under the
        # cascade an adaptive attack runs only where the attacks before it failed
        best = worst_case_accuracy([attacks[a] for a in (naive, *adaptive)])
        flags.append(_flag("adaptive-beats-naive", extra >= need and naive_acc - best >= ADAPTIVE_GAP,
                           examples=extra, threshold=need, naive_attack=naive, naive_accuracy=naive_acc,
                           adaptive_accuracy=best, min_gap=ADAPTIVE_GAP, n=n))
    cosine = next((i["gradient_draw_cosine"] for i in stats if i.get("gradient_draw_cosine") is not None), None)
    if cosine is not None:
        flags.append(_flag("stochastic-gradients", float(cosine) < COSINE_THRESHOLD, median_cosine=float(cosine),
                           threshold=COSINE_THRESHOLD))
    if randomness is not None:
        raised = (not randomness["declared"]) and randomness["varied"]
        flags.append(_flag("undeclared-randomness", raised, declared_randomized=randomness["declared"],
                           outputs_varied=randomness["varied"], max_abs_diff=randomness["max_abs_diff"]))
    if certificate is not None:
        found = list(certificate["violations"])
        flags.append(_flag("certificate-violated", len(found) > certificate["allowed"], violations=len(found),
                           examples=found[:20], allowed=certificate["allowed"],
                           certified=certificate["certified"]))
    return flags
