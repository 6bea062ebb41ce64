"""Result files → tables: per-example worst case, ranking, claim gaps, flags, missing attacks.

Every number the site shows is computed here, in Python; the templates only lay it out.
Result files are read only through :func:`benchmark.results.iter_results`, so an
unreadable file or an unknown schema raises :class:`~benchmark.results.ResultError`
naming the file (a missing row would be a silent lie). Manifest facts come from
``<results>/<dataset>/<defense>/manifest.json`` (written by the runner) or, failing
that, from ``<submissions>/<defense>/manifest.yaml``; no defense code is imported.

Scoring (DESIGN.md): an example counts as robust at a threat model only if it survives
every attack run there, so the headline is the mean over examples of the minimum over
attacks of ``robust_correct`` (the per-example worst case, as AutoAttack reports it).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.results import ResultError, iter_results
from benchmark.threats import FIXED_THREATS, get_threat

#: A claim is marked "not reproduced" when claim − measured exceeds this.
GAP_TOLERANCE = 0.05
#: The attack a naive evaluation runs (the "claimed versus measured" baseline).
NAIVE_ATTACK = "pgd"
MANIFEST_FILE = "manifest.json"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Run:
    """One result file.

    Attributes:
        path: the file.
        run_id: its canonical id (path relative to the results folder, no ``.json``).
        record: the parsed JSON.
    """

    path: Path
    run_id: str
    record: dict[str, Any]

    @property
    def kind(self) -> str:
        """``attack``, ``flags`` or ``certify``."""
        return self.record["kind"]

    @property
    def dataset(self) -> str:
        """Dataset id."""
        return self.record["dataset"]["id"]

    @property
    def defense(self) -> str:
        """Defense id."""
        return self.record["defense"]["id"]

    @property
    def threat(self) -> str | None:
        """Threat id (None for certify runs)."""
        return self.record.get("threat", {}).get("id")


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


@dataclass
class Board:
    """Every result under a results folder, indexed for the site.

    Attributes:
        results_dir: the folder read.
        runs: every result file, sorted by path.
        manifests: manifest facts per (dataset, defense), a JSON-ready dict.
        catalog: attack id → {summary, params, gradient_free, needs_reparameterization},
            in registry order (the methodology page and the missing-attack rule).
    """

    results_dir: Path
    runs: list[Run]
    manifests: dict[tuple[str, str], dict[str, Any]]
    catalog: dict[str, dict[str, Any]] = field(default_factory=dict)

    def datasets(self) -> list[str]:
        """Dataset ids with results: registered ones in registry order, then the rest sorted."""
        from benchmark.datasets import DATASETS

        seen = {r.dataset for r in self.runs}
        return [d for d in DATASETS if d in seen] + sorted(seen - set(DATASETS))

    def defenses(self, dataset: str) -> list[str]:
        """Defense ids with results on ``dataset``, sorted."""
        return sorted({r.defense for r in self.runs if r.dataset == dataset})

    def select(self, kind: str, dataset: str, defense: str | None = None,
               threat: str | None = None) -> list[Run]:
        """Runs of one kind filtered by dataset, defense and threat."""
        return [r for r in self.runs if r.kind == kind and r.dataset == dataset
                and (defense is None or r.defense == defense)
                and (threat is None or r.threat == threat)]

    def name(self, dataset: str, defense: str) -> str:
        """Display name of a defense."""
        return self.manifests.get((dataset, defense), {}).get("name") or defense


# -- loading ---------------------------------------------------------------------------

def load_board(results_dir: Path, submissions_dir: Path | None = None,
               catalog: dict[str, dict[str, Any]] | None = None) -> Board:
    """Read every result file and manifest under ``results_dir``.

    Args:
        results_dir: the runner's output folder.
        submissions_dir: where to find ``<defense>/manifest.yaml`` when the runner wrote
            no ``manifest.json``.
        catalog: the attack catalog; default :func:`attack_catalog` (the registry).

    Returns:
        The indexed results.

    Raises:
        ResultError: naming the file, for an unreadable, unknown-schema or malformed
            result or manifest file, or a missing results folder.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ResultError(f"{results_dir}: results folder not found")
    runs = []
    for path, record in iter_results(results_dir):
        run_id = path.relative_to(results_dir).with_suffix("").as_posix()
        _check(path, run_id, record)
        runs.append(Run(path, run_id, record))
    manifests = {}
    for key in sorted({(r.dataset, r.defense) for r in runs}):
        manifests[key] = _manifest(results_dir, submissions_dir, key, runs)
    return Board(results_dir, runs, manifests, attack_catalog() if catalog is None else catalog)


