"""The worker's side of the executor: one entry point, :func:`execute`, that runs one
:class:`~gauntlet.benchmark.plan.JobSpec` and returns its outcome as data.

A worker (a child process of a local executor, a Ray actor's child, or this process for
``--executor in-process``) keeps the one submission it last built (a new submission
replaces it, so one defense is in memory at a time). It writes nothing: the returned
record goes back to the orchestrator, the only writer of result files. The inputs a job
needs from other jobs arrive with it (:class:`JobInputs`), so a worker on another
machine needs the submissions and the data, never the results folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gauntlet.benchmark.config import RunConfig
    from gauntlet.benchmark.jobs import SubmissionRun
    from gauntlet.benchmark.plan import JobSpec

#: The one submission built in this worker: {"key": (cfg, id), "run": SubmissionRun}.
_CACHE: dict[str, Any] = {}


@dataclass(frozen=True)
class JobInputs:
    """What the orchestrator resolved from the spec's input run ids."""

    #: The config hash of the result already on disk at the spec's run id (None: none,
    #: or an error record): the job is reused when it equals the job's own.
    existing: str | None = None
    #: Attack in a cascade: per example, whether it is handed to the attack.
    candidates: list[bool] | None = None
    #: Flags: attack id → record at the threat; ε = ∞ record; curve points; certificate.
    records: dict[str, dict] | None = None
    unbounded: dict | None = None
    sweep: list[tuple[float, float]] | None = None
    certificate: dict | None = None


def submission_run(cfg: RunConfig, sub_id: str) -> SubmissionRun:
    """The cached :class:`~gauntlet.benchmark.jobs.SubmissionRun` of ``sub_id`` (built on first use).

    Raises:
        gauntlet.benchmark.manifest.ManifestError: the manifest is invalid.
        Exception: whatever building or clean-scoring the defense raises.
    """
    key = (cfg, sub_id)
    if _CACHE.get("key") == key:
        return _CACHE["run"]
    release()  # stop the previous defense's sandboxes before building the next one
    from gauntlet.benchmark.config import resolve_device
    from gauntlet.benchmark.jobs import SubmissionRun, surrogate_loader
    from gauntlet.benchmark.manifest import ManifestError
    from gauntlet.benchmark.profiles import get_profile
    from gauntlet.benchmark.registry import MANIFEST_NAME, load_submission, semantic_problems

    sub = load_submission(Path(cfg.submissions_dir) / sub_id / MANIFEST_NAME)
    problems = semantic_problems(sub, check_weights=False)
    if problems:
        raise ManifestError(problems)
    device = resolve_device(cfg.device)
    run = SubmissionRun(sub, cfg, get_profile(cfg.profile), device,
                        surrogate_loader(cfg, sub.manifest.dataset, device))
    _CACHE.update(key=key, run=run)
    return run


def release() -> None:
    """Forget the cached submission, stopping its defense's sandboxes."""
    run = _CACHE.pop("run", None)
    _CACHE.clear()
    if run is not None:
        run.close()


def prepared(run: SubmissionRun) -> dict[str, Any]:
    """What the orchestrator learns from a built submission."""
    return {"id": run.sub.id, "dataset": run.dataset.id, "n": len(run.indices), "indices": list(run.indices),
            "draws": run.draws, "randomized": bool(run.defense.randomized),
            "rejects": bool(getattr(run.defense, "rejects", False)),
            "clean_accuracy": round(float(run.clean.correct.float().mean()), 6) if len(run.indices) else 0.0,
            "randomness": dict(run.randomness)}


def execute(cfg: RunConfig, spec: JobSpec, inputs: JobInputs) -> dict[str, Any]:
    """Run one job here.

    Returns:
        ``{"status", "record"}``: status ``computed`` (record: the result to write),
        ``reused`` (the file on disk is this job's) or ``not-applicable``; for a prepare
        job, ``{"status": "computed", "prepared": {...}}``.
    """
    from gauntlet.benchmark.remote import DefenseCrashed

    try:
        return _execute(cfg, spec, inputs)
    except DefenseCrashed:
        release()  # its sandbox is gone: the next job of the submission builds it anew
        raise


def _execute(cfg: RunConfig, spec: JobSpec, inputs: JobInputs) -> dict[str, Any]:
    from gauntlet.benchmark.jobs import certify_job, flags_job
    from gauntlet.benchmark.threats import get_threat

    run = submission_run(cfg, spec.submission)
    if spec.kind == "prepare":
        return {"status": "computed", "prepared": prepared(run), "record": None}
    if spec.kind == "attack":
        status, record = run.attack_job(spec.attack, get_threat(spec.threat), inputs.existing, inputs.candidates)
    elif spec.kind == "certify":
        status, record = certify_job(run, [get_threat(t) for t in spec.threats], inputs.existing)
    elif spec.kind == "flags":
        status, record = flags_job(run, get_threat(spec.threat), inputs.records or {}, inputs.unbounded,
                                   inputs.sweep, inputs.certificate, inputs.existing)
    else:
        raise ValueError(f"{spec.run_id}: unknown job kind {spec.kind!r}")
    return {"status": status, "record": record}
