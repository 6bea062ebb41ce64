"""Loading result files: :class:`Run`, :class:`Board` and :func:`load_board`.

Result files are read only through :func:`gauntlet.benchmark.results.iter_results`, so an
unreadable file, an unknown schema or a value the schema does not allow (a string, NaN
or 5.0 as an accuracy: :mod:`gauntlet.benchmark.records`) raises
:class:`~gauntlet.benchmark.results.ResultError` naming the file and the field (a missing row or
a 500% cell would be a silent lie); here each record is also checked to sit at the path
its ids give. Manifest facts come from ``<results>/<dataset>/<defense>/manifest.json``
(written by the runner, checked as :class:`ManifestFacts`) or, failing
that, from ``<submissions>/<defense>/manifest.yaml``; no defense code is imported.
Scoring is in :mod:`gauntlet.leaderboard.aggregate`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gauntlet.benchmark import manifest as mf
from gauntlet.benchmark.catalog import CATALOG_FILE
from gauntlet.benchmark.records import ABSENT, check_model
from gauntlet.benchmark.results import ResultError, iter_results
from gauntlet.benchmark.threats import get_threat
from gauntlet.leaderboard.job_errors import JobError, check_error, job_error

MANIFEST_FILE = "manifest.json"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PaperFacts(BaseModel):
    """``paper`` of a manifest.json (the site links only an http(s) ``url``)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    title: str
    url: str | None = None
    venue: str | None = None
    year: int | None = None


