"""Result files → tables: per-example worst case, ranking, claims, flags, missing and
failed attacks, each figure with its exact 95% interval.

Every number the site shows is computed here, in Python; the templates only lay it out.
Loading and checking the files is :mod:`gauntlet.leaderboard.board`, the worst case and its
intervals :mod:`gauntlet.leaderboard.worst`, claims :mod:`gauntlet.leaderboard.claims` (all re-exported
here); the per-defense page's tables are :mod:`gauntlet.leaderboard.details`.

Scoring (DESIGN.md): an example counts as robust at a threat model only if it survives
every attack run there, so the headline is the mean over examples of the minimum over
attacks of ``robust_correct`` (the per-example worst case, as AutoAttack reports it).
A failed job (``kind: "error"``) is never a survived attack: the worst case is over the
attacks that finished, the row is marked incomplete and is not ranked (its number is
only an upper bound), and a defense that could not be built shows its error instead
of numbers. Ranked neighbours whose worst-case intervals overlap are marked
(``overlaps_next``): their order is not significant.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from gauntlet.benchmark.applicability import not_applicable
from gauntlet.benchmark.intervals import overlap
from gauntlet.benchmark.threats import FIXED_THREATS
# Re-exported: callers load, score and judge results through this module.
from gauntlet.leaderboard.board import (MANIFEST_FILE, Board, Run, attack_order,  # noqa: F401
                               attack_traits, load_board)
from gauntlet.leaderboard.claims import RULE as CLAIM_RULE  # noqa: F401
from gauntlet.leaderboard.claims import claim_gap, context_reasons, pick_claim, verdict  # noqa: F401
from gauntlet.leaderboard.job_errors import JobError
from gauntlet.leaderboard.worst import (Certified, Interval, OtherFigure, WorstCase, abstains,  # noqa: F401
                               certificate_interval, certified, certified_curve, ci_columns, defense_facts,
                               failed_attacks, interval, naive_attack, naive_baselines, threat_dim, with_ci,
                               worst_case)

#: Tooltip of the marker between ranked rows whose intervals overlap.
OVERLAP_TOOLTIP = "95% intervals overlap: the order of these rows is not significant"


def prepare_error(board: Board, dataset: str, defense: str) -> JobError | None:
    """The build failure of a defense (job kind ``prepare``), if any of its jobs has one."""
    return next((e for e in board.errors(dataset, defense) if e.job == "prepare"), None)


def not_applicable_attacks(board: Board, dataset: str, defense: str) -> dict[str, str]:
    """Registered attacks that do not run against this defense, with the reason."""
    facts = defense_facts(board, dataset, defense)
    out = {}
    for a, c in board.catalog.items():
        if facts and c.get("traits"):
            reason = not_applicable(c["traits"], facts)
        else:  # results without facts, or a hand-made catalog: only reparameterization is known
            reason = "the defense exposes no reparameterization" if c.get("needs_reparameterization") else None
        if reason is not None:
            out[a] = reason
    return out


def missing_attacks(board: Board, dataset: str, defense: str, threat: str) -> list[str]:
    """Attacks expected at a threat model but without a result for this defense.

    Expected: every registered attack that applies to this defense, judged from the
    defense facts in its result files (an attack whose applicability depends on a fact
    the results lack is not expected), plus every attack some other defense of the
    dataset has a result or a failed job for at this threat, if it applies. An attack
    whose job failed is not missing (:func:`failed_attacks` lists it).
    """
    present = {r.record["attack"]["id"] for r in board.select("attack", dataset, defense, threat)}
    present |= set(failed_attacks(board, dataset, defense, threat))
    others = {r.record["attack"]["id"] for r in board.select("attack", dataset, threat=threat)}
    others |= {e.name for e in board.errors(dataset, slot=threat) if e.is_attack_slot}
    skipped = not_applicable_attacks(board, dataset, defense)
    expected = (set(board.catalog) | others) - set(skipped)
    return attack_order(board, sorted(expected - present))


# -- flags ------------------------------------------------------------------------------

def flags(board: Board, dataset: str, defense: str, threat: str) -> list[dict[str, Any]] | None:
    """Every flag evaluated at a threat model (None when no flags file exists)."""
    runs = board.select("flags", dataset, defense, threat)
    if not runs:
        return None
    out = []
    for f in runs[0].record["flags"]:
        numbers = {str(k): v for k, v in (f.get("numbers") or {}).items()}
        out.append({"id": f["id"], "raised": bool(f["raised"]), "meaning": f.get("meaning") or "",
                    "numbers": numbers, "tooltip": flag_tooltip(f["id"], numbers)})
    return out


def flag_tooltip(flag_id: str, numbers: dict[str, Any]) -> str:
    """Plain text ``id: k = v, …`` for a badge's title attribute."""
    parts = [f"{k} = {_fmt(v)}" for k, v in numbers.items()]
    return f"{flag_id}: " + (", ".join(parts) if parts else "no numbers recorded")


