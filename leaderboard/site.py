"""Render the static leaderboard site from result files.

``build_site(results_dir, site_dir)`` reads the results (:mod:`gauntlet.leaderboard.aggregate`),
draws the plots (:mod:`gauntlet.leaderboard.plots`), copies the result files and static assets,
and renders the Jinja templates with ``autoescape=True``: every submitter string is
escaped, no template marks submitter data ``|safe``, and only http(s) URLs become
links. The folder is self-contained (no CDN, no network request) and works from
``file://``; the tables are complete and ranked without JavaScript, which only adds
column sorting and a search box. Every accuracy is shown with its exact 95% interval
(a small ``[low, high]`` line with a tooltip; error bars or bands in the plots).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from gauntlet.benchmark.catalog import CATALOG_FILE
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from gauntlet.benchmark.datasets import DATASETS
from gauntlet.benchmark.intervals import percent
from gauntlet.benchmark.profiles import PROFILES
from gauntlet.benchmark.threats import FIXED_THREATS, get_threat
from gauntlet.leaderboard import aggregate as agg
from gauntlet.leaderboard import details, plots

PACKAGE = Path(__file__).resolve().parent
#: Generated sub-folders, removed before each build so no stale page survives.
GENERATED = ("results", "plots", "defenses", "static")
THREAT_TITLE = {"linf-0.031": "ℓ∞, ε = 0.031", "l2-0.005": "ℓ2, ε = 0.005 per input value (RMS)"}
#: Columns of the CSV that hold submitter text (guarded against spreadsheet formulas).
_TEXT_COLUMNS = ("name", "paper_title", "venue", "authors", "claim_source", "build_error")


def build_site(results_dir: Path, site_dir: Path, submissions_dir: Path | None = None,
               catalog: dict[str, dict[str, Any]] | None = None) -> Path:
    """Build the static site.

    Args:
        results_dir: the runner's results folder.
        site_dir: output folder (created; its generated sub-folders are replaced).
        submissions_dir: manifests to fall back on when a defense has no ``manifest.json``.

    Returns:
        The path of ``index.html``.

    Raises:
        gauntlet.benchmark.results.ResultError: naming the file, for any unreadable result.
    """
    board = agg.load_board(Path(results_dir), submissions_dir, catalog)
    site = Path(site_dir)
    site.mkdir(parents=True, exist_ok=True)
    for sub in GENERATED:
        if (site / sub).is_dir():
            shutil.rmtree(site / sub)
    shutil.copytree(PACKAGE / "static", site / "static")
    _copy_results(board, site)

    table = agg.leaderboard(board)
    _write_downloads(table, site)
    env = _environment()
    pages = {"index.html": ("index.html", _index_context(board, table)),
             "claims.html": ("claims.html", _claims_context(board)),
             "methodology.html": ("methodology.html", _methodology_context(board))}
    for dataset in board.datasets():
        for defense in board.defenses(dataset):
            pages[defense_url(dataset, defense)] = (
                "defense.html", _defense_context(board, dataset, defense, site))
    for out, (template, context) in pages.items():
        depth = out.count("/")
        path = site / out
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(env.get_template(template).render(root="../" * depth, page=out, **context),
                        encoding="utf-8")
    return site / "index.html"


# -- Jinja --------------------------------------------------------------------------------

def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(PACKAGE / "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=pct, pp=pp, sortkey=sortkey, http_url=http_url, params=format_params,
                       seconds=seconds, num=num, ci=ci, ci_title=ci_title)
    return env


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def pct(v: Any) -> str:
    """0.734 → ``73.4%``; missing → ``—``."""
    return "—" if _missing(v) else f"{100 * float(v):.1f}%"


def pp(v: Any) -> str:
    """A difference of accuracies in percentage points, signed: ``+65.0 pp``."""
    return "—" if _missing(v) else f"{100 * float(v):+.1f} pp"


def _pair(v: Any) -> tuple[float, float] | None:
    if v is None or isinstance(v, str):
        return None
    try:
        low, high = v
    except (TypeError, ValueError):
        return None
    return None if _missing(low) or _missing(high) else (float(low), float(high))


def ci(v: Any) -> str:
    """An interval ``(0.683, 0.988)`` → ``[68.3, 98.8]`` (percent); missing → empty."""
    return percent(_pair(v))


def ci_title(v: Any) -> str:
    """The tooltip of an interval: ``95% interval (exact Clopper–Pearson): 68.3% to 98.8%``."""
    pair = _pair(v)
    if pair is None:
        return ""
    return f"95% interval (exact Clopper–Pearson): {100 * pair[0]:.1f}% to {100 * pair[1]:.1f}%"


def num(v: Any) -> str:
    """A number for display (4 significant digits); missing → ``—``."""
    if _missing(v):
        return "—"
    return format(v, ".4g") if isinstance(v, float) else str(v)


def sortkey(v: Any) -> str:
    """The ``data-sort`` value of a cell: the number, or empty when missing."""
    return "" if _missing(v) else repr(float(v))


def http_url(url: Any) -> str | None:
    """``url`` when it is an http(s) URL, else None (never rendered as a link)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def format_params(params: Any) -> str:
    """``{"steps": 40, "eot": 1}`` → ``steps=40, eot=1``."""
    if not params:
        return "—"
    return ", ".join(f"{k}={num(v) if isinstance(v, float) else v}" for k, v in params.items())


