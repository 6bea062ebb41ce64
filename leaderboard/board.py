"""Loading result files: :class:`Run`, :class:`Board` and :func:`load_board`.

Result files are read only through :func:`benchmark.results.iter_results`, so an
unreadable file or an unknown schema raises :class:`~benchmark.results.ResultError`
naming the file (a missing row would be a silent lie); every record is checked for the
fields the site reads. Manifest facts come from ``<results>/<dataset>/<defense>/manifest.json``
(written by the runner) or, failing that, from ``<submissions>/<defense>/manifest.yaml``;
no defense code is imported. Scoring is in :mod:`leaderboard.aggregate`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.results import ResultError, iter_results
from benchmark.threats import get_threat
from leaderboard.job_errors import JobError, check_error, job_error

MANIFEST_FILE = "manifest.json"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Per-example scores of schema 2 that older records lack (checked when present).
_OPTIONAL_SCORES = ("robust_correct_reject_as_win", "robust_correct_reject_as_error")


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
        """``attack``, ``flags``, ``certify`` or ``error``."""
        return self.record["kind"]

    @property
    def slot(self) -> str:
        """The path's third part: the threat id, or ``certify``."""
        return self.run_id.split("/")[2]

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
        """Threat id recorded in the file (None for certify runs and build failures)."""
        return (self.record.get("threat") or {}).get("id")


@dataclass
class Board:
    """Every result under a results folder, indexed for the site.

    Attributes:
        results_dir: the folder read.
        runs: every result file, sorted by path.
        manifests: manifest facts per (dataset, defense), a JSON-ready dict.
        catalog: attack id → {summary, params, gradient_free, needs_reparameterization, traits,
            not_applicable(facts) -> reason or None}, in registry order (the methodology page,
            the missing-attack rule, and the traits of records written before they carried
            ``attack.traits``).
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

    def errors(self, dataset: str, defense: str | None = None, slot: str | None = None) -> list[JobError]:
        """Failed jobs filtered by dataset, defense and slot (threat id or ``certify``)."""
        return [job_error(r.run_id, r.record) for r in self.runs
                if r.kind == "error" and r.dataset == dataset and (defense is None or r.defense == defense)
                and (slot is None or r.slot == slot)]


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
            per = record["per_example"]
            attacked = per.get("attacked")
            if attacked is not None and (len(attacked) != n or not all(isinstance(a, bool) for a in attacked)):
                raise ValueError(f"per_example.attacked is not {n} booleans")
            for key in ("clean_correct", "robust_correct", "robust_correct_worst", *_OPTIONAL_SCORES):
                if key not in per and key in _OPTIONAL_SCORES:
                    continue
                if len(per[key]) != n:
                    raise ValueError(f"per_example.{key} has {len(per[key])} entries for {n} indices")
                # null: an example the cascade did not hand to the attack (never a clean score)
                for i, v in enumerate(per[key]):
                    if v is None and key != "clean_correct" and attacked is not None and not attacked[i]:
                        continue
                    if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                        raise ValueError(f"per_example.{key} has a score outside [0, 1]")
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
        elif kind == "error":
            if parts[2] != "certify":
                get_threat(parts[2])
            check_error(record, parts)
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
    """Every registered attack with its summary, default parameters and traits
    (``Attack.traits()``: naive_baseline, adaptive, needs_rejection, …), in registry order."""
    from attacks.base import ATTACKS
    from attacks.registry import attack_ids, make_attack

    out = {}
    for attack_id in attack_ids():
        cls = ATTACKS.get(attack_id)
        out[attack_id] = {"summary": cls.summary, "params": make_attack(attack_id).describe()["params"],
                          "gradient_free": bool(cls.gradient_free),
                          "needs_reparameterization": bool(cls.needs_reparameterization),
                          "traits": dict(cls.traits()), "not_applicable": cls.not_applicable}
    return out


def attack_traits(board: Board, record: dict[str, Any]) -> dict[str, bool]:
    """The traits of the attack of a result record: ``attack.traits`` as recorded (schema 2),
    else the registry catalog's traits for its id (older records), else none known."""
    recorded = (record.get("attack") or {}).get("traits")
    if isinstance(recorded, dict):
        return {str(k): bool(v) for k, v in recorded.items()}
    return dict((board.catalog.get((record.get("attack") or {}).get("id")) or {}).get("traits") or {})


def attack_order(board: Board, ids: list[str]) -> list[str]:
    """``ids`` in registry (catalog) order, unknown ids after them, sorted."""
    known = [a for a in board.catalog if a in ids]
    return known + sorted(set(ids) - set(known))