def _fmt(v: Any) -> str:
    return format(v, ".4g") if isinstance(v, float) else str(v)


def flag_docs(board: Board) -> dict[str, str]:
    """Flag id → meaning: ``gauntlet.benchmark.flags.FLAG_DOCS`` when present, else the meanings
    recorded in the flags files."""
    try:
        from gauntlet.benchmark.flags import FLAG_DOCS
    except ImportError:
        FLAG_DOCS = {}
    docs = dict(FLAG_DOCS)
    for r in board.runs:
        if r.kind == "flags":
            for f in r.record["flags"]:
                docs.setdefault(f["id"], f.get("meaning") or "")
    return docs


# -- budgets and profiles ------------------------------------------------------------------

def budget_change(board: Board, attack_id: str, params: dict[str, Any]) -> str:
    """``eot 10 → 4 (floor 2), n_queries 5000 → 500``: the parameters that differ from the
    registry's defaults, with the lowest value an override may set when the catalog
    records it (a parameter without a known default is shown as ``name = value``)."""
    entry = board.catalog.get(attack_id) or {}
    default, floors = entry.get("params") or {}, entry.get("floors") or {}
    parts = []
    for k, v in params.items():
        if k not in default:
            parts.append(f"{k} = {_fmt(v)}")
        elif default[k] != v:
            floor = f" (floor {_fmt(floors[k])})" if k in floors else ""
            parts.append(f"{k} {_fmt(default[k])} → {_fmt(v)}{floor}")
    return ", ".join(parts)


def reduced_budgets(board: Board, dataset: str, defense: str, threat: str) -> list[dict[str, Any]]:
    """Attacks run at a threat with a manifest's reduced budget (``attack.override_reason``
    set): ``{attack, params, change, reason}`` each, in registry order."""
    runs = [r for r in board.select("attack", dataset, defense, threat) if r.record["attack"].get("override_reason")]
    order = attack_order(board, [r.record["attack"]["id"] for r in runs])
    out = []
    for r in sorted(runs, key=lambda r: order.index(r.record["attack"]["id"])):
        a = r.record["attack"]
        out.append({"attack": a["id"], "params": dict(a.get("params") or {}), "reason": str(a["override_reason"]),
                    "change": budget_change(board, a["id"], dict(a.get("params") or {}))})
    return out


def profile_summary(runs: list[Run]) -> dict[str, Any]:
    """The run profiles and example counts of some runs, and a label such as
    ``quick profile, 100 examples`` (attack runs give the count when there are any)."""
    profiles = sorted({str(r.record.get("profile")) for r in runs if r.record.get("profile") is not None})
    scored = [r for r in runs if r.kind == "attack"] or runs
    counts = sorted({len(r.record["dataset"]["indices"]) for r in scored})
    if not profiles and not counts:
        return {"profiles": [], "n": [], "label": "—", "description": ""}
    label = (" + ".join(profiles) + (" profile" if len(profiles) == 1 else " profiles")) if profiles else "profile ?"
    if counts:
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        label += f", {n} example" + ("" if counts == [1] else "s")
    try:
        from gauntlet.benchmark.profiles import PROFILES
    except ImportError:
        PROFILES = {}
    description = " ".join(PROFILES[p].description for p in profiles if p in PROFILES)
    return {"profiles": profiles, "n": counts, "label": label, "description": description}


