"""The README's results table, in the spirit of Table 1 of Athalye, Carlini & Wagner (2018).

One table per dataset; per defense: the example count, clean accuracy, and the accuracy a naive
evaluation reports (the naive baseline: the attack whose result records the
``naive_baseline`` trait, PGD on raw gradients, or its rejection-blind variant against a
detector) next to Gauntlet's adaptive per-example worst case over every attack, with its
exact 95% interval and the strongest single attack, at the two fixed threats
``linf-0.031`` and ``l2-0.005`` and, when present, at the ε-sweep points ``linf-0.1``,
``linf-0.3`` and ``l2-0.05`` (MNIST models lose little at 0.031 even undefended, so the
naive-versus-adaptive gap shows at larger ε). Every ε of a sweep is a full threat model:
every applicable attack runs there.

Every number comes from result files through :mod:`gauntlet.leaderboard.aggregate` (the site's
numbers); nothing is re-implemented here. ``gauntlet report [--results DIR] [--readme
README.md]`` rewrites the text between ``<!-- gauntlet:table:start -->`` and
``<!-- gauntlet:table:end -->`` (:func:`update_readme`).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from gauntlet.benchmark.intervals import percent
from gauntlet.benchmark.summary import md

START = "<!-- gauntlet:table:start -->"
END = "<!-- gauntlet:table:end -->"
#: ε-sweep points shown beside the fixed threats when any defense has results there.
SWEEP_POINTS = ("linf-0.1", "linf-0.3", "l2-0.05")
_TITLE = {"linf-0.031": "ℓ∞ ε = 0.031", "l2-0.005": "ℓ2 ε = 0.005 (RMS)", "linf-0.1": "ℓ∞ ε = 0.1",
          "linf-0.3": "ℓ∞ ε = 0.3", "l2-0.05": "ℓ2 ε = 0.05 (RMS)"}


class ReportError(ValueError):
    """The README cannot be updated (missing or misplaced markers); names the file."""


def _space(text: str) -> str:
    """`` text`` with a leading space, or empty."""
    return f" {text}" if text else ""


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}%"


def _cell(board: Any, dataset: str, defense: str, threat: str, notes: set[str]) -> str:
    """``naive → **worst case** [interval] (strongest attack)`` at one threat, with markers."""
    from gauntlet.leaderboard import aggregate as agg

    wc = agg.worst_case(board, dataset, defense, threat)
    failed = agg.failed_attacks(board, dataset, defense, threat)
    if wc is None or wc.accuracy is None:
        if failed:
            notes.add("failed")
            return f"– (all {len(failed)} attacks failed ⚠)"
        return "–"
    if wc.naive_blind:  # a detector: the naive evaluation ignores rejection
        notes.add("blind")
    text = f"{_pct(wc.naive_accuracy)}{' ‡' if wc.naive_blind else ''} → **{_pct(wc.accuracy)}**" \
           f"{_space(percent(wc.accuracy_ci))} ({md(wc.strongest)})"
    if agg.reduced_budgets(board, dataset, defense, threat):
        notes.add("reduced")
        text += " †"
    if failed:
        notes.add("failed")
        text += f" ⚠ incomplete: {', '.join(md(a) for a in failed)} failed"
    return text


def _dataset_table(board: Any, ranked: Any, dataset: str, notes: set[str]) -> list[str]:
    """One dataset's heading, profile line and table rows (Markdown lines)."""
    from gauntlet.benchmark.threats import FIXED_THREATS
    from gauntlet.leaderboard import aggregate as agg

    runs = [r for r in board.runs if r.dataset == dataset]
    threats = list(FIXED_THREATS) + [t for t in SWEEP_POINTS if any(r.threat == t for r in runs)]
    header = ["Defense", "Dataset", "Examples", "Clean [95% interval]"] + [
        f"{_TITLE.get(t, t)}: naive → worst case [95% interval] (strongest)" for t in threats]
    out = [f"**{md(dataset)}** · profile: {md(agg.profile_summary(runs)['label'])}.", "",
           "| " + " | ".join(header) + " |", "| --- | --- | ---: | ---: |" + " --- |" * len(threats)]
    first = ranked[(ranked["dataset"] == dataset) & (ranked["threat"] == FIXED_THREATS[0])]
    for defense in first["defense"]:
        name = md(board.name(dataset, defense))
        build = agg.prepare_error(board, dataset, defense)
        if build:
            notes.add("build")
            cells = [name, md(dataset), "–", "–"] + [f"build failed: {md(build.kind)}"] * len(threats)
        else:
            wcs = [agg.worst_case(board, dataset, defense, t) for t in FIXED_THREATS]
            base = next((w for w in wcs if w is not None and w.accuracy is not None), None)
            cells = [name, md(dataset), str(base.n) if base else "–",
                     _pct(base.clean_accuracy if base else None) + _space(percent(base.clean_ci if base else None))]
            cells += [_cell(board, dataset, defense, t, notes) for t in threats]
        out.append("| " + " | ".join(cells) + " |")
    return out


