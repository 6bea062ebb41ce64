"""The per-defense page's tables: attacks (finished and failed), ε curves, run metadata.

Like :mod:`leaderboard.aggregate`, everything here is computed from result files; the
templates only lay it out.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from benchmark.threats import get_threat
from leaderboard.aggregate import NAIVE_ATTACK, budget_change, profile_summary, worst_case
from leaderboard.board import Board, attack_order

#: Columns of :func:`attack_table`.
ATTACK_COLUMNS = ["attack", "summary", "params", "override_reason", "budget_change", "n", "clean_accuracy",
                  "robust_accuracy", "robust_accuracy_worst_of_draws", "clean_rejection_rate",
                  "adv_rejection_rate", "draws", "wall_seconds", "run_id", "error_kind", "error_job",
                  "error_message", "error_traceback"]


def attack_table(board: Board, dataset: str, defense: str, threat: str) -> pd.DataFrame:
    """One row per attack job at a threat model, in registry order.

    A failed job (an error record at the attack's path, a build failure included) is a
    row with ``error_kind``, ``error_job`` (``attack`` or ``prepare``), ``error_message``
    and ``error_traceback`` set and no accuracies; ``wall_seconds`` is then the time
    until the job was stopped.
    """
    runs = board.select("attack", dataset, defense, threat)
    errors = [e for e in board.errors(dataset, defense, threat) if e.is_attack_slot]
    rows = []
    for r in runs:
        rec, s = r.record, r.record["summary"]
        params = rec["attack"].get("params") or {}
        reason = rec["attack"].get("override_reason")
        rows.append({
            "attack": rec["attack"]["id"], "summary": rec["attack"].get("summary"), "params": params,
            "override_reason": reason,
            "budget_change": budget_change(board, rec["attack"]["id"], params) if reason else None,
            "n": s.get("n"), "clean_accuracy": s.get("clean_accuracy"),
            "robust_accuracy": s["robust_accuracy"],
            "robust_accuracy_worst_of_draws": s.get("robust_accuracy_worst_of_draws"),
            "clean_rejection_rate": s.get("clean_rejection_rate"),
            "adv_rejection_rate": s.get("adv_rejection_rate"), "draws": rec.get("draws"),
            "wall_seconds": rec.get("timing", {}).get("wall_seconds"), "run_id": r.run_id})
    for e in errors:
        rows.append({"attack": e.name, "summary": (board.catalog.get(e.name) or {}).get("summary"),
                     "params": e.params, "override_reason": None, "budget_change": None,
                     "wall_seconds": e.seconds, "run_id": e.run_id, "error_kind": e.kind, "error_job": e.job,
                     "error_message": e.message, "error_traceback": e.traceback})
    order = attack_order(board, [row["attack"] for row in rows])
    rows.sort(key=lambda row: order.index(row["attack"]))
    return pd.DataFrame(rows, columns=ATTACK_COLUMNS)


def sweep_curve(board: Board, dataset: str, defense: str, norm: str) -> pd.DataFrame:
    """Accuracy versus ε for one norm: per-ε worst case over the attacks present at that
    ε, and the naive ``pgd`` curve where it was run. Columns: eps, threat, worst_case,
    attacks (count), pgd, failed (attacks whose job failed at that ε); sorted by ε;
    finite ε only."""
    rows = []
    threats = {r.threat for r in board.select("attack", dataset, defense)}
    for t in threats:
        tm = get_threat(t)
        if tm.norm != norm or math.isinf(tm.eps):
            continue
        wc = worst_case(board, dataset, defense, t)
        rows.append({"eps": tm.eps, "threat": t, "worst_case": wc.accuracy, "attacks": len(wc.attacks),
                     "pgd": wc.per_attack.get(NAIVE_ATTACK, math.nan), "failed": len(wc.failed)})
    if len(rows) > 1 and not any(row["eps"] == 0 for row in rows):
        # A sweep ran. Its ε = 0 is not attacked (no perturbation is possible): it is the
        # clean accuracy.
        clean = next(r for r in board.select("attack", dataset, defense) if get_threat(r.threat).norm == norm)
        scores = clean.record["per_example"]["clean_correct"]
        acc = float(sum(scores) / len(scores)) if scores else math.nan
        rows.append({"eps": 0.0, "threat": f"{norm}-0", "worst_case": acc, "attacks": 0, "pgd": acc, "failed": 0})
    return pd.DataFrame(rows, columns=["eps", "threat", "worst_case", "attacks", "pgd", "failed"]).sort_values(
        "eps").reset_index(drop=True)


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
