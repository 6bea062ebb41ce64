"""The benchmark's jobs as they run inside a :class:`benchmark.isolation.JobRunner` worker,
and the ``kind: "error"`` record the parent writes for a job that failed.

Worker side (named by string, e.g. ``"benchmark.isolated_jobs:isolated_attack_job"``):
each function takes the picklable :class:`~benchmark.runner.RunConfig` and a submission
id, builds the submission's :class:`~benchmark.runner.SubmissionRun` once per worker
(cached; a new submission replaces the cached one, so one defense is in memory at a
time), runs the runner's own job method, which writes its result file atomically, and
returns a small JSON-ready summary. The parent reads a file when it needs the record.

Parent side: :func:`call_or_record` runs one of those jobs through a
:class:`~benchmark.isolation.JobRunner` and, when it fails, writes its error record
(:func:`error_job_config`, :func:`write_error_result`); these need only the parsed
manifest (no submitted code is imported in the parent).

Nothing here imports torch at module import time.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmark.isolation import JobOutcome, JobRunner
    from benchmark.registry import Submission
    from benchmark.runner import RunConfig, RunSummary, SubmissionRun

#: The one submission built in this worker: {"key": (cfg, id), "run": SubmissionRun}.
_CACHE: dict[str, Any] = {}


def submission_run(cfg: RunConfig, sub_id: str) -> SubmissionRun:
    """The cached :class:`SubmissionRun` of ``sub_id`` under ``cfg`` (built on first use).

    Raises:
        benchmark.manifest.ManifestError: the manifest is invalid.
        Exception: whatever building or clean-scoring the defense raises.
    """
    key = (cfg, sub_id)
    if _CACHE.get("key") == key:
        return _CACHE["run"]
    _CACHE.clear()  # free the previous defense before building the next one
    from benchmark.manifest import ManifestError
    from benchmark.profiles import get_profile
    from benchmark.registry import MANIFEST_NAME, load_submission, semantic_problems
    from benchmark.runner import SubmissionRun, resolve_device, surrogate_loader

    sub = load_submission(Path(cfg.submissions_dir) / sub_id / MANIFEST_NAME)
    problems = semantic_problems(sub, check_weights=False)
    if problems:
        raise ManifestError(problems)
    device = resolve_device(cfg.device)
    run = SubmissionRun(sub, cfg, get_profile(cfg.profile), device,
                        surrogate_loader(cfg, sub.manifest.dataset, device))
    _CACHE.update(key=key, run=run)
    return run


def _summary(run_id: str, summary: RunSummary, record: dict | None) -> dict[str, Any]:
    status = ("written" if run_id in summary.written else "reused" if run_id in summary.skipped
              else "not-applicable" if record is None else "computed")
    out: dict[str, Any] = {"run_id": run_id, "status": status}
    if record is not None:
        out["summary"] = record.get("summary") if record.get("kind") == "attack" else None
    return out


def prepare_submission(cfg: RunConfig, sub_id: str) -> dict[str, Any]:
    """Build and clean-score a submission in the worker (first job of a submission).

    Returns:
        ``{id, dataset, n, indices, draws, randomized, rejects, clean_accuracy, randomness}``.
    """
    run = submission_run(cfg, sub_id)
    return {"id": sub_id, "dataset": run.dataset.id, "n": len(run.indices), "indices": list(run.indices),
            "draws": run.draws,
            "randomized": bool(run.defense.randomized), "rejects": bool(getattr(run.defense, "rejects", False)),
            "clean_accuracy": round(float(run.clean.correct.float().mean()), 6) if len(run.indices) else 0.0,
            "randomness": dict(run.randomness)}


def isolated_attack_job(cfg: RunConfig, sub_id: str, attack_id: str, threat_id: str,
                        candidates: list[bool] | None = None) -> dict[str, Any]:
    """One (defense, attack, threat) job: :meth:`SubmissionRun.attack_job` in the worker
    (``candidates``: the examples the cascade hands to the attack; None: all).

    Returns:
        ``{run_id, status, summary}``; status is ``written``, ``reused`` (same config hash
        on disk) or ``not-applicable`` (no file); summary is the record's ``summary``.
    """
    from benchmark import results as rf
    from benchmark.runner import RunSummary
    from benchmark.threats import get_threat

    run = submission_run(cfg, sub_id)
    threat = get_threat(threat_id)
    summary = RunSummary()
    record = run.attack_job(attack_id, threat, summary, candidates)
    return _summary(rf.attack_run_id(run.dataset.id, sub_id, threat.id, attack_id), summary, record)


def isolated_certify_job(cfg: RunConfig, sub_id: str, threat_ids: list[str]) -> dict[str, Any]:
    """Certify a submission in the worker (:func:`benchmark.runner.certify_job`).

    Returns:
        ``{run_id, status, summary: None}``.
    """
    from benchmark.runner import RunSummary, certify_job
    from benchmark.threats import get_threat

    run = submission_run(cfg, sub_id)
    summary = RunSummary()
    record = certify_job(run, [get_threat(t) for t in threat_ids], summary)
    return _summary(record["run_id"], summary, record)


def isolated_flags_job(cfg: RunConfig, sub_id: str, threat_id: str, attack_run_ids: dict[str, str],
                       unbounded_run_id: str | None, sweep: list[tuple[float, float]] | None,
                       certificate_run_id: str | None) -> dict[str, Any]:
    """Flags of one defense at one threat, in the worker (:func:`benchmark.runner.flags_job`);
    the records it needs are read from their result files.

    Args:
        attack_run_ids: attack id → run id of each successful attack at this threat.
        unbounded_run_id: run id of ``pgd`` at ``linf-inf``, if it succeeded.
        sweep: (ε, worst-case accuracy) points of this threat's norm.
        certificate_run_id: run id of the certificate, if any.

    Returns:
        ``{run_id, status, summary: None}``.
    """
    from benchmark import results as rf
    from benchmark.runner import RunSummary, flags_job
    from benchmark.threats import get_threat

    def read(run_id: str | None) -> dict | None:
        return rf.read_result(rf.result_path(cfg.results_dir, run_id)) if run_id else None

    run = submission_run(cfg, sub_id)
    summary = RunSummary()
    records = {a: read(r) for a, r in attack_run_ids.items()}
    record = flags_job(run, get_threat(threat_id), records, read(unbounded_run_id), sweep,
                       read(certificate_run_id), summary)
    return _summary(record["run_id"], summary, record)


# -- error records (parent side) ----------------------------------------------------------

def _n_examples(cfg: RunConfig) -> int | None:
    from benchmark.profiles import get_profile

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
    from benchmark import results as rf

    m = sub.manifest
    config: dict[str, Any] = {
        "schema_version": rf.SCHEMA_VERSION, "kind": "error", "job": job, "dataset": m.dataset,
        "defense": sub.id, "manifest_sha256": sub.manifest_sha256, "weights_sha256": sub.weights_sha256,
        "seed": cfg.seed, "profile": cfg.profile, "n_examples": _n_examples(cfg),
        "limits": {"timeout_s": float(timeout_s), "memory_mb": int(memory_mb)}}
    if attack_id is not None:
        from attacks.registry import make_attack
        from benchmark.code_hash import code_hash

        override = next((o for o in m.attack_overrides if o.attack == attack_id), None)
        attack = make_attack(attack_id, **(override.params if override else {}))
        config["attack"] = attack.describe()
        config["code"] = code_hash()
    if threat_id is not None:
        from benchmark.threats import get_threat

        config["threat"] = get_threat(threat_id).id
    return config


def write_error_result(cfg: RunConfig, sub: Submission, run_id: str, outcome: JobOutcome,
                       config: dict[str, Any], device: str, indices: list[int] | None = None) -> Path:
    """Atomically write the ``kind: "error"`` record of a failed job at ``run_id``'s path.

    The record replaces any older result of that job, so the site shows the failure where
    the job's result would be. Fields: the common ones (``dataset.indices`` is empty when
    the slice itself could not be read), ``job: {kind, attack, threat}``,
    ``error: {kind, message, seconds, traceback}``, and ``attack`` / ``threat`` when the
    job had them (docs/results.md, "kind = error").

    Args:
        run_id: the failed job's canonical id (for an attack, its attack run id).
        outcome: the failed :class:`~benchmark.isolation.JobOutcome`.
        config: from :func:`error_job_config`.
        device: the run's resolved device (recorded in ``environment``).
        indices: the evaluation slice, e.g. from :func:`prepare_submission`; default:
            computed here from the dataset (loads it in the parent).

    Returns:
        The path written.
    """
    from benchmark import results as rf
    from benchmark.datasets import get_dataset
    from benchmark.threats import get_threat

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
    return rf.write_result(cfg.results_dir, record)


def call_or_record(runner: JobRunner, cfg: RunConfig, sub: Submission, fn: str, args: tuple, *, job: str,
                   run_id: str, device: str, attack_id: str | None = None, threat_id: str | None = None,
                   indices: list[int] | None = None, timeout_s: float | None = None) -> JobOutcome:
    """Run a worker-side job; when it fails, write its error record at ``run_id``.

    Args:
        runner: the job runner.
        fn: e.g. ``"benchmark.isolated_jobs:isolated_attack_job"``.
        args: its arguments (``(cfg, sub.id, attack_id, threat_id)`` for an attack job).
        job: ``"prepare"``, ``"attack"``, ``"certify"`` or ``"flags"`` (recorded).
        run_id: where the error record goes (the job's own result path).
        device: the run's resolved device.
        attack_id: the job's attack, if any (recorded, part of the error's config).
        threat_id: the job's threat, if any.
        indices: the evaluation slice (from :func:`prepare_submission`), if known.
        timeout_s: this job's wall-clock limit (default: the runner's).

    Returns:
        The outcome; on failure its error record has been written.
    """
    outcome = runner.run(fn, args, timeout_s=timeout_s)
    if not outcome.ok:
        config = error_job_config(cfg, sub, job, attack_id=attack_id, threat_id=threat_id,
                                  timeout_s=runner.timeout_s if timeout_s is None else timeout_s,
                                  memory_mb=runner.memory_mb)
        write_error_result(cfg, sub, run_id, outcome, config, device, indices)
    return outcome