# -- tables ------------------------------------------------------------------------------

def _last_date(runs: list[Run]) -> str | None:
    dates = [str(r.record.get("timing", {}).get("finished_at") or "") for r in runs]
    dates = [d for d in dates if d]
    return max(dates)[:10] if dates else None


def leaderboard(board: Board) -> pd.DataFrame:
    """One row per (dataset, fixed threat, defense), ranked within each table.

    Sort key: per-example worst-case robust accuracy, descending; ties share a rank and
    are listed by clean accuracy, then id. Ranked rows come first; then, unranked, the
    incomplete rows (some attack failed, so their worst case is only an upper bound),
    then the defenses without an attack result at the threat (or that could not be built).
    ``overlaps_next`` marks a ranked row whose worst-case interval overlaps the next
    ranked row's. Every accuracy column ``x`` has ``x_ci_low`` and ``x_ci_high`` beside it.
    """
    rows = []
    for dataset in board.datasets():
        for threat in FIXED_THREATS:
            for defense in board.defenses(dataset):
                rows.append(_row(board, dataset, defense, threat))
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        return df
    order = {"dataset": board.datasets(), "threat": list(FIXED_THREATS)}
    df["_key"] = pd.to_numeric(df["robust_accuracy"]).round(9)
    df["_clean"] = pd.to_numeric(df["clean_accuracy"])
    df["_group"] = (df["_key"].isna() * 2 + df["incomplete"].astype(bool)).clip(upper=2)
    df = df.sort_values(["dataset", "threat", "_group", "_key", "_clean", "defense"],
                        ascending=[True, True, True, False, False, True], na_position="last",
                        key=lambda s: s.map(order[s.name].index) if s.name in order else s)
    df["rank"] = (df["_key"].where(df["_group"] == 0).groupby([df["dataset"], df["threat"]])
                  .rank(method="min", ascending=False).astype("Int64"))
    df = df.drop(columns=["_key", "_clean", "_group"]).reset_index(drop=True)
    df["overlaps_next"] = _overlaps_next(df)
    return df


def _overlaps_next(df: pd.DataFrame) -> list[bool]:
    """Per row: ranked, and its worst-case interval overlaps the next ranked row's."""
    out = [False] * len(df)
    for _, group in df.groupby(["dataset", "threat"], sort=False):
        ranked = [i for i in group.index if not pd.isna(df.at[i, "rank"])]
        for i, j in zip(ranked, ranked[1:]):
            a = (df.at[i, "robust_accuracy_ci_low"], df.at[i, "robust_accuracy_ci_high"])
            b = (df.at[j, "robust_accuracy_ci_low"], df.at[j, "robust_accuracy_ci_high"])
            out[i] = not any(pd.isna(v) for v in (*a, *b)) and overlap(a, b)
    return out


#: Columns of :func:`leaderboard` (hence of leaderboard.csv and leaderboard.json).
COLUMNS = ["dataset", "threat", "rank", "overlaps_next", "defense", "name", "paper_title", "paper_url", "venue",
           "authors", *ci_columns("clean_accuracy"), "claim_accuracy", "claim_threat", "claim_source",
           "claim_dataset", "claim_same_model", "claim_judged", "claim_verdict",
           *ci_columns("claim_measured"), "claim_gap", "not_reproduced", "claim_incomplete",
           *ci_columns("robust_accuracy"), *ci_columns("robust_accuracy_worst_of_draws"),
           "strongest_attack", *ci_columns("strongest_accuracy"), "naive_attack", "naive_blind",
           *ci_columns("naive_accuracy"), *ci_columns("certified_accuracy"), "certificate", "flags_raised",
           "attacks_run", "missing_attacks", "failed_attacks", "incomplete", "build_error", "job_errors",
           "reduced_budget", "profile", "n", "run_date"]