def _check(path: Path, run_id: str, record: dict[str, Any]) -> None:
    """Raise ResultError naming ``path`` unless the record has what the site reads."""
    try:
        parts = run_id.split("/")
        if record["run_id"] != run_id:
            raise ValueError(f"run_id {record['run_id']!r} does not match its path {run_id!r}")
        if len(parts) != 4 or not all(_ID.match(p) for p in parts):
            raise ValueError(f"path {run_id!r} is not <dataset>/<defense>/<threat|certify>/<name>")
        if (record["dataset"]["id"], record["defense"]["id"]) != (parts[0], parts[1]):
            raise ValueError("dataset.id/defense.id do not match the path")
        n = len(record["dataset"]["indices"])
        kind = record["kind"]
        if kind == "attack":
            if (record["threat"]["id"], record["attack"]["id"]) != (parts[2], parts[3]):
                raise ValueError("threat.id/attack.id do not match the path")
            get_threat(record["threat"]["id"])
            for key in ("clean_correct", "robust_correct", "robust_correct_worst"):
                if len(record["per_example"][key]) != n:
                    raise ValueError(f"per_example.{key} has {len(record['per_example'][key])} "
                                     f"entries for {n} indices")
            float(record["summary"]["robust_accuracy"])
        elif kind == "flags":
            if record["threat"]["id"] != parts[2] or parts[3] != "flags":
                raise ValueError("flags file not at <threat>/flags.json")
            for flag in record["flags"]:
                flag["id"], flag["raised"], dict(flag.get("numbers") or {})
        elif kind == "certify":
            if parts[2] != "certify" or record["method"] != parts[3]:
                raise ValueError("certify file not at certify/<method>.json")
            dict(record["summary"]["certified_accuracy"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ResultError(f"{path}: malformed {record.get('kind')} result: {type(e).__name__}: {e}") from None


def _manifest(results_dir: Path, submissions_dir: Path | None, key: tuple[str, str],
              runs: list[Run]) -> dict[str, Any]:
    dataset, defense = key
    path = results_dir / dataset / defense / MANIFEST_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultError(f"{path}: unreadable manifest file: {e}") from None
        if not isinstance(data, dict) or data.get("id") != defense:
            raise ResultError(f"{path}: not the manifest of defense {defense!r}")
        return data
    if submissions_dir is not None and (Path(submissions_dir) / defense / "manifest.yaml").is_file():
        from benchmark.manifest import ManifestError, parse_manifest

        try:
            return parse_manifest(Path(submissions_dir) / defense / "manifest.yaml").model_dump(
                mode="json", by_alias=True)
        except ManifestError as e:
            raise ResultError(str(e)) from None
    name = next(r.record["defense"].get("name") for r in runs if (r.dataset, r.defense) == key)
    return {"id": defense, "name": name or defense}


def attack_catalog() -> dict[str, dict[str, Any]]:
    """Every registered attack with its summary and default parameters (registry order)."""
    from attacks.base import ATTACKS
    from attacks.registry import attack_ids, make_attack

    out = {}
    for attack_id in attack_ids():
        cls = ATTACKS.get(attack_id)
        out[attack_id] = {"summary": cls.summary, "params": make_attack(attack_id).describe()["params"],
                          "gradient_free": bool(cls.gradient_free),
                          "needs_reparameterization": bool(cls.needs_reparameterization)}
    return out


# -- worst case ------------------------------------------------------------------------

def _attack_order(board: Board, ids: list[str]) -> list[str]:
    known = [a for a in board.catalog if a in ids]
    return known + sorted(set(ids) - set(known))


def worst_case(board: Board, dataset: str, defense: str, threat: str) -> WorstCase | None:
    """Per-example worst case over every attack run at one threat model (None: no run).

    Examples are aligned by their test-split index; when attacks covered different
    examples, only the examples common to all of them are scored (``uneven``).
    """
    runs = board.select("attack", dataset, defense, threat)
    if not runs:
        return None
    order = _attack_order(board, [r.record["attack"]["id"] for r in runs])
    by_id = {r.record["attack"]["id"]: r for r in runs}

    def frame(key: str) -> pd.DataFrame:
        cols = {a: pd.Series(by_id[a].record["per_example"][key],
                             index=by_id[a].record["dataset"]["indices"], dtype=float) for a in order}
        return pd.concat(cols, axis=1, join="inner")

    robust, worst, clean = frame("robust_correct"), frame("robust_correct_worst"), frame("clean_correct")
    sizes = {len(r.record["dataset"]["indices"]) for r in runs}
    n = len(robust)
    if n == 0:
        return WorstCase(None, None, None, 0, order, None, None, {}, True)
    per_attack = {a: float(robust[a].mean()) for a in order}
    strongest = min(order, key=lambda a: (per_attack[a], order.index(a)))
    return WorstCase(
        accuracy=float(robust.min(axis=1).mean()),
        worst_of_draws=float(worst.min(axis=1).mean()),
        clean_accuracy=float(clean.mean(axis=1).mean()),
        n=n, attacks=order, strongest=strongest, strongest_accuracy=per_attack[strongest],
        per_attack=per_attack, uneven=len(sizes) > 1 or n != sizes.pop())


def missing_attacks(board: Board, dataset: str, defense: str, threat: str) -> list[str]:
    """Attacks expected at a threat model but without a result for this defense.

    Expected: every registered attack that applies to any defense (attacks needing a
    reparameterization are only expected when the defense has one, which the results
    alone cannot tell, so they are not expected), plus every attack some other defense
    of the dataset has a result for at this threat.
    """
    present = {r.record["attack"]["id"] for r in board.select("attack", dataset, defense, threat)}
    others = {r.record["attack"]["id"] for r in board.select("attack", dataset, threat=threat)}
    expected = {a for a, c in board.catalog.items() if not c.get("needs_reparameterization")}
    expected |= {a for a in others if not board.catalog.get(a, {}).get("needs_reparameterization")}
    return _attack_order(board, sorted(expected - present))


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
        ``gap`` = claimed − measured and ``not_reproduced`` = gap > GAP_TOLERANCE.
    """
    wc = worst_case(board, dataset, defense, claim["threat"])
    measured = wc.accuracy if wc else None
    gap = None if measured is None else float(claim["accuracy"]) - measured
    other = claim.get("dataset") if claim.get("dataset") not in (None, dataset) else None
    return {"claimed": float(claim["accuracy"]), "threat": claim["threat"], "source": claim.get("source"),
            "other_dataset": other, "measured": measured, "gap": gap,
            # Rounded so a gap of exactly the tolerance is not flagged by float noise.
            "not_reproduced": gap is not None and round(gap, 9) > GAP_TOLERANCE,
            "attacks": len(wc.attacks) if wc else 0}


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


# -- tables ------------------------------------------------------------------------------

def _last_date(runs: list[Run]) -> str | None:
    dates = [str(r.record.get("timing", {}).get("finished_at") or "") for r in runs]
    dates = [d for d in dates if d]
    return max(dates)[:10] if dates else None


def leaderboard(board: Board) -> pd.DataFrame:
    """One row per (dataset, fixed threat, defense), ranked within each table.

    Sort key: per-example worst-case robust accuracy, descending; ties share a rank and
    are listed by clean accuracy, then id. Defenses without an attack result at the
    threat come last, unranked.
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
    df = df.sort_values(["dataset", "threat", "_key", "_clean", "defense"],
                        ascending=[True, True, False, False, True], na_position="last",
                        key=lambda s: s.map(order[s.name].index) if s.name in order else s)
    df["rank"] = (df.groupby(["dataset", "threat"])["_key"].rank(method="min", ascending=False)
                  .astype("Int64"))
    return df.drop(columns=["_key", "_clean"]).reset_index(drop=True)


_COLUMNS = ["dataset", "threat", "rank", "defense", "name", "paper_title", "paper_url", "venue",
            "authors", "clean_accuracy", "claim_accuracy", "claim_threat", "claim_source",
            "claim_dataset", "claim_measured", "claim_gap", "not_reproduced", "robust_accuracy",
            "robust_accuracy_worst_of_draws", "strongest_attack", "pgd_accuracy", "certified_accuracy",
            "certificate", "flags_raised", "attacks_run", "missing_attacks", "n", "run_date"]


def _row(board: Board, dataset: str, defense: str, threat: str) -> dict[str, Any]:
    m = board.manifests.get((dataset, defense), {})
    paper = m.get("paper") or {}
    wc = worst_case(board, dataset, defense, threat)
    claim = pick_claim(m, dataset, threat)
    gap = claim_gap(board, dataset, defense, claim) if claim else None
    cert = certified(board, dataset, defense, threat)
    fl = flags(board, dataset, defense, threat) or []
    runs = board.select("attack", dataset, defense, threat) + board.select("flags", dataset, defense, threat)
    return {
        "dataset": dataset, "threat": threat, "rank": None, "defense": defense,
        "name": board.name(dataset, defense), "paper_title": paper.get("title"),
        "paper_url": paper.get("url"), "venue": paper.get("venue"),
        "authors": "; ".join(m.get("authors") or []),
        "clean_accuracy": wc.clean_accuracy if wc else None,
        "claim_accuracy": gap["claimed"] if gap else None,
        "claim_threat": gap["threat"] if gap else None,
        "claim_source": gap["source"] if gap else None,
        "claim_dataset": gap["other_dataset"] if gap else None,
        "claim_measured": gap["measured"] if gap else None,
        "claim_gap": gap["gap"] if gap else None,
        "not_reproduced": bool(gap and gap["not_reproduced"]),
        "robust_accuracy": wc.accuracy if wc else None,
        "robust_accuracy_worst_of_draws": wc.worst_of_draws if wc else None,
        "strongest_attack": wc.strongest if wc else None,
        "pgd_accuracy": wc.per_attack.get(NAIVE_ATTACK) if wc else None,
        "certified_accuracy": cert[0] if cert else None,
        "certificate": cert[1] if cert else None,
        "flags_raised": ";".join(f["id"] for f in fl if f["raised"]),
        "attacks_run": ";".join(wc.attacks) if wc else "",
        "missing_attacks": ";".join(missing_attacks(board, dataset, defense, threat)),
        "n": wc.n if wc else 0,
        "run_date": _last_date(runs),
    }


def attack_table(board: Board, dataset: str, defense: str, threat: str) -> pd.DataFrame:
    """One row per attack run at a threat model, in registry order."""
    runs = board.select("attack", dataset, defense, threat)
    order = _attack_order(board, [r.record["attack"]["id"] for r in runs])
    rows = []
    for r in sorted(runs, key=lambda r: order.index(r.record["attack"]["id"])):
        rec, s = r.record, r.record["summary"]
        rows.append({
            "attack": rec["attack"]["id"], "summary": rec["attack"].get("summary"),
            "params": rec["attack"].get("params") or {},
            "override_reason": rec["attack"].get("override_reason"),
            "n": s.get("n"), "clean_accuracy": s.get("clean_accuracy"),
            "robust_accuracy": s["robust_accuracy"],
            "robust_accuracy_worst_of_draws": s.get("robust_accuracy_worst_of_draws"),
            "clean_rejection_rate": s.get("clean_rejection_rate"),
            "adv_rejection_rate": s.get("adv_rejection_rate"), "draws": rec.get("draws"),
            "wall_seconds": rec.get("timing", {}).get("wall_seconds"), "run_id": r.run_id})
    return pd.DataFrame(rows)


def sweep_curve(board: Board, dataset: str, defense: str, norm: str) -> pd.DataFrame:
    """Accuracy versus ε for one norm: per-ε worst case over the attacks present at that
    ε, and the naive ``pgd`` curve where it was run. Columns: eps, worst_case,
    attacks (count), pgd; sorted by ε; finite ε only."""
    rows = []
    threats = {r.threat for r in board.select("attack", dataset, defense)}
    for t in threats:
        tm = get_threat(t)
        if tm.norm != norm or math.isinf(tm.eps):
            continue
        wc = worst_case(board, dataset, defense, t)
        rows.append({"eps": tm.eps, "threat": t, "worst_case": wc.accuracy, "attacks": len(wc.attacks),
                     "pgd": wc.per_attack.get(NAIVE_ATTACK, math.nan)})
    return pd.DataFrame(rows, columns=["eps", "threat", "worst_case", "attacks", "pgd"]).sort_values(
        "eps").reset_index(drop=True)


def run_metadata(board: Board, dataset: str, defense: str) -> dict[str, Any]:
    """Commits, library versions, devices, seeds, profiles and timings of a defense's runs
    (each a sorted list of the distinct values seen)."""
    runs = [r for r in board.runs if (r.dataset, r.defense) == (dataset, defense)]
    env_keys = ("commit", "dirty", "device", "device_name", "python", "torch", "numpy", "scipy",
                "platform", "threads")

    def values(get) -> list[str]:
        return sorted({str(v) for v in (get(r.record) for r in runs) if v is not None})

    meta: dict[str, Any] = {k: values(lambda rec, k=k: (rec.get("environment") or {}).get(k)) for k in env_keys}
    meta["seed"] = values(lambda rec: rec.get("seed"))
    meta["profile"] = values(lambda rec: rec.get("profile"))
    finished = values(lambda rec: (rec.get("timing") or {}).get("finished_at"))
    meta["first_finished"] = finished[0] if finished else None
    meta["last_finished"] = finished[-1] if finished else None
    meta["wall_seconds"] = float(sum(float((r.record.get("timing") or {}).get("wall_seconds") or 0)
                                     for r in runs))
    meta["files"] = len(runs)
    return meta
