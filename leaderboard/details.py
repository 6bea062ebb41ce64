"""The per-defense page's tables: attacks (finished and failed), ε curves, run metadata.

Like :mod:`gauntlet.leaderboard.aggregate`, everything here is computed from result files; the
templates only lay it out.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from gauntlet.benchmark.threats import get_threat
from gauntlet.leaderboard.aggregate import budget_change, profile_summary
from gauntlet.leaderboard.board import Board, attack_order, attack_traits
from gauntlet.leaderboard.worst import (Interval, abstains, ci_columns, interval, other_key, summary_interval, with_ci,
                               worst_case)

#: Figures of an attack record: column name → (per-example key, summary key).
_FIGURES = {"robust_accuracy": ("robust_correct", "robust_accuracy"),
            "robust_accuracy_worst_of_draws": ("robust_correct_worst", "robust_accuracy_worst_of_draws"),
            "clean_accuracy": ("clean_correct", "clean_accuracy"),
            "clean_rejection_rate": ("clean_rejected", "clean_rejection_rate"),
            "adv_rejection_rate": ("adv_rejected", "adv_rejection_rate")}


#: Columns of :func:`attack_table`. ``robust_accuracy_other`` is the figure under the
#: other reading of a rejected adversarial input (``other_rejection``: ``win`` or ``error``).
ATTACK_COLUMNS = ["attack", "summary", "params", "override_reason", "budget_change", "naive", "blind", "n",
                  "attacked", "skipped", *ci_columns("robust_among_attacked"),
                  *ci_columns("clean_accuracy"), *ci_columns("robust_accuracy"),
                  *ci_columns("robust_accuracy_worst_of_draws"), *ci_columns("clean_rejection_rate"),
                  *ci_columns("adv_rejection_rate"), *ci_columns("robust_accuracy_other"), "other_rejection",
                  "draws", "wall_seconds", "run_id", "error_kind", "error_job", "error_message", "error_traceback"]


def _figure(per_example: dict[str, Any], summary: dict[str, Any], key: str,
            summary_key: str) -> tuple[float | None, Interval | None]:
    """A figure of one record and its interval, from the per-example array when recorded
    (the summary's value and ``_ci`` otherwise). Null scores are examples the cascade did
    not hand to the attack: a robust figure over all examples is then not the attack's
    own (None; see ``robust_among_attacked``), a rejection rate is over the others."""
    scores = per_example.get(key)
    if scores and any(v is None for v in scores):
        if key.startswith("robust_correct"):
            return None, None
        scores = [v for v in scores if v is not None]
    if scores:
        return float(sum(scores) / len(scores)), interval(scores)
    value = summary.get(summary_key)
    return (None if value is None else float(value)), summary_interval(summary, f"{summary_key}_ci")


def _cascade_figures(per: dict[str, Any]) -> dict[str, Any]:
    """How many examples the attack ran on (``attacked``), how many the cascade skipped as
    broken already (``skipped``), and its robust accuracy among those it ran on: "broken
    among those still robust", the attack's own figure in a cascade."""
    attacked = per.get("attacked")
    robust = per.get("robust_correct") or []
    if attacked is None:  # written before the cascade: every clean-correct example
        clean = per.get("clean_correct") or []
        attacked = [c > 0 for c in clean]
    skipped = sum(1 for v in robust if v is None)
    scores = [float(v) for v, a in zip(robust, attacked) if a and v is not None]
    value = sum(scores) / len(scores) if scores else None
    return {"attacked": sum(bool(a) for a in attacked), "skipped": skipped,
            **with_ci("robust_among_attacked", value, interval(scores) if scores else None)}


def attack_table(board: Board, dataset: str, defense: str, threat: str) -> pd.DataFrame:
    """One row per attack job at a threat model, in registry order.

    Every accuracy and rejection rate comes with its exact 95% interval (``_ci_low``,
    ``_ci_high``) from the record's per-example arrays. ``naive`` marks the naive
    baseline the worst case compares with (by trait), ``blind`` a rejection-blind attack.
    A failed job (an error record at the attack's path, a build failure included) is a
    row with ``error_kind``, ``error_job`` (``attack`` or ``prepare``), ``error_message``
    and ``error_traceback`` set and no accuracies; ``wall_seconds`` is then the time
    until the job was stopped.
    """
    runs = board.select("attack", dataset, defense, threat)
    errors = [e for e in board.errors(dataset, defense, threat) if e.is_attack_slot]
    wc = worst_case(board, dataset, defense, threat)
    other, reading = other_key(abstains(board, dataset, defense))
    rows = []
    for r in runs:
        rec, s, per = r.record, r.record["summary"], r.record["per_example"]
        params = rec["attack"].get("params") or {}
        reason = rec["attack"].get("override_reason")
        row = {"attack": rec["attack"]["id"], "summary": rec["attack"].get("summary"), "params": params,
               "override_reason": reason,
               "budget_change": budget_change(board, rec["attack"]["id"], params) if reason else None,
               "naive": bool(wc and wc.naive == rec["attack"]["id"]),
               "blind": bool(attack_traits(board, rec).get("needs_rejection")),
               "n": s.get("n", len(rec["dataset"]["indices"])), "draws": rec.get("draws"),
               "wall_seconds": rec.get("timing", {}).get("wall_seconds"), "run_id": r.run_id}
        for name, (key, summary_key) in _FIGURES.items():
            row.update(with_ci(name, *_figure(per, s, key, summary_key)))
        row.update(_cascade_figures(per))
        summary_other = "robust_accuracy_" + other.removeprefix("robust_correct_")
        value, ci = _figure(per, s, other, summary_other)
        row.update(with_ci("robust_accuracy_other", value, ci))
        row["other_rejection"] = reading if value is not None else None
        rows.append(row)
    for e in errors:
        rows.append({"attack": e.name, "summary": (board.catalog.get(e.name) or {}).get("summary"),
                     "params": e.params, "override_reason": None, "budget_change": None, "naive": False,
                     "blind": bool(((board.catalog.get(e.name) or {}).get("traits") or {}).get("needs_rejection")),
                     "wall_seconds": e.seconds, "run_id": e.run_id, "error_kind": e.kind, "error_job": e.job,
                     "error_message": e.message, "error_traceback": e.traceback})
    order = attack_order(board, [row["attack"] for row in rows])
    rows.sort(key=lambda row: order.index(row["attack"]))
    return pd.DataFrame(rows, columns=ATTACK_COLUMNS)


#: Columns of :func:`sweep_curve`.
CURVE_COLUMNS = ["eps", "threat", *ci_columns("worst_case"), "attacks", "naive_attack", *ci_columns("naive"),
                 "failed"]


def sweep_curve(board: Board, dataset: str, defense: str, norm: str) -> pd.DataFrame:
    """Accuracy versus ε for one norm: per-ε worst case over the attacks present at that
    ε and the naive baseline's curve (the attack with the ``naive_baseline`` trait), each
    with its exact 95% interval. Columns: :data:`CURVE_COLUMNS` (``attacks``: count;
    ``failed``: attacks whose job failed at that ε); sorted by ε; finite ε only."""
    rows = []
    threats = {r.threat for r in board.select("attack", dataset, defense)}
    for t in threats:
        tm = get_threat(t)
        if tm.norm != norm or math.isinf(tm.eps):
            continue
        wc = worst_case(board, dataset, defense, t)
        rows.append({"eps": tm.eps, "threat": t, **with_ci("worst_case", wc.accuracy, wc.accuracy_ci),
                     "attacks": len(wc.attacks), "naive_attack": wc.naive,
                     **with_ci("naive", math.nan if wc.naive_accuracy is None else wc.naive_accuracy, wc.naive_ci),
                     "failed": len(wc.failed)})
    if len(rows) > 1 and not any(row["eps"] == 0 for row in rows):
        # A sweep ran. Its ε = 0 is not attacked (no perturbation is possible): it is the
        # clean accuracy.
        clean = next(r for r in board.select("attack", dataset, defense) if get_threat(r.threat).norm == norm)
        scores = clean.record["per_example"]["clean_correct"]
        acc = float(sum(scores) / len(scores)) if scores else math.nan
        ci = interval(scores)
        rows.append({"eps": 0.0, "threat": f"{norm}-0", **with_ci("worst_case", acc, ci), "attacks": 0,
                     "naive_attack": None, **with_ci("naive", acc, ci), "failed": 0})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS).sort_values("eps").reset_index(drop=True)