class ManifestFacts(BaseModel):
    """``<results>/<dataset>/<defense>/manifest.json``: the manifest's facts the runner
    copies beside the results (a dump of :class:`gauntlet.benchmark.manifest.Manifest` plus
    ``manifest_sha256``), as far as the site reads them. Claims, certificate, reduced
    budgets and example limits are checked by the manifest's own models, so a claimed
    accuracy obeys the manifest's rule: a number in [0, 1]. A field may be absent (older
    folders), but not of another type when present."""

    model_config = ConfigDict(extra="ignore", strict=True)
    id: str = Field(min_length=1)
    name: str = ABSENT
    paper: PaperFacts | None = None
    authors: list[str] = ABSENT
    claims: list[mf.Claim] = ABSENT
    properties: mf.Properties = ABSENT
    certify: mf.Certificate | None = None
    attack_overrides: list[mf.AttackOverride] = ABSENT
    example_limits: list[mf.ExampleLimit] = ABSENT
    notes: str | None = None


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
        catalog: attack id → {summary, params, gradient_free, needs_reparameterization, traits, floors},
            in registry order (:func:`read_catalog`) (the methodology page,
            the missing-attack rule, and the traits of records written before they carried
            ``attack.traits``).
    """

    results_dir: Path
    runs: list[Run]
    manifests: dict[tuple[str, str], dict[str, Any]]
    catalog: dict[str, dict[str, Any]] = field(default_factory=dict)

    def datasets(self) -> list[str]:
        """Dataset ids with results: registered ones in registry order, then the rest sorted."""
        from gauntlet.benchmark.datasets import DATASETS

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
        catalog: the attack catalog; default :func:`read_catalog` (``attacks.json``).

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
    return Board(results_dir, runs, manifests, read_catalog(results_dir, runs) if catalog is None else catalog)


def _check(path: Path, run_id: str, record: dict[str, Any]) -> None:
    """Raise ResultError naming ``path`` unless the record sits where its ids say.

    Values and per-example arrays were checked on reading (:mod:`gauntlet.benchmark.records`);
    what is left is the file's place: ``<dataset>/<defense>/<threat|certify>/<name>``.
    """
    try:
        _check_place(run_id, record)
    except ValueError as e:  # "<field>: <reason>"
        raise ResultError(f"{path}: {e}") from None


def _check_place(run_id: str, record: dict[str, Any]) -> None:
    parts = run_id.split("/")
    if record["run_id"] != run_id:
        raise ValueError(f"run_id: {record['run_id']!r} does not match its path {run_id!r}")
    if len(parts) != 4 or not all(_ID.match(p) for p in parts):
        raise ValueError(f"run_id: path {run_id!r} is not <dataset>/<defense>/<threat|certify>/<name>")
    if (record["dataset"]["id"], record["defense"]["id"]) != (parts[0], parts[1]):
        raise ValueError("dataset.id: dataset.id/defense.id do not match the path")
    kind = record["kind"]
    if kind == "attack":
        if (record["threat"]["id"], record["attack"]["id"]) != (parts[2], parts[3]):
            raise ValueError("threat.id: threat.id/attack.id do not match the path")
        _known_threat("threat.id", record["threat"]["id"])
    elif kind == "flags":
        if record["threat"]["id"] != parts[2] or parts[3] != "flags":
            raise ValueError("threat.id: flags file not at <threat>/flags.json")
    elif kind == "certify":
        if parts[2] != "certify" or record["method"] != parts[3]:
            raise ValueError("method: certify file not at certify/<method>.json")
    elif kind == "error":
        if parts[2] != "certify":
            _known_threat("run_id", parts[2])
        check_error(record, parts)


def _known_threat(field: str, threat_id: str) -> None:
    try:
        get_threat(threat_id)
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None


def _manifest(results_dir: Path, submissions_dir: Path | None, key: tuple[str, str],
              runs: list[Run]) -> dict[str, Any]:
    dataset, defense = key
    path = results_dir / dataset / defense / MANIFEST_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultError(f"{path}: unreadable manifest file: {e}") from None
        check_model(ManifestFacts, data, str(path))
        if data["id"] != defense:
            raise ResultError(f"{path}: id: {data['id']!r} is not the defense of this folder ({defense!r})")
        return data
    if submissions_dir is not None and (Path(submissions_dir) / defense / "manifest.yaml").is_file():
        from gauntlet.benchmark.manifest import ManifestError, parse_manifest

        try:
            return parse_manifest(Path(submissions_dir) / defense / "manifest.yaml").model_dump(
                mode="json", by_alias=True)
        except ManifestError as e:
            raise ResultError(str(e)) from None
    name = next(r.record["defense"].get("name") for r in runs if (r.dataset, r.defense) == key)
    return {"id": defense, "name": name or defense}


def read_catalog(results_dir: Path, runs: list[Run]) -> dict[str, dict[str, Any]]:
    """The attack catalog: ``<results>/attacks.json`` as the runner wrote it (registry
    order), else, for folders older than that file, one entry per attack id the records
    name, with the summary, parameters and traits they recorded.

    Raises:
        ResultError: an unreadable or malformed ``attacks.json``.
    """
    path = Path(results_dir) / CATALOG_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))["attacks"]
            return {str(a): _catalog_entry(a, c) for a, c in data.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ResultError(f"{path}: attacks: unreadable attack catalog ({type(e).__name__}: {e})") from None
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        attack = r.record.get("attack") if r.kind == "attack" else None
        if isinstance(attack, dict) and attack.get("id") not in out:
            out[str(attack["id"])] = {"summary": attack.get("summary") or attack["id"],
                                      "params": dict(attack.get("params") or {}),
                                      "gradient_free": bool((attack.get("traits") or {}).get("gradient_free")),
                                      "needs_reparameterization": bool((attack.get("traits") or {}).get(
                                          "needs_reparameterization")),
                                      "traits": dict(attack.get("traits") or {})}
    return out


def _catalog_entry(attack_id: str, c: dict[str, Any]) -> dict[str, Any]:
    traits = c["traits"]
    if not isinstance(traits, dict) or not all(isinstance(v, bool) for v in traits.values()):
        raise ValueError(f"{attack_id}.traits: expected booleans")
    if not isinstance(c["summary"], str) or not isinstance(c["params"], dict):
        raise ValueError(f"{attack_id}: summary must be text and params an object")
    floors = c.get("floors", {})  # budget floors: catalogs written before them have none
    if not isinstance(floors, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in floors.values()):
        raise ValueError(f"{attack_id}.floors: expected numbers")
    return {"summary": c["summary"], "params": c["params"], "gradient_free": bool(c.get("gradient_free")),
            "needs_reparameterization": bool(c.get("needs_reparameterization")), "traits": traits,
            "floors": floors}


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