def seconds(v: Any) -> str:
    """Wall time for display: ``12.3 s`` or ``4.1 min``."""
    if _missing(v):
        return "—"
    v = float(v)
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.1f} h"


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in df.to_dict("records")]


# -- outputs -------------------------------------------------------------------------------

def _copy_results(board: agg.Board, site: Path) -> None:
    for run in board.runs:
        dest = site / "results" / f"{run.run_id}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.path, dest)
    for dataset, defense in board.manifests:
        src = board.results_dir / dataset / defense / agg.MANIFEST_FILE
        if src.is_file():
            dest = site / "results" / dataset / defense / agg.MANIFEST_FILE
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    catalog = board.results_dir / CATALOG_FILE
    if catalog.is_file():
        (site / "results").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(catalog, site / "results" / CATALOG_FILE)


def _write_downloads(table: pd.DataFrame, site: Path) -> None:
    table.to_json(site / "leaderboard.json", orient="records", indent=1, force_ascii=False)
    safe = table.copy()
    for col in _TEXT_COLUMNS:
        # A cell starting with = + - @ is a formula to a spreadsheet (CSV injection).
        safe[col] = safe[col].map(lambda s: "'" + s if isinstance(s, str) and s[:1] in "=+-@" else s)
    safe.to_csv(site / "leaderboard.csv", index=False)


def defense_url(dataset: str, defense: str) -> str:
    """A defense's page, relative to the site's root."""
    return f"defenses/{dataset}/{defense}.html"


# -- page contexts -----------------------------------------------------------------------------

def _common() -> dict[str, Any]:
    """What every page states: the claim rule and the overlap marker's tooltip."""
    return {"claim_rule": agg.CLAIM_RULE, "overlap_tooltip": agg.OVERLAP_TOOLTIP}


def _claim(board: agg.Board, dataset: str, defense: str, threat: str,
           build: Any) -> dict[str, Any] | None:
    """The claim shown in a threat's column, judged (:func:`gauntlet.leaderboard.claims.claim_gap`)."""
    claim = agg.pick_claim(board.manifests.get((dataset, defense), {}), dataset, threat)
    return agg.claim_gap(board, dataset, defense, claim, measure=build is None) if claim else None


