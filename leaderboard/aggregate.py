"""Result files → tables: per-example worst case, ranking, claim gaps, flags, missing and
failed attacks.

Every number the site shows is computed here, in Python; the templates only lay it out.
Loading and checking the files is :mod:`leaderboard.board` (re-exported here); the
per-defense page's tables are :mod:`leaderboard.details`.

Scoring (DESIGN.md): an example counts as robust at a threat model only if it survives
every attack run there, so the headline is the mean over examples of the minimum over
attacks of ``robust_correct`` (the per-example worst case, as AutoAttack reports it).
A failed job (``kind: "error"``) is never a survived attack: the worst case is over the
attacks that finished, the row is marked incomplete and is not ranked (its number is
only an upper bound), and a defense that could not be built shows its error instead
of numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from benchmark.threats import FIXED_THREATS
# Re-exported: callers load and index results through this module.
from leaderboard.board import MANIFEST_FILE, Board, Run, attack_catalog, attack_order, load_board  # noqa: F401
from leaderboard.job_errors import JobError

#: A claim is marked "not reproduced" when claim − measured exceeds this.
GAP_TOLERANCE = 0.05
#: The attack a naive evaluation runs (the "claimed versus measured" baseline).
NAIVE_ATTACK = "pgd"


@dataclass(frozen=True)
class WorstCase:
    """The per-example worst case over the attacks run at one threat model.

    Attributes:
        accuracy: mean over examples of min over attacks of ``robust_correct``.
        worst_of_draws: the same with ``robust_correct_worst`` (worst of R draws).
        clean_accuracy: mean clean accuracy (averaged over the attacks' clean passes).
        n: examples common to every attack (the ones scored).
        attacks: attacks included, in display order.
        strongest: the single attack with the lowest robust accuracy.
        strongest_accuracy: that attack's robust accuracy on the common examples.
        per_attack: robust accuracy of each attack on the common examples.
        uneven: True when the attacks did not all cover the same examples.
        failed: attacks whose job failed at this threat (not in the worst case).
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

    @property
    def incomplete(self) -> bool:
        """True when some attack failed: the worst case is then only an upper bound."""
        return bool(self.failed)


# -- worst case ------------------------------------------------------------------------

def worst_case(board: Board, dataset: str, defense: str, threat: str) -> WorstCase | None:
    """Per-example worst case over every attack run at one threat model (None: no run).

    Examples are aligned by their test-split index; when attacks covered different
    examples, only the examples common to all of them are scored (``uneven``). Attacks
    whose job failed are not part of it; they are listed in ``failed``.
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
    if n == 0:
        return WorstCase(None, None, None, 0, order, None, None, {}, True, failed)
    per_attack = {a: float(robust[a].mean()) for a in order}
    strongest = min(order, key=lambda a: (per_attack[a], order.index(a)))
    return WorstCase(
        accuracy=float(robust.min(axis=1).mean()),
        worst_of_draws=float(worst.min(axis=1).mean()),
        clean_accuracy=float(clean.mean(axis=1).mean()),
        n=n, attacks=order, strongest=strongest, strongest_accuracy=per_attack[strongest],
        per_attack=per_attack, uneven=len(sizes) > 1 or n != sizes.pop(), failed=failed)


def failed_attacks(board: Board, dataset: str, defense: str, threat: str) -> list[str]:
    """Attacks whose job failed at a threat model (error records at attack paths, build
    failures included), in registry order."""
    return attack_order(board, [e.name for e in board.errors(dataset, defense, threat) if e.is_attack_slot])


def prepare_error(board: Board, dataset: str, defense: str) -> JobError | None:
    """The build failure of a defense (job kind ``prepare``), if any of its jobs has one."""
    return next((e for e in board.errors(dataset, defense) if e.job == "prepare"), None)


def defense_facts(board: Board, dataset: str, defense: str) -> dict[str, Any]:
    """The defense facts its attack records carry (randomized, differentiable, rejects,
    reparameterization); empty for results written before facts were recorded."""
    for r in board.select("attack", dataset, defense):
        facts = r.record.get("defense", {}).get("facts")
        if facts:
            return dict(facts)
    return {}


def not_applicable_attacks(board: Board, dataset: str, defense: str) -> dict[str, str]:
    """Registered attacks that do not run against this defense, with the reason."""
    facts = defense_facts(board, dataset, defense)
    out = {}
    for a, c in board.catalog.items():
        if facts and "not_applicable" in c:
            reason = c["not_applicable"](facts)
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


# -- claims, flags, certificates --------------------------------------------------------

def pick_claim(manifest: dict[str, Any], dataset: str, threat: str) -> dict[str, Any] | None:
    """The claim shown in a threat's column: same threat id first, then same norm;
    claims on this dataset before claims made on another one."""
    norm = threat.split("-")[0]
    claims = manifest.get("claims") or []

    def other(c: dict[str, Any]) -> bool:
        return c.get("dataset") not in (None, dataset)

    for match in (lambda c: c["threat"] == threat, lambda c: c["threat"].split("-")[0] == norm):
        found = [c for c in claims if match(c)]
        if found:
            return sorted(found, key=other)[0]
    return None


def claim_gap(board: Board, dataset: str, defense: str, claim: dict[str, Any]) -> dict[str, Any]:
    """Claim versus the worst case measured at the claim's own threat model.

    Returns:
        dict with ``claimed``, ``threat``, ``source``, ``other_dataset`` (the claim's
        dataset when not this one), ``measured`` (None when that threat was not run),
        ``gap`` = claimed − measured, ``not_reproduced`` = gap > GAP_TOLERANCE and
        ``incomplete`` (some attack failed at that threat: measured is an upper bound, so
        "reproduced" cannot be concluded, while "not reproduced" still holds).
    """
    wc = worst_case(board, dataset, defense, claim["threat"])
    measured = wc.accuracy if wc else None
    gap = None if measured is None else float(claim["accuracy"]) - measured
    other = claim.get("dataset") if claim.get("dataset") not in (None, dataset) else None
    return {"claimed": float(claim["accuracy"]), "threat": claim["threat"], "source": claim.get("source"),
            "other_dataset": other, "measured": measured, "gap": gap,
            # Rounded so a gap of exactly the tolerance is not flagged by float noise.
            "not_reproduced": gap is not None and round(gap, 9) > GAP_TOLERANCE,
            "attacks": len(wc.attacks) if wc else 0,
            "incomplete": bool(failed_attacks(board, dataset, defense, claim["threat"]))}


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
    """Flag id → meaning: ``benchmark.flags.FLAG_DOCS`` when present, else the meanings
    recorded in the flags files."""
    try:
        from benchmark.flags import FLAG_DOCS
    except ImportError:
        FLAG_DOCS = {}
    docs = dict(FLAG_DOCS)
    for r in board.runs:
        if r.kind == "flags":
            for f in r.record["flags"]:
                docs.setdefault(f["id"], f.get("meaning") or "")
    return docs


def certified(board: Board, dataset: str, defense: str, threat: str) -> tuple[float, str] | None:
    """(certified accuracy, method) at a threat model, the best over certificates."""
    found = []
    for r in board.select("certify", dataset, defense):
        value = r.record["summary"]["certified_accuracy"].get(threat)
        if value is not None:
            found.append((float(value), r.record["method"]))
    return max(found) if found else None


# -- budgets and profiles ------------------------------------------------------------------

def budget_change(board: Board, attack_id: str, params: dict[str, Any]) -> str:
    """``eot 10 → 4, steps 100 → 20``: the parameters that differ from the registry's
    defaults (a parameter without a known default is shown as ``name = value``)."""
    default = (board.catalog.get(attack_id) or {}).get("params") or {}
    parts = []
    for k, v in params.items():
        if k not in default:
            parts.append(f"{k} = {_fmt(v)}")
        elif default[k] != v:
            parts.append(f"{k} {_fmt(default[k])} → {_fmt(v)}")
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
        from benchmark.profiles import PROFILES
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
    """
    rows = []
    for dataset in board.datasets():
        for threat in FIXED_THREATS:
            for defense in board.defenses(dataset):
                rows.append(_row(board, dataset, defense, threat))
    df = pd.DataFrame(rows, columns=_COLUMNS)
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
    return df.drop(columns=["_key", "_clean", "_group"]).reset_index(drop=True)


_COLUMNS = ["dataset", "threat", "rank", "defense", "name", "paper_title", "paper_url", "venue",
            "authors", "clean_accuracy", "claim_accuracy", "claim_threat", "claim_source",
            "claim_dataset", "claim_measured", "claim_gap", "not_reproduced", "claim_incomplete",
            "robust_accuracy", "robust_accuracy_worst_of_draws", "strongest_attack", "pgd_accuracy",
            "certified_accuracy", "certificate", "flags_raised", "attacks_run", "missing_attacks",
            "failed_attacks", "incomplete", "build_error", "job_errors", "reduced_budget", "profile", "n",
            "run_date"]


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
        "dataset": dataset, "threat": threat, "rank": None, "defense": defense,
        "name": board.name(dataset, defense), "paper_title": paper.get("title"),
        "paper_url": paper.get("url"), "venue": paper.get("venue"),
        "authors": "; ".join(m.get("authors") or []),
        "clean_accuracy": wc.clean_accuracy if wc else None,
        "claim_accuracy": float(claim["accuracy"]) if claim else None,
        "claim_threat": claim["threat"] if claim else None,
        "claim_source": claim.get("source") if claim else None,
        "claim_dataset": claim.get("dataset") if claim and claim.get("dataset") not in (None, dataset) else None,
        "claim_measured": gap["measured"] if gap else None,
        "claim_gap": gap["gap"] if gap else None,
        "not_reproduced": bool(gap and gap["not_reproduced"]),
        "claim_incomplete": bool(gap and gap["incomplete"]),
        "robust_accuracy": wc.accuracy if wc else None,
        "robust_accuracy_worst_of_draws": wc.worst_of_draws if wc else None,
        "strongest_attack": wc.strongest if wc else None,
        "pgd_accuracy": wc.per_attack.get(NAIVE_ATTACK) if wc else None,
        "certified_accuracy": cert[0] if cert else None,
        "certificate": cert[1] if cert else None,
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