def render_table(results_dir: Path) -> str:
    """The Markdown tables of every defense in ``results_dir``, one per dataset.

    Args:
        results_dir: the runner's results folder.

    Returns:
        Markdown: per dataset (registry order) a heading with its profile and example
        count, then its table (the sweep columns that dataset has); then the footnotes.

    Raises:
        gauntlet.benchmark.results.ResultError: naming the file, for an unreadable result or a
            missing folder.
    """
    from gauntlet.benchmark.catalog import fallback_catalog
    from gauntlet.leaderboard import aggregate as agg

    board = agg.load_board(Path(results_dir), catalog=fallback_catalog(results_dir))
    ranked = agg.leaderboard(board)
    notes: set[str] = set()
    out: list[str] = []
    for dataset in board.datasets():
        out += ([""] if out else []) + _dataset_table(board, ranked, dataset, notes)
    if not out:
        out = ["| (no results) |"]
    naive = [f"`{a}`" for a in agg.naive_baselines(board)]
    out += ["", f"Naive = the naive baseline alone ({' or '.join(naive) or 'the naive_baseline attack'}: PGD on raw "
            "gradients); worst case = per example, the minimum over every attack run at that threat, then the mean "
            "(it can be lower than any single attack); in parentheses the strongest single attack (under the cascade, "
            "the one that broke the most examples among those it ran on). Every ε, sweep "
            "points included, is a full threat model: every applicable attack runs there. [low, high] = the exact "
            "95% interval of the worst case, in percent (Clopper–Pearson over the examples scored; for a "
            "randomized defense's fractional scores the bounds at the floor and ceiling of their sum), and of the "
            "clean accuracy in its column."]
    if "blind" in notes:
        out += ["", "‡ the defense rejects inputs: naive = the rejection-blind baseline (traits naive_baseline and "
                "needs_rejection), PGD blind to the reject option; every other attack is rejection-aware."]
    if "reduced" in notes:
        out += ["", "† some attack ran with a reduced budget declared in the manifest (reason on the site)."]
    if "failed" in notes:
        out += ["", "⚠ incomplete: some attack job failed (time or memory limit, crash or exception); the worst "
                "case is over the attacks that finished, an upper bound."]
    if "build" in notes:
        out += ["", "build failed: the defense could not be built, so no attack ran."]
    return "\n".join(out) + "\n"


def update_readme(readme: Path, results_dir: Path) -> bool:
    """Replace the text between the table markers of ``readme`` with :func:`render_table`.

    Args:
        readme: the Markdown file holding ``<!-- gauntlet:table:start -->`` and
            ``<!-- gauntlet:table:end -->``, once each, in that order.
        results_dir: the runner's results folder.

    Returns:
        True when the file changed, False when it was already up to date.

    Raises:
        ReportError: naming the file, when the markers are missing, repeated or reversed.
        OSError: the file cannot be read or written.
        gauntlet.benchmark.results.ResultError: an unreadable result file.
    """
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    counts = (text.count(START), text.count(END))
    if counts != (1, 1) or text.index(START) > text.index(END):
        raise ReportError(f"{readme}: needs exactly one {START} followed by one {END} "
                          f"(found {counts[0]} start and {counts[1]} end markers)")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    table = render_table(results_dir)
    new = (f"{head}{START}\n<!-- generated by `gauntlet report` from result files; edits here are overwritten -->\n"
           f"{table}{END}{tail}")
    if new == text:
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{readme.name}.", suffix=".tmp", dir=readme.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
        os.replace(tmp, readme)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to ``gauntlet``'s subparsers."""
    p = sub.add_parser("report", help="update the README's results table from result files")
    p.add_argument("--results", type=Path, default=Path("results"), help="result folder (default results/)")
    p.add_argument("--readme", type=Path, default=Path("README.md"), help="file with the table markers")
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """``gauntlet report``: 0 on success (changed or not), 2 on bad input (missing folder,
    file or markers, unreadable result), reported as ``error: file: reason``."""
    from gauntlet.benchmark.results import ResultError

    if not Path(args.results).is_dir():
        print(f"error: {args.results}: (path): no result folder; run 'gauntlet run' first", file=sys.stderr)
        return 2
    try:
        changed = update_readme(args.readme, args.results)
    except (ReportError, ResultError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {args.readme}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"{args.readme}: table {'updated' if changed else 'already up to date'} from {args.results}")
    return 0