def _index_context(board: agg.Board, table: pd.DataFrame) -> dict[str, Any]:
    tables = []
    for dataset in board.datasets():
        for threat in FIXED_THREATS:
            rows = _records(table[(table["dataset"] == dataset) & (table["threat"] == threat)])
            for k, row in enumerate(rows):
                row["url"] = defense_url(dataset, row["defense"])
                fl = None if row["build_error"] else agg.flags(board, dataset, row["defense"], threat)
                row["flags"] = [f for f in fl or [] if f["raised"]]
                row["flags_checked"] = fl is not None
                row["flags_error"] = next((e.tooltip for e in board.errors(dataset, row["defense"], threat)
                                           if e.name == "flags"), None)
                row["missing"] = [a for a in (row["missing_attacks"] or "").split(";") if a]
                row["attacks"] = [a for a in (row["attacks_run"] or "").split(";") if a]
                row["failed"] = [a for a in (row["failed_attacks"] or "").split(";") if a]
                errors = board.errors(dataset, row["defense"])
                row["errors"] = len(errors)
                row["errors_tooltip"] = _errors_tooltip(errors)
                budgets = agg.reduced_budgets(board, dataset, row["defense"], threat)
                row["budgets_tooltip"] = "\n".join(
                    f"{b['attack']}" + (f" ({b['change']})" if b["change"] else "") + f": {b['reason']}"
                    for b in budgets)
                build = agg.prepare_error(board, dataset, row["defense"])
                row["claim"] = _claim(board, dataset, row["defense"], threat, build)
                row["next_name"] = rows[k + 1]["name"] if row["overlaps_next"] and k + 1 < len(rows) else None
            dim = agg.threat_dim(board, dataset)
            tables.append({"dataset": dataset, "threat": threat, "title": THREAT_TITLE[threat],
                           "radius": get_threat(threat).radius(dim) if dim else None, "rows": rows,
                           "description": DATASETS[dataset].description if dataset in DATASETS else ""})
    return {"tables": tables, "title": "Leaderboard", **_common()}


def _errors_tooltip(errors: list[Any]) -> str:
    """One line per failed job; a build failure, recorded at every planned job, once."""
    lines, builds = [], {}
    for e in errors:
        if e.job == "prepare":
            builds.setdefault((e.kind, e.message), []).append(e)
        else:
            lines.append(e.tooltip)
    for (kind, message), same in builds.items():
        lines.insert(0, f"build failed ({kind}): {message} (recorded at {len(same)} planned job"
                        + ("s)" if len(same) > 1 else ")"))
    return "\n".join(lines)


def _claims_context(board: agg.Board) -> dict[str, Any]:
    rows, claims = [], []
    for dataset in board.datasets():
        for defense in board.defenses(dataset):
            m = board.manifests[(dataset, defense)]
            base = {"dataset": dataset, "defense": defense, "name": board.name(dataset, defense),
                    "url": defense_url(dataset, defense)}
            build = agg.prepare_error(board, dataset, defense)
            for threat in FIXED_THREATS:
                wc = None if build else agg.worst_case(board, dataset, defense, threat)
                naive = wc.naive_accuracy if wc else None
                rows.append({**base, "threat": threat, "wc": wc, "build_error": build,
                             "failed": agg.failed_attacks(board, dataset, defense, threat),
                             "naive": naive, "naive_attack": wc.naive if wc else None,
                             "naive_ci": wc.naive_ci if wc else None,
                             "drop": naive - wc.accuracy if naive is not None and wc.accuracy is not None else None,
                             "claim": _claim(board, dataset, defense, threat, build)})
            for claim in m.get("claims") or []:
                claims.append({**base, **agg.claim_gap(board, dataset, defense, claim, measure=build is None)})
    return {"rows": rows, "claims": claims, "naive": agg.naive_baselines(board), "title": "Claimed versus measured",
            **_common()}


def _methodology_context(board: agg.Board) -> dict[str, Any]:
    threats = []
    for threat in FIXED_THREATS:
        tm = get_threat(threat)
        threats.append({"id": threat, "title": THREAT_TITLE[threat], "radii": [
            {"dataset": d.id, "dim": d.dim, "raw": tm.radius(d.dim), "l2": tm.l2_radius(d.dim)}
            for d in DATASETS.values()]})
    return {"threats": threats, "sweeps": {p.name: p.sweeps for p in PROFILES.values()}, "catalog": board.catalog,
            "flag_docs": agg.flag_docs(board), "naive": agg.naive_baselines(board), "title": "Methodology", **_common()}


