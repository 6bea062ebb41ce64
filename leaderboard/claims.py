"""Claims judged on their own terms.

A claim (``manifest.claims``) is judged only against a measurement of the same thing:
the same dataset (the claim's ``dataset`` unset or equal to the defense's), the same
threat model (the worst case measured at the claim's own threat id) and the same model
(``same_model``, true unless the manifest says the paper's number is for another
network; missing in older manifests means true). Any other claim is shown as context,
never judged.

The verdict uses the measured worst case's exact 95% interval:

* **not reproduced**: the claimed accuracy lies above the interval's upper bound;
* **consistent**: it lies inside the interval or below it;
* **incomplete**: some attack failed at the claim's threat, so the measurement is only an
  upper bound and "consistent" cannot be concluded ("not reproduced" still holds);
* **not measured**: the claim's threat model was not run.

The gap claimed − measured is kept as information; it decides nothing.
"""
from __future__ import annotations

from typing import Any

from gauntlet.leaderboard.board import Board
from gauntlet.leaderboard.worst import failed_attacks, worst_case

#: Verdicts, in the order a reader cares about them.
NOT_REPRODUCED, INCOMPLETE, CONSISTENT, NOT_MEASURED, CONTEXT = (
    "not reproduced", "incomplete", "consistent", "not measured", "context")
#: The rule as the pages state it.
RULE = ("A claim is judged only against Gauntlet's measurement of the same model on the same dataset at the "
        "claim's own threat model. It is not reproduced when the claimed accuracy lies above the upper end of "
        "the measured worst case's exact 95% interval, and consistent when it lies inside that interval or "
        "below it; when an attack failed there, the measurement is an upper bound, so only \"not reproduced\" "
        "can be concluded. A claim on another dataset or about another model is shown as context, unjudged. "
        "The gap claimed − measured is shown as information.")
_EPS = 1e-9


def _other_dataset(claim: dict[str, Any], dataset: str) -> str | None:
    return claim.get("dataset") if claim.get("dataset") not in (None, dataset) else None


def _same_model(claim: dict[str, Any]) -> bool:
    return bool(claim.get("same_model", True))


def context_reasons(claim: dict[str, Any], dataset: str) -> list[str]:
    """Why a claim is context rather than judged: ``claim on cifar10``, ``another model``."""
    reasons = []
    other = _other_dataset(claim, dataset)
    if other:
        reasons.append(f"claim on {other}")
    if not _same_model(claim):
        reasons.append("another model")
    return reasons


def pick_claim(manifest: dict[str, Any], dataset: str, threat: str) -> dict[str, Any] | None:
    """The claim shown in a threat's column: same threat id first, then same norm; among
    those, judgeable claims (this dataset, this model) before context ones."""
    norm = threat.split("-")[0]
    claims = manifest.get("claims") or []
    for match in (lambda c: c["threat"] == threat, lambda c: c["threat"].split("-")[0] == norm):
        found = [c for c in claims if match(c)]
        if found:
            return sorted(found, key=lambda c: (_other_dataset(c, dataset) is not None, not _same_model(c)))[0]
    return None


def verdict(claimed: float, measured_ci: tuple[float, float] | None, *, judged: bool,
            incomplete: bool) -> str:
    """The verdict of one claim (module docstring)."""
    if not judged:
        return CONTEXT
    if measured_ci is None:
        return NOT_MEASURED
    if claimed > measured_ci[1] + _EPS:
        return NOT_REPRODUCED
    return INCOMPLETE if incomplete else CONSISTENT


def claim_gap(board: Board, dataset: str, defense: str, claim: dict[str, Any],
              measure: bool = True) -> dict[str, Any]:
    """A claim versus the worst case measured at the claim's own threat model.

    Args:
        board: the results.
        dataset: the defense's dataset.
        defense: the defense id.
        claim: one entry of ``manifest.claims``.
        measure: False for a defense that could not be built (its older files are not
            shown): the claim is then listed without a measurement.

    Returns:
        dict with ``claimed``, ``threat``, ``source``, ``other_dataset`` (the claim's
        dataset when not this one), ``same_model``, ``judged``, ``context`` (the reasons
        it is not judged, e.g. ``["claim on cifar10"]``), ``measured`` and ``measured_ci``
        (None when that threat was not run), ``n``, ``gap`` = claimed − measured
        (information only), ``verdict`` (:func:`verdict`), ``not_reproduced``,
        ``consistent``, ``incomplete`` (some attack failed at that threat) and ``attacks``.
    """
    wc = worst_case(board, dataset, defense, claim["threat"]) if measure else None
    measured = wc.accuracy if wc else None
    ci = wc.accuracy_ci if wc and measured is not None else None
    claimed = float(claim["accuracy"])
    reasons = context_reasons(claim, dataset)
    incomplete = measure and bool(failed_attacks(board, dataset, defense, claim["threat"]))
    v = verdict(claimed, ci, judged=not reasons, incomplete=incomplete)
    return {"claimed": claimed, "threat": claim["threat"], "source": claim.get("source"),
            "other_dataset": _other_dataset(claim, dataset), "same_model": _same_model(claim),
            "judged": not reasons, "context": reasons, "measured": measured, "measured_ci": ci,
            "n": wc.n if wc else 0, "gap": None if measured is None else claimed - measured,
            "verdict": v, "not_reproduced": v == NOT_REPRODUCED, "consistent": v == CONSISTENT,
            "attacks": len(wc.attacks) if wc else 0, "incomplete": incomplete}
