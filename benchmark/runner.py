"""The runner: plans a run as a graph of jobs, hands them to an executor, and is the only
writer of result files.

Data flows one way: manifest → defense → attacks / certifier → result files. For each
valid submission (:mod:`gauntlet.benchmark.plan` has the graph) a worker

1. loads the fixed evaluation slice of its dataset, builds the defense and scores the
   clean inputs once (R draws for a randomized defense), checking that a
   declared-deterministic defense really is (the ``prepare`` job);
2. runs every registered attack at every requested threat and at every ε of the sweeps
   (after the baselines, each attack only on the examples still robust: the cascade),
   verifies every final point against the threat model and scores it on the true
   defense in a fresh no-grad pass (:mod:`gauntlet.benchmark.jobs`);
3. runs naive PGD at ε = ∞, certifies the submissions that claim a certificate, and
   computes the gradient-masking flags per threat;

and returns each record here, where :class:`Orchestrator` writes it atomically. A job
whose result on disk already has its config hash is reused (resume). A job that hangs,
crashes, exhausts memory or raises leaves a ``kind: "error"`` record — unless a valid
result of that job is already on disk, which is kept — and the run goes on. Nothing
here imports submitted code.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from gauntlet.attacks.registry import attack_ids, make_attack
from gauntlet.benchmark import results as rf
from gauntlet.benchmark.cascade import pruning_records, still_robust
from gauntlet.benchmark.catalog import write_catalog
from gauntlet.benchmark.code_hash import code_hash
from gauntlet.benchmark.config import RunConfig, RunSummary, resolve_device
from gauntlet.benchmark.datasets import unavailable
from gauntlet.benchmark.error_records import error_job_config, error_record
from gauntlet.benchmark.executors import make_executor
from gauntlet.benchmark.lanes import Executor, Task
from gauntlet.benchmark.flags import worst_case_accuracy
from gauntlet.benchmark.isolation import JobOutcome
from gauntlet.benchmark.lock import results_lock
from gauntlet.benchmark.plan import JobSpec, Plan, cost_rank, plan_run
from gauntlet.benchmark.profiles import get_profile
from gauntlet.benchmark.registry import Submission, manifest_paths, validate
from gauntlet.benchmark.threats import get_threat
from gauntlet.benchmark.worker import JobInputs

__all__ = ["RunConfig", "RunSummary", "run", "Orchestrator"]


def _write_manifest_facts(sub: Submission, results_dir: Path) -> None:
    """``<results>/<dataset>/<defense>/manifest.json``: the manifest's facts for the site
    (which never reads submitted code)."""
    facts = sub.manifest.model_dump(mode="json", by_alias=True)
    facts["manifest_sha256"] = sub.manifest_sha256
    rf.write_json(Path(results_dir) / sub.manifest.dataset / sub.id / "manifest.json", facts)


def _existing(results_dir: Path, run_id: str) -> dict | None:
    """The readable result on disk at ``run_id`` (None: none, or unreadable)."""
    path = rf.result_path(results_dir, run_id)
    if not path.is_file():
        return None
    try:
        return rf.read_result(path)
    except rf.ResultError:
        return None


class Orchestrator:
    """Walks a :class:`~gauntlet.benchmark.plan.Plan`: hands every job whose inputs are finished to
    the executor, writes what comes back, and tells the executor when a lane is done.

    Single-threaded: the executor's workers compute, this object alone touches the
    results folder, the summary and the progress bar.
    """

    def __init__(self, cfg: RunConfig, plan: Plan, subs: dict[str, Submission], executor: Executor,
                 summary: RunSummary, progress: Any, device: str) -> None:
        self.cfg, self.plan, self.subs, self.executor = cfg, plan, subs, executor
        self.summary, self.progress, self.device = summary, progress, device
        self.results_dir = Path(cfg.results_dir)
        #: run id → its record (None: failed, not applicable, or a prepare job).
        self.done: dict[str, dict | None] = {}
        self.waiting: list[JobSpec] = list(plan.specs)
        self.left = {lane: sum(1 for s in plan.specs if s.submission == lane) for lane in plan.lanes()}
        self.indices: dict[str, list[int]] = {}
        #: run id → the readable record on disk when its job was handed out.
        self.on_disk: dict[str, dict] = {}
        self.code = code_hash()
        # Workers get absolute paths: a Ray worker's working directory is not ours.
        self.worker_cfg = replace(cfg, submissions_dir=Path(cfg.submissions_dir).resolve(),
                                  results_dir=self.results_dir.resolve(),
                                  data_dir=Path(cfg.data_dir).resolve() if cfg.data_dir else None)

    def walk(self) -> None:
        for sub in self.subs.values():
            _write_manifest_facts(sub, self.results_dir)
        self._submit_ready()
        while self.executor.pending():
            task, outcome = self.executor.wait()
            self._finished(task.spec, outcome)
            self._submit_ready()

    # -- handing out

    def _submit_ready(self) -> None:
        still = []
        for spec in self.waiting:
            if all(i in self.done for i in spec.inputs):
                self.executor.submit(Task(spec, self.worker_cfg, self._inputs(spec)))
            else:
                still.append(spec)
        self.waiting = still

    def _inputs(self, spec: JobSpec) -> JobInputs:
        existing = _existing(self.results_dir, spec.run_id) if spec.kind != "prepare" else None
        if existing is not None:  # read once: a reused job's record is this one
            self.on_disk[spec.run_id] = existing
        known = existing["config_hash"] if existing and existing["kind"] != "error" else None
        if spec.kind == "attack":
            base = {r["attack"]["id"]: r for r in self._records(spec.baselines)}
            feed = pruning_records(base) + self._records(spec.pruned_by)
            candidates = still_robust(feed[0]["per_example"]["clean_correct"], feed) if feed else None
            return JobInputs(known, candidates=candidates)
        if spec.kind == "flags":
            records = {a: self.done[r] for a, r in spec.records if self.done.get(r)}
            return JobInputs(known, records=records, unbounded=self.done.get(spec.unbounded or ""),
                             sweep=self._curve(spec), certificate=self.done.get(spec.certificate or ""))
        return JobInputs(known)

    def _records(self, run_ids: tuple[str, ...]) -> list[dict]:
        return [r for r in (self.done.get(i) for i in run_ids) if r]

    def _curve(self, spec: JobSpec) -> list[tuple[float, float]]:
        """(ε, per-example worst case) along the threat's norm; ε = 0 is the clean accuracy
        every record carries (scored with the same draws), when the sweep ran."""
        points: list[tuple[float, float]] = []
        for eps, run_ids in spec.curve:
            recs = self._records(run_ids)
            if recs:
                if not points and spec.curve_from_zero:
                    clean = recs[0]["per_example"]["clean_correct"]
                    points.append((0.0, sum(clean) / len(clean)))
                points.append((eps, worst_case_accuracy(recs)))
        return points

    # -- taking back

    def _finished(self, spec: JobSpec, outcome: JobOutcome) -> None:
        if spec.kind == "prepare":
            self._prepared(spec, outcome)
        elif not outcome.ok:
            self._failed(spec, outcome)
        else:
            self._succeeded(spec, outcome.value)
        self._lane_step(spec.submission)

    def _lane_step(self, lane: str) -> None:
        self.left[lane] -= 1
        if self.left[lane] == 0:
            self.executor.finish_lane(lane)

    def _prepared(self, spec: JobSpec, outcome: JobOutcome) -> None:
        self.done[spec.run_id] = None
        if outcome.ok:
            self.indices[spec.submission] = outcome.value["prepared"]["indices"]
            return
        # One broken build costs one time limit, not one per job: every planned attack
        # gets the build's error (where no valid result is kept), the lane ends here.
        sub = self.subs[spec.submission]
        self.summary.errors.append(f"{sub.id}: cannot build or score the defense: {outcome.kind}: {outcome.error}")
        config = error_job_config(self.cfg, sub, "prepare", timeout_s=self.executor.timeout_s,
                                  memory_mb=self.executor.memory_mb)
        for run_id in self.plan.attack_runs[sub.id]:
            self._write_error(sub, run_id, outcome, config)
        self.progress.update(len(self.plan.attack_runs[sub.id]))
        dropped = [s for s in self.waiting if s.submission == sub.id]
        self.waiting = [s for s in self.waiting if s.submission != sub.id]
        for s in dropped:
            self.done[s.run_id] = None
        self.left[sub.id] -= len(dropped)

    def _failed(self, spec: JobSpec, outcome: JobOutcome) -> None:
        self.done[spec.run_id] = None
        sub = self.subs[spec.submission]
        config = error_job_config(self.cfg, sub, spec.kind, attack_id=spec.attack, threat_id=spec.threat,
                                  timeout_s=self.executor.timeout_s, memory_mb=self.executor.memory_mb)
        kept = self._write_error(sub, spec.run_id, outcome, config)
        tries = f" after {outcome.attempts} tries" if outcome.attempts > 1 else ""
        note = "; the previous valid result is kept" if kept else ""
        self.summary.errors.append(f"{spec.run_id}: {outcome.kind}{tries}: {outcome.error}{note}")
        if spec.counted:
            self.progress.update(1)

    def _write_error(self, sub: Submission, run_id: str, outcome: JobOutcome, config: dict) -> bool:
        """Write the failure's error record unless a valid result is there (then keep it and
        return True): a failing re-run never replaces a finished result."""
        previous = self.on_disk.pop(run_id) if run_id in self.on_disk else _existing(self.results_dir, run_id)
        if previous is not None and previous["kind"] != "error":
            return True
        rf.write_result(self.results_dir, error_record(self.cfg, sub, run_id, outcome, config, self.device,
                                                       self.indices.get(sub.id)))
        self.summary.error_records.append(run_id)
        return False

    def _succeeded(self, spec: JobSpec, value: dict) -> None:
        status, record = value["status"], value.get("record")
        if status == "computed" and record["config"].get("code") != self.code:
            # A worker on another node with another checkout: its number is not this run's.
            self._failed(spec, JobOutcome(False, None, f"the worker ran other code (harness hash "
                                                       f"{record['config'].get('code')}, the driver's {self.code}): "
                                                       f"every node must be on the driver's commit", "exception", 0.0))
            return
        if status == "computed":
            self.on_disk.pop(spec.run_id, None)
            rf.write_result(self.results_dir, record)
            self.summary.written.append(spec.run_id)
        elif status == "reused":
            record = self.on_disk.pop(spec.run_id)
            self.summary.skipped.append(spec.run_id)
        elif status == "not-applicable":
            stale = self.on_disk.pop(spec.run_id, None)
            if stale is not None and stale["kind"] == "error":  # an old failure of a job that no longer runs
                rf.result_path(self.results_dir, spec.run_id).unlink()
        else:
            raise RuntimeError(f"{spec.run_id}: unknown job status {status!r}")
        self.done[spec.run_id] = record
        if spec.counted:
            if status == "not-applicable":
                self.progress.total -= 1
                self.progress.refresh()
            else:
                self.progress.update(1)
        self.progress.set_postfix_str(spec.run_id.split("/", 1)[-1], refresh=False)


def _requested(cfg: RunConfig) -> list[Submission]:
    """The valid submissions the run asks for (raises on any problem: nothing runs)."""
    from gauntlet.benchmark.manifest import ManifestError

    subs, problems = validate(manifest_paths([cfg.submissions_dir]))  # weights_only: safe here
    if cfg.defenses:
        known = {s.id for s in subs}
        missing = [d for d in cfg.defenses if d not in known]
        if missing:
            problems.append(f"{cfg.submissions_dir}: --defense: unknown or invalid defense(s) {missing}; "
                            f"valid: {sorted(known)}")
        subs = [s for s in subs if s.id in cfg.defenses]
        problems = [p for p in problems if any(f"/{d}/" in p for d in cfg.defenses) or "--defense" in p]
    if problems:
        raise ManifestError(problems)
    return subs


def run(cfg: RunConfig, progress: bool = True, executor: Executor | None = None) -> RunSummary:
    """Run the benchmark.

    Args:
        executor: where the jobs run (kept open for the caller); default: the one
            ``cfg.executor`` names, opened and closed here.

    Raises:
        gauntlet.benchmark.manifest.ManifestError: a requested manifest is invalid (nothing is run).
        KeyError: an unknown attack, defense or threat id was requested.
        gauntlet.benchmark.lock.ResultsLocked: another run holds the results folder.
        gauntlet.benchmark.sandbox.SandboxUnavailable: ``cfg.sandbox`` is "bwrap" and bubblewrap
            is missing or cannot run here (checked on this machine; a Ray node without it
            fails its jobs).
    """
    from tqdm import tqdm

    if cfg.sandbox == "bwrap":
        from gauntlet.benchmark.sandbox import check_bwrap

        check_bwrap()
    profile = get_profile(cfg.profile)
    # A Ray cluster's workers resolve the device on their own nodes (the driver may have no GPU).
    device = cfg.device if cfg.executor == "ray" and cfg.isolate else str(resolve_device(cfg.device))
    subs = _requested(cfg)
    attacks = list(cfg.attacks) or attack_ids()
    for a in attacks:
        make_attack(a)  # unknown id → KeyError with close names, before any work
    for t in cfg.threats:
        get_threat(t)
    summary = RunSummary()
    for sub in list(subs):  # a dataset whose files are missing: one line, the rest runs
        reason = unavailable(sub.manifest.dataset, cfg.data_dir, cfg.download)
        if reason:
            summary.unavailable.append(f"{sub.path}: dataset: {reason}; skipped")
            subs.remove(sub)
    subs = sorted(subs, key=cost_rank)  # stable: manifest order within a rank
    do_sweep = cfg.sweep if cfg.sweep is not None else profile.sweep
    plan = plan_run(subs, attacks, list(cfg.threats), profile.sweeps if do_sweep else None,
                    cascade=cfg.cascade, certify=cfg.certify)
    with results_lock(cfg.results_dir):
        rf.remove_stale_temporaries(cfg.results_dir)
        write_catalog(cfg.results_dir)  # the site reads the registry from here, not from attack code
        total = sum(len(v) for v in plan.attack_runs.values())
        own = executor is None
        executor = make_executor(cfg, device, profile, len(subs)) if own else executor
        try:
            with tqdm(total=total, desc="gauntlet", unit="job", disable=not progress, file=sys.stderr,
                      dynamic_ncols=True) as bar:
                Orchestrator(cfg, plan, {s.id: s for s in subs}, executor, summary, bar, device).walk()
        finally:
            if own:
                executor.close()
    return summary
