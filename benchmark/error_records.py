"""The ``kind: "error"`` record of a job that failed, built on the orchestrator's side
from what it knows without running submitted code (the parsed manifest, the attack
registry, the limits).
"""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gauntlet.benchmark.config import RunConfig
    from gauntlet.benchmark.isolation import JobOutcome
    from gauntlet.benchmark.registry import Submission


def _n_examples(cfg: RunConfig) -> int | None:
    from gauntlet.benchmark.profiles import get_profile

    return cfg.n_examples if cfg.n_examples is not None else get_profile(cfg.profile).n_examples


def error_job_config(cfg: RunConfig, sub: Submission, job: str, *, attack_id: str | None = None,
                     threat_id: str | None = None, timeout_s: float, memory_mb: int) -> dict[str, Any]:
    """The configuration of a job as the parent asked for it (hashed into an error record).

    It holds what the parent knows without running submitted code: dataset, defense,
    manifest and weights hashes, the attack's parameters (with the manifest's override)
    and code hash, the threat, seed, profile, number of examples and the limits. An
    error record therefore never matches an attack's own config hash (the failed job is
    retried by the next run), and a caller that wants to skip jobs that already failed
    under the same configuration and limits compares ``config_hash`` with it.

    Args:
        job: ``"prepare"``, ``"attack"``, ``"certify"`` or ``"flags"``.
    """
    from gauntlet.benchmark import results as rf

    m = sub.manifest
    config: dict[str, Any] = {
        "schema_version": rf.SCHEMA_VERSION, "kind": "error", "job": job, "dataset": m.dataset,
        "defense": sub.id, "manifest_sha256": sub.manifest_sha256, "weights_sha256": sub.weights_sha256,
        "seed": cfg.seed, "profile": cfg.profile, "n_examples": _n_examples(cfg),
        "limits": {"timeout_s": float(timeout_s), "memory_mb": int(memory_mb)}}
    if attack_id is not None:
        from gauntlet.attacks.registry import make_attack
        from gauntlet.benchmark.code_hash import code_hash

        override = next((o for o in m.attack_overrides if o.attack == attack_id), None)
        attack = make_attack(attack_id, **(override.params if override else {}))
        config["attack"] = attack.describe()
        config["code"] = code_hash()
    if threat_id is not None:
        from gauntlet.benchmark.threats import get_threat

        config["threat"] = get_threat(threat_id).id
    return config


def error_record(cfg: RunConfig, sub: Submission, run_id: str, outcome: JobOutcome,
                 config: dict[str, Any], device: str, indices: list[int] | None = None) -> dict[str, Any]:
    """The ``kind: "error"`` record of a failed job, for ``run_id``'s path.

    The orchestrator writes it there only when no valid result of that job exists (a
    failing re-run never replaces a valid result), so the site shows the failure where
    the job's result would be. Fields: the common ones (``dataset.indices`` is empty when
    the slice itself could not be read), ``job: {kind, attack, threat}``,
    ``error: {kind, message, seconds, traceback}``, and ``attack`` / ``threat`` when the
    job had them (docs/results.md, "kind = error").

    Args:
        run_id: the failed job's canonical id (for an attack, its attack run id).
        outcome: the failed :class:`~gauntlet.benchmark.isolation.JobOutcome`.
        config: from :func:`error_job_config`.
        device: the run's resolved device (recorded in ``environment``).
        indices: the evaluation slice, e.g. from :func:`prepare_submission`; default:
            computed here from the dataset (loads it in the parent).

    Returns:
        The record (not written).
    """
    from gauntlet.benchmark import results as rf
    from gauntlet.benchmark.datasets import get_dataset
    from gauntlet.benchmark.threats import get_threat

    m = sub.manifest
    dataset = get_dataset(m.dataset)
    if indices is None:
        try:
            indices = dataset.eval_indices(_n_examples(cfg), cfg.data_dir)
        except Exception:  # noqa: BLE001 - the error record must still be written
            indices = []
    tb = outcome.traceback[-4000:] if outcome.traceback else None
    record: dict[str, Any] = {
        "schema_version": rf.SCHEMA_VERSION, "kind": "error", "run_id": run_id,
        "config_hash": rf.config_hash(config), "config": config, "profile": cfg.profile, "seed": cfg.seed,
        "dataset": {"id": dataset.id, "n": len(indices), "indices": list(indices)},
        "defense": {"id": m.id, "name": m.name, "manifest_sha256": sub.manifest_sha256,
                    "weights_sha256": sub.weights_sha256, "randomized": bool(m.properties.randomized),
                    "rejects": bool(m.properties.rejects)},
        "timing": {"wall_seconds": round(outcome.seconds, 3),
                   "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        "environment": rf.environment(str(device)),
        "job": {"kind": config["job"], "attack": (config.get("attack") or {}).get("id"),
                "threat": config.get("threat")},
        "error": {"kind": outcome.kind, "message": outcome.error or "", "seconds": round(outcome.seconds, 3),
                  "traceback": tb},
    }
    if "attack" in config:
        record["attack"] = dict(config["attack"])
    if "threat" in config:
        record["threat"] = get_threat(config["threat"]).describe(dataset.dim)
    return record
