"""A Markdown summary of a results folder, for a CI job summary (``$GITHUB_STEP_SUMMARY``).

``python -m gauntlet.benchmark.summary RESULTS [--submissions DIR]`` prints, per dataset and fixed
threat model, one row per defense: clean accuracy, the claimed accuracy (with its
threat and source, and the claim's verdict), the measured per-example worst case over
every attack, the certified accuracy, the raised gradient-masking flags, the attacks
still missing and the attacks whose job failed; then every failed job (``kind: "error"``
records). Every accuracy carries its exact 95% interval ``[low, high]``; ``≈`` after a
rank marks a row whose worst-case interval overlaps the next ranked row's (their order
is not significant). As on the site, a row with a failed attack is marked incomplete and
left unranked (its worst case is over the attacks that finished, an upper bound) and a
defense that could not be built shows its error instead of numbers. It reads result files and the
``manifest.json`` files the runner writes beside them only, through
:mod:`gauntlet.leaderboard.aggregate`, so its numbers are the site's. Submitter strings are
escaped for Markdown and HTML.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>])")


def md(text: Any) -> str:
    """``text`` as inert Markdown inside a table cell: HTML and Markdown syntax escaped,
    line breaks flattened."""
    s = " ".join(str(text).split())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", s)


def _given(v: Any) -> bool:
    """Not None, NaN or pandas' NA (a table cell with a value)."""
    return v is not None and str(v) not in ("nan", "<NA>", "None", "")


def _num(v: Any) -> str:
    return f"{float(v):.3f}" if _given(v) and not math.isnan(float(v)) else "–"


def _with_ci(row: dict[str, Any], name: str) -> str:
    """``0.800 [0.444, 0.975]``: a column and its interval columns (``–`` when missing)."""
    text = _num(row.get(name))
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    if text != "–" and _given(low) and _given(high):
        text += f" [{float(low):.3f}, {float(high):.3f}]"
    return text


def _claim(row: dict[str, Any]) -> str:
    if not _given(row.get("claim_accuracy")):
        return "–"
    where = str(row.get("claim_threat") or "")
    if _given(row.get("claim_dataset")):
        where += f" on {row['claim_dataset']}"
    text = f"{_num(row['claim_accuracy'])} ({md(where)}"
    text += f", {md(row['claim_source'])})" if _given(row.get("claim_source")) else ")"
    if _given(row.get("claim_verdict")):
        verdict = str(row["claim_verdict"])
        if verdict == "context":
            reasons = ([f"claim on {row['claim_dataset']}"] if _given(row.get("claim_dataset")) else []) + (
                ["another model"] if row.get("claim_same_model") is False else [])
            verdict = "context: " + ", ".join(reasons) if reasons else verdict
        text += f": {md(verdict)}"
    return text


def _worst(row: dict[str, Any]) -> str:
    if _given(row.get("build_error")):
        return f"**build failed**: {md(row['build_error'])}"
    text = _with_ci(row, "robust_accuracy")
    if row.get("incomplete"):
        text += " **incomplete** (upper bound)"
    if row.get("not_reproduced"):
        text += " **claim not reproduced**"
    return text


def _list(value: Any) -> str:
    items = [v for v in str(value or "").split(";") if v]
    return ", ".join(md(v) for v in items) if items else "–"


def render(results_dir: Path, submissions_dir: Path | None = None) -> str:
    """The Markdown summary of ``results_dir``.

    Raises:
        gauntlet.benchmark.results.ResultError: an unreadable or malformed result file.
    """
    from gauntlet.leaderboard.aggregate import leaderboard, load_board

    results_dir = Path(results_dir)
    if not results_dir.is_dir() or not any(results_dir.rglob("*.json")):
        return f"## Gauntlet\n\nNo result files in `{md(results_dir)}`.\n"
    from gauntlet.benchmark.catalog import fallback_catalog

    board = load_board(results_dir, submissions_dir, fallback_catalog(results_dir))
    profiles = sorted({str(r.record.get("profile")) for r in board.runs})
    commits = sorted({str((r.record.get("environment") or {}).get("commit"))[:10] for r in board.runs})
    out = ["## Gauntlet results", "",
           f"{len(board.runs)} result files · profile {', '.join(map(md, profiles))} · "
           f"commit {', '.join(map(md, commits))}", ""]
    table = leaderboard(board)
    for (dataset, threat), group in table.groupby(["dataset", "threat"], sort=False):
        out += [f"### {md(dataset)} · {md(threat)}", "",
                "| rank | defense | clean | claimed | worst case | certified | flags raised | attacks "
                "| missing attacks | failed attacks |",
                "| ---: | --- | ---: | --- | ---: | ---: | --- | ---: | --- | --- |"]
        for row in group.to_dict("records"):
            rank = str(row["rank"]) if _given(row["rank"]) else "–"
            if row.get("overlaps_next"):
                rank += " ≈"
            attacks = len([a for a in str(row.get("attacks_run") or "").split(";") if a])
            cert = _with_ci(row, "certified_accuracy")
            if _given(row.get("reduced_budget")):
                attacks = f"{attacks} (reduced budget: {_list(row['reduced_budget'])})"
            out.append(f"| {rank} | {md(row['defense'])}: {md(row['name'])} | {_with_ci(row, 'clean_accuracy')} "
                       f"| {_claim(row)} | {_worst(row)} | {cert} | {_list(row.get('flags_raised'))} "
                       f"| {attacks} | {_list(row.get('missing_attacks'))} | {_list(row.get('failed_attacks'))} |")
        out.append("")
    if len(table):
        out += ["[low, high]: exact 95% interval (Clopper–Pearson over the examples scored). ≈ after a rank: this "
                "row's worst-case interval overlaps the next ranked row's, so their order is not significant. "
                "A claim is judged only on its own dataset, threat and model: not reproduced when it lies above "
                "the worst case's interval.", ""]
    errors = [r for r in board.runs if r.kind == "error"]
    if errors:
        out += [f"### Failed jobs ({len(errors)})", "", "| job | error | seconds | message |",
                "| --- | --- | ---: | --- |"]
        for r in errors:
            err = r.record.get("error") or {}
            out.append(f"| {md(r.run_id)} | {md(err.get('kind'))} | {_num(err.get('seconds'))} "
                       f"| {md(err.get('message') or '')} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Print the summary; exit 1 on an unreadable result file."""
    from gauntlet.benchmark.results import ResultError

    p = argparse.ArgumentParser(prog="python -m gauntlet.benchmark.summary", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="?", default=Path("results"), help="results folder")
    p.add_argument("--submissions", type=Path, default=None,
                   help="fallback for manifests when a manifest.json is missing")
    args = p.parse_args(argv)
    try:
        print(render(args.results, args.submissions))
    except ResultError as e:
        print(f"## Gauntlet\n\n**Unreadable result:** {md(e)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