def _row(board: Board, dataset: str, defense: str, threat: str) -> dict[str, Any]:
    m = board.manifests.get((dataset, defense), {})
    paper = m.get("paper") or {}
    build = prepare_error(board, dataset, defense)
    # A defense that cannot be built has no current numbers: older files are not shown.
    wc = None if build else worst_case(board, dataset, defense, threat)
    claim = pick_claim(m, dataset, threat)
    gap = claim_gap(board, dataset, defense, claim) if claim and not build else None
    cert = None if build else certified(board, dataset, defense, threat)
    fl = [] if build else flags(board, dataset, defense, threat) or []
    failed = failed_attacks(board, dataset, defense, threat)
    runs = [r for r in board.runs if (r.dataset, r.defense, r.slot) == (dataset, defense, threat)]
    return {
        "dataset": dataset, "threat": threat, "rank": None, "overlaps_next": False, "defense": defense,
        "name": board.name(dataset, defense), "paper_title": paper.get("title"),
        "paper_url": paper.get("url"), "venue": paper.get("venue"),
        "authors": "; ".join(m.get("authors") or []),
        **with_ci("clean_accuracy", wc.clean_accuracy if wc else None, wc.clean_ci if wc else None),
        "claim_accuracy": float(claim["accuracy"]) if claim else None,
        "claim_threat": claim["threat"] if claim else None,
        "claim_source": claim.get("source") if claim else None,
        "claim_dataset": claim.get("dataset") if claim and claim.get("dataset") not in (None, dataset) else None,
        "claim_same_model": bool(claim.get("same_model", True)) if claim else None,
        "claim_judged": bool(gap and gap["judged"]),
        "claim_verdict": gap["verdict"] if gap else None,
        **with_ci("claim_measured", gap["measured"] if gap else None, gap["measured_ci"] if gap else None),
        "claim_gap": gap["gap"] if gap else None,
        "not_reproduced": bool(gap and gap["not_reproduced"]),
        "claim_incomplete": bool(gap and gap["incomplete"]),
        **with_ci("robust_accuracy", wc.accuracy if wc else None, wc.accuracy_ci if wc else None),
        **with_ci("robust_accuracy_worst_of_draws", wc.worst_of_draws if wc else None,
                   wc.worst_of_draws_ci if wc else None),
        "strongest_attack": wc.strongest if wc else None,
        **with_ci("strongest_accuracy", wc.strongest_accuracy if wc else None, wc.strongest_ci if wc else None),
        "naive_attack": wc.naive if wc else None,
        "naive_blind": bool(wc and wc.naive_blind),
        **with_ci("naive_accuracy", wc.naive_accuracy if wc else None, wc.naive_ci if wc else None),
        **with_ci("certified_accuracy", cert.accuracy if cert else None, cert.ci if cert else None),
        "certificate": cert.method if cert else None,
        "flags_raised": ";".join(f["id"] for f in fl if f["raised"]),
        "attacks_run": ";".join(wc.attacks) if wc else "",
        "missing_attacks": "" if build else ";".join(missing_attacks(board, dataset, defense, threat)),
        "failed_attacks": ";".join(failed),
        "incomplete": bool(failed) or build is not None,
        "build_error": f"{build.kind}: {build.message}" if build else None,
        "job_errors": len(board.errors(dataset, defense)),
        "reduced_budget": ";".join(b["attack"] for b in reduced_budgets(board, dataset, defense, threat)),
        "profile": profile_summary(runs)["label"] if runs else None,
        "n": wc.n if wc else 0,
        "run_date": _last_date(runs),
    }
