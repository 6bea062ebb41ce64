"""Result files: one JSON per run, written atomically, read strictly.

Layout: ``<results>/<dataset>/<defense>/<threat>/<attack>.json`` for attacks,
``<results>/<dataset>/<defense>/<threat>/flags.json`` for gradient-masking flags and
``<results>/<dataset>/<defense>/certify/<method>.json`` for certificates. The relative
path without ``.json`` is the run's canonical id (``run_id``).

Every file carries ``schema_version``, ``kind``, ``run_id``, ``config_hash`` and the
``config`` that was hashed, the environment (commit, dirty flag, library versions,
device) and per-example arrays. Numbers are numbers. A run whose ``config_hash``
already has a file is skipped (resume). A write goes to a temporary file in the same
folder and is renamed into place (``os.replace``), so a killed run never leaves a
partial file. A reader that meets an unreadable file raises; it never skips it. The
schema and its value rules are :mod:`gauntlet.benchmark.records`: the writer checks a record
before writing it and the reader checks every file it reads.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import pydantic_core

from gauntlet.benchmark import records
# Re-exported: the schema (version, kinds, models, value rules) lives in gauntlet.benchmark.records.
from gauntlet.benchmark.records import KINDS, READABLE_SCHEMAS, SCHEMA_VERSION, ResultError  # noqa: F401


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a run's configuration."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def result_path(results_dir: Path, run_id: str) -> Path:
    """Where the result file of ``run_id`` lives."""
    return Path(results_dir) / f"{run_id}.json"


def attack_run_id(dataset: str, defense: str, threat: str, attack: str) -> str:
    """Canonical id of an attack run (also its file path without ``.json``)."""
    return f"{dataset}/{defense}/{threat}/{attack}"


def write_result(results_dir: Path, record: dict[str, Any]) -> Path:
    """Check ``record`` against the schema, write it atomically to its run's path and
    return the path.

    Raises:
        ResultError: the record breaks the schema (:func:`gauntlet.benchmark.records.validate`):
            a harness bug, so nothing is written.
    """
    path = result_path(results_dir, record["run_id"])
    records.validate(record, str(path))
    return write_json(path, record)


def write_json(path: Path, data: Any, sort_keys: bool = True) -> Path:
    """Atomically write ``data`` as JSON at ``path`` (a temporary file in the same folder,
    fsynced, then renamed; :func:`remove_stale_temporaries` removes one a kill left).
    ``sort_keys=False`` keeps an order that means something (the catalog's registry order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=sort_keys, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(results_dir: Path) -> int:
    """Delete temporary files a killed writer left behind (never a finished result)."""
    count = 0
    for tmp in Path(results_dir).rglob(".*.json.*.tmp") if Path(results_dir).is_dir() else []:
        tmp.unlink(missing_ok=True)
        count += 1
    return count


def read_result(path: Path) -> dict[str, Any]:
    """Read one result file and check it against the schema (:mod:`gauntlet.benchmark.records`).

    Raises:
        ResultError: one line naming the file (and the field), when it cannot be parsed,
            has an unknown schema or kind, or holds a value the schema does not allow.
    """
    try:
        record, constants = _parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultError(f"{path}: unreadable result file: {e}") from None
    return records.validate(record, str(path), deep=constants)


def _parse(text: str) -> tuple[Any, bool]:
    """The parsed JSON, and whether it holds a NaN or ±Infinity token.

    pydantic-core's parser is about twice as fast as :mod:`json` (which pays for the
    schema check of a whole results folder); it rejects NaN/Infinity tokens and lone
    surrogate escapes, so on any failure the standard parser decides, noting those tokens
    for :func:`gauntlet.benchmark.records.validate` to locate.

    Raises:
        json.JSONDecodeError: not JSON.
    """
    try:
        return pydantic_core.from_json(text, allow_inf_nan=False), False
    except ValueError:
        pass
    constants: list[str] = []
    record = json.loads(text, parse_constant=lambda token: constants.append(token) or float(token))
    return record, bool(constants)


def existing_hash(results_dir: Path, run_id: str) -> str | None:
    """The config hash of an existing result, or None when there is none.

    An unreadable existing file is not trusted: it is treated as absent and redone.
    """
    path = result_path(results_dir, run_id)
    if not path.is_file():
        return None
    try:
        return read_result(path)["config_hash"]
    except ResultError:
        return None


def iter_results(results_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every result file under ``results_dir`` in sorted order (raises on a bad one).

    ``manifest.json`` files (the manifest facts the runner copies beside a defense's
    results for the leaderboard) and the top-level ``attacks.json`` (the attack catalog,
    :mod:`gauntlet.benchmark.catalog`) are not result files and are skipped.
    """
    root = Path(results_dir)
    for path in sorted(root.rglob("*.json")):
        if path.name == "manifest.json" or (path.parent == root and path.name == "attacks.json"):
            continue
        yield path, read_result(path)


@lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def environment(device: str) -> dict[str, Any]:
    """Commit, dirty flag, machine and library versions recorded in every result."""
    import numpy
    import scipy
    import torch

    commit, dirty = _git_state()
    return {
        "commit": commit,
        "dirty": dirty,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }


def json_number(v: float) -> float | str | None:
    """A float made JSON-safe: ±inf as strings, NaN as None."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v