def run_metadata(board: Board, dataset: str, defense: str) -> dict[str, Any]:
    """Commits, library versions, devices, seeds, profiles and timings of a defense's runs
    (each a sorted list of the distinct values seen), and ``profile_label`` such as
    ``quick profile, 100 examples``."""
    runs = [r for r in board.runs if (r.dataset, r.defense) == (dataset, defense)]
    env_keys = ("commit", "dirty", "device", "device_name", "python", "torch", "numpy", "scipy",
                "platform", "threads")

    def values(get) -> list[str]:
        return sorted({str(v) for v in (get(r.record) for r in runs) if v is not None})

    meta: dict[str, Any] = {k: values(lambda rec, k=k: (rec.get("environment") or {}).get(k)) for k in env_keys}
    meta["seed"] = values(lambda rec: rec.get("seed"))
    meta["profile"] = values(lambda rec: rec.get("profile"))
    profile = profile_summary(runs)
    meta["profile_label"], meta["profile_description"] = profile["label"], profile["description"]
    finished = values(lambda rec: (rec.get("timing") or {}).get("finished_at"))
    meta["first_finished"] = finished[0] if finished else None
    meta["last_finished"] = finished[-1] if finished else None
    meta["wall_seconds"] = float(sum(float((r.record.get("timing") or {}).get("wall_seconds") or 0)
                                     for r in runs))
    meta["files"] = len(runs)
    meta["errors"] = sum(r.kind == "error" for r in runs)
    return meta