def _defense_context(board: agg.Board, dataset: str, defense: str, site: Path) -> dict[str, Any]:
    m = board.manifests[(dataset, defense)]
    dim = agg.threat_dim(board, dataset)
    plot_dir = site / "plots" / dataset / defense
    rel = f"plots/{dataset}/{defense}"
    threats = []
    build = agg.prepare_error(board, dataset, defense)
    abstaining = agg.abstains(board, dataset, defense)
    for threat in FIXED_THREATS:
        attacks = _records(details.attack_table(board, dataset, defense, threat))
        threats.append({
            "id": threat, "title": THREAT_TITLE[threat], "attacks": attacks,
            "wc": None if build else agg.worst_case(board, dataset, defense, threat),
            "failed": agg.failed_attacks(board, dataset, defense, threat),
            "missing": [] if build else agg.missing_attacks(board, dataset, defense, threat),
            "not_applicable": {} if build else agg.not_applicable_attacks(board, dataset, defense),
            "flags": agg.flags(board, dataset, defense, threat),
            "flags_error": next((e for e in board.errors(dataset, defense, threat) if e.name == "flags"), None),
            "certified": None if build else agg.certified(board, dataset, defense, threat),
            "claim": _claim(board, dataset, defense, threat, build) if not build else None,
            "budgets": agg.reduced_budgets(board, dataset, defense, threat),
            "draws": int(max((a["draws"] or 1 for a in attacks), default=1)),
            "other": next((a["other_rejection"] for a in attacks if a["other_rejection"]), None),
            "rejects": any((a["clean_rejection_rate"] or 0) > 0 or (a["adv_rejection_rate"] or 0) > 0
                           or a["other_rejection"] for a in attacks)})
    curves = []
    for norm, fixed in (("linf", "linf-0.031"), ("l2", "l2-0.005")):
        curve = details.sweep_curve(board, dataset, defense, norm)
        svg = plots.eps_curve(curve, norm, plot_dir / f"eps-{norm}.svg", get_threat(fixed).eps)
        curves.append({"norm": norm, "svg": f"{rel}/eps-{norm}.svg" if svg else None,
                       "points": _records(curve)})
    certs = []
    l2 = details.sweep_curve(board, dataset, defense, "l2")
    for run in board.select("certify", dataset, defense):
        rec = run.record
        curve = agg.certified_curve(rec)
        svg = None
        radii = {t: get_threat(t).l2_radius(dim) for t in FIXED_THREATS} if dim else {}
        if dim:
            empirical = pd.DataFrame({"radius": l2["eps"] * math.sqrt(dim), "accuracy": l2["worst_case"],
                                      "ci_low": l2["worst_case_ci_low"], "ci_high": l2["worst_case_ci_high"]})
            svg = plots.certified_curve(curve, radii, plot_dir / f"certified-{rec['method']}.svg", empirical)
        per = rec.get("per_example") or {}
        certified = [{"threat": t, "accuracy": v, "ci": agg.certificate_interval(rec, t)}
                     for t, v in (rec["summary"].get("certified_accuracy") or {}).items()]
        certs.append({"method": rec["method"], "params": rec.get("params") or {}, "summary": rec["summary"],
                      "clean_ci": agg.interval(per.get("correct")) if per.get("correct") else None,
                      "certified": certified, "points": _records(curve),
                      "info": rec.get("info") or {}, "run_id": run.run_id,
                      "svg": f"{rel}/certified-{rec['method']}.svg" if svg else None, "radii": radii})
    files = [r.run_id for r in board.runs if (r.dataset, r.defense) == (dataset, defense)]
    manifest_file = (board.results_dir / dataset / defense / agg.MANIFEST_FILE).is_file()
    return {"dataset": dataset, "defense": defense, "name": board.name(dataset, defense), "m": m,
            "threats": threats, "curves": curves, "certs": certs, "meta": details.run_metadata(board, dataset, defense),
            "build_error": build, "cert_errors": board.errors(dataset, defense, "certify"),
            "files": files, "manifest_file": manifest_file, "abstains": abstaining,
            "flag_docs": agg.flag_docs(board), "title": board.name(dataset, defense), "dim": dim, **_common()}
