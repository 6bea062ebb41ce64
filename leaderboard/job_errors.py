"""Failed jobs (``kind: "error"`` result files) as the site shows them.

The runner writes an error record at the path the failed job's result would have had
(docs/results.md, "kind = error"): ``<dataset>/<defense>/<threat>/<attack>.json`` for an
attack job (and for every planned attack when the defense could not be built, job kind
``prepare``), ``<threat>/flags.json`` for a flags job, ``certify/<method>.json`` for a
certificate. The path, not the record's optional ``threat``/``attack`` fields, says which
cell of the site the failure replaces.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Longest message shown in a tooltip line (the full text is on the defense page).
TOOLTIP_CHARS = 160


@dataclass(frozen=True)
class JobError:
    """One failed job.

    Attributes:
        run_id: the error file's run id (``<dataset>/<defense>/<slot>/<name>``).
        job: ``prepare``, ``attack``, ``certify`` or ``flags``.
        slot: the threat id, or ``certify``.
        name: the attack id, ``flags`` or the certification method.
        kind: ``timeout``, ``memory``, ``crash`` or ``exception``.
        message: the one-line error message.
        seconds: wall-clock seconds until the job was stopped (None when not recorded).
        traceback: the worker's traceback, when there is one.
        params: the attack's parameters (after the manifest's override), when recorded.
    """

    run_id: str
    job: str
    slot: str
    name: str
    kind: str
    message: str
    seconds: float | None
    traceback: str | None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``linf-0.031/pgd-eot``, ``certify/randomized-smoothing`` …"""
        return f"{self.slot}/{self.name}"

    @property
    def is_attack_slot(self) -> bool:
        """True when the failure takes an attack's place (an attack or a build failure
        recorded at an attack's path)."""
        return self.slot != "certify" and self.name != "flags"

    @property
    def tooltip(self) -> str:
        """One plain-text line for a badge's title attribute."""
        msg = " ".join(self.message.split())
        if len(msg) > TOOLTIP_CHARS:
            msg = msg[:TOOLTIP_CHARS - 1] + "…"
        what = "build failed" if self.job == "prepare" else self.kind
        return f"{self.label}: {what}" + (f" ({self.kind})" if self.job == "prepare" else "") + (
            f": {msg}" if msg else "")


def infer_job(parts: list[str]) -> str:
    """The job kind a path implies when the record does not say (``job`` is optional)."""
    if parts[2] == "certify":
        return "certify"
    return "flags" if parts[3] == "flags" else "attack"


def check_error(record: dict[str, Any], parts: list[str]) -> None:
    """Raise ValueError unless a (schema-checked) error record's job fits its path.

    Args:
        record: the ``kind: "error"`` record, as :func:`gauntlet.benchmark.results.read_result`
            returns it (its values already checked by :mod:`gauntlet.benchmark.records`).
        parts: its run id split on ``/`` (dataset, defense, slot, name).

    Raises:
        ValueError: ``<field>: <reason>`` for a job, threat or attack that does not
            match the path.
    """
    job = (record.get("job") or {}).get("kind") or infer_job(parts)
    if job in ("attack", "flags") and parts[2] == "certify":
        raise ValueError(f"job.kind: {job} error under certify/")
    if job == "certify" and parts[2] != "certify":
        raise ValueError("job.kind: certify error not at certify/<method>.json")
    threat = record.get("threat")
    if threat and threat.get("id") != parts[2]:
        raise ValueError("threat.id: does not match the path")
    attack = record.get("attack")
    if job == "attack" and attack and attack.get("id") != parts[3]:
        raise ValueError("attack.id: does not match the path")


def job_error(run_id: str, record: dict[str, Any]) -> JobError:
    """The :class:`JobError` of a checked error record at ``run_id``."""
    parts = run_id.split("/")
    err = record["error"]
    seconds = err.get("seconds")
    return JobError(run_id=run_id, job=(record.get("job") or {}).get("kind") or infer_job(parts),
                    slot=parts[2], name=parts[3], kind=err["kind"], message=str(err.get("message") or ""),
                    seconds=None if seconds is None else float(seconds), traceback=err.get("traceback"),
                    params=dict((record.get("attack") or {}).get("params") or {}))
