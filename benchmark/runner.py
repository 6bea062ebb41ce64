"""The runner: every defense × every attack × every threat, written as result files.

Data flows one way: manifest → defense → attacks / certifier → result files. For each
valid submission the runner

1. loads the fixed evaluation slice of its dataset and builds the defense;
2. scores the clean inputs once (R draws for a randomized defense) and checks that a
   declared-deterministic defense really is;
3. runs every registered attack at every requested threat, verifies every final point
   against the threat model itself, scores it on the true defense in a fresh no-grad
   pass, and writes one result file per run (skipped when a file with the same config
   hash exists: resume);
   Every job runs in a child process with a wall-clock and a memory limit
   (:mod:`benchmark.isolation`); a failed job leaves an error record, and the run goes on.
4. runs naive PGD at ε = ∞; every ε of the accuracy-versus-ε sweeps is a threat model
   like the fixed ones (every applicable attack runs there, the per-example worst case
   is what is shown);
5. certifies the submissions whose manifest claims a certificate;
6. computes the gradient-masking flags per threat from the files of 3–5.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from attacks.adaptive import observed_gradients
from attacks.base import AttackContext, defense_facts
from attacks.registry import attack_ids, make_attack
from benchmark import results as rf
from benchmark.cascade import order, pruning_records, still_robust
from benchmark.code_hash import code_hash, submission_files_hash
from benchmark.config import RunConfig, RunSummary, job_seed, resolve_device
from benchmark.datasets import get_dataset, unavailable
from benchmark.flags import ZERO_GRAD_THRESHOLD, compute_flags, worst_case_accuracy
from benchmark.intervals import LEVEL, METHOD, accuracy_interval, rounded
from benchmark.profiles import Profile, get_profile
from benchmark.registry import Submission, build_defense, manifest_paths, validate
from benchmark.scheduling import cost_rank, job_runner, run_threads, worker_plan
from benchmark.scoring import Scores, declared_randomness_check, score
from benchmark.streams import RowStreams
from benchmark.threats import FIXED_THREATS, ThreatModel, get_threat, sweep_threats


class SubmissionRun:
    """Everything computed once per submission and shared by its jobs."""

    def __init__(self, sub: Submission, cfg: RunConfig, profile: Profile, device: torch.device,
                 surrogate: Callable[[], nn.Module | None]) -> None:
        self.sub, self.cfg, self.profile, self.device = sub, cfg, profile, device
        m = sub.manifest
        self.dataset = get_dataset(m.dataset)
        n = cfg.n_examples if cfg.n_examples is not None else profile.n_examples
        limit = next((lim.n for lim in m.example_limits if lim.profile == profile.name), None)
        if limit is not None:  # the manifest's declared maximum for this profile, reason on the site
            n = limit if n is None else min(n, limit)
        x, y = self.dataset.split("test", cfg.data_dir, download=cfg.download)
        self.indices = self.dataset.eval_indices(n, cfg.data_dir)
        self.x = x[self.indices].to(device)
        self.y = y[self.indices].to(device)
        self.defense = build_defense(sub, device)
        torch.manual_seed(job_seed(cfg.seed, f"{m.dataset}/{m.id}/randomness"))
        self.randomness = declared_randomness_check(self.defense, self.x[:16], m.properties.randomized)
        if self.randomness["varied"] and not self.defense.randomized:
            # Observed: mark the defense itself, so that the scorer's R draws, the attacks'
            # EOT views and their applicability all see it, not only this object.
            self.defense.randomized = True
        self.draws = profile.draws if self.defense.randomized else 1
        self._gradients: dict[str, float] | None = None
        self._surrogate = surrogate
        self.weights_sha = sub.weights_sha256
        self.overrides = {o.attack: o for o in m.attack_overrides}
        torch.manual_seed(job_seed(cfg.seed, f"{m.dataset}/{m.id}/clean"))
        self.clean: Scores = score(self.defense, self.x, self.y, self.draws)

    @property
    def gradients(self) -> dict[str, float]:
        """Observed gradient masking (a fact, like observed randomness): the share of the
        first 16 clean points whose raw input gradient is zero or non-finite; above
        :data:`ZERO_GRAD_THRESHOLD` the defense is marked ``zero_gradients``, so gradient
        estimation (SPSA) runs even where no step declares itself non-differentiable.

        Measured on first use by an attack or flags job, not when the defense is built:
        a gradient query is an attack, and a defense that fails under attack must fail an
        attack job (the build and clean scores stay valid). Seeded, so every worker
        measures the same.
        """
        if self._gradients is None:
            m = self.sub.manifest
            torch.manual_seed(job_seed(self.cfg.seed, f"{m.dataset}/{m.id}/gradients"))
            self._gradients = observed_gradients(self.defense, self.x[:16], self.y[:16])
            if self._gradients["zero_fraction"] > ZERO_GRAD_THRESHOLD:
                self.defense.zero_gradients = True
        return self._gradients

    def facts(self) -> dict[str, bool]:
        """:func:`attacks.base.defense_facts`, with the observed-gradients fact measured
        first, so that every record of the submission (attack, certify, flags) carries the
        same facts whichever job a worker runs first."""
        self.gradients  # noqa: B018 - measures and sets zero_gradients on first use
        return defense_facts(self.defense)

    # -- common record fields ----------------------------------------------------------

    def defense_info(self) -> dict[str, Any]:
        m = self.sub.manifest
        return {"id": m.id, "name": m.name, "manifest_sha256": self.sub.manifest_sha256,
                "weights_sha256": self.weights_sha, "randomized": bool(self.defense.randomized),
                "rejects": bool(getattr(self.defense, "rejects", False)),
                "facts": self.facts()}

    def dataset_info(self) -> dict[str, Any]:
        return {"id": self.dataset.id, "n": len(self.indices), "indices": list(self.indices)}

    def envelope(self, kind: str, run_id: str, config: dict[str, Any], seconds: float) -> dict[str, Any]:
        return {
            "schema_version": rf.SCHEMA_VERSION, "kind": kind, "run_id": run_id,
            "config_hash": rf.config_hash(config), "config": config, "profile": self.profile.name,
            "seed": self.cfg.seed, "dataset": self.dataset_info(), "defense": self.defense_info(),
            "timing": {"wall_seconds": round(seconds, 3),
                       "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
            "environment": rf.environment(str(self.device)),
        }

    def base_config(self, kind: str) -> dict[str, Any]:
        """What every job of this submission depends on (hashed into its config hash): the
        slice, the submission's every file, the whole harness source (:mod:`benchmark.code_hash`),
        the seed, draws, batch size (results are not batch-invariant: docs/results.md),
        device type and torch version."""
        return {"schema_version": rf.SCHEMA_VERSION, "kind": kind, "dataset": self.dataset.id,
                "indices": list(self.indices), "defense": self.sub.id,
                "manifest_sha256": self.sub.manifest_sha256, "weights_sha256": self.weights_sha,
                "submission_files": submission_files_hash(self.sub.path.parent), "code": code_hash(),
                "seed": self.cfg.seed, "draws": self.draws, "batch_size": self.cfg.batch_size,
                "device": self.device.type, "torch": torch.__version__}

    # -- attack jobs -------------------------------------------------------------------

    def attack_job(self, attack_id: str, threat: ThreatModel, summary: RunSummary,
                   candidates: list[bool] | None = None) -> dict | None:
        """Run one attack at one threat (or reuse its result) and return the record.

        ``candidates``: per example, whether the cascade hands it to this attack (False:
        an earlier attack broke it, :mod:`benchmark.cascade`); None: every example. Only
        clean-correct candidates are attacked.
        """
        override = self.overrides.get(attack_id)
        attack = make_attack(attack_id, **(override.params if override else {}))
        if attack.not_applicable(self.facts()) is not None:
            return None
        run_id = rf.attack_run_id(self.dataset.id, self.sub.id, threat.id, attack_id)
        config = {**self.base_config("attack"), "attack": attack.describe(), "threat": threat.id}
        if candidates is not None:
            if len(candidates) != len(self.indices):
                raise ValueError(f"{run_id}: {len(candidates)} cascade flags for {len(self.indices)} examples")
            config["cascade"] = [bool(c) for c in candidates]
        path = rf.result_path(self.cfg.results_dir, run_id)
        if rf.existing_hash(self.cfg.results_dir, run_id) == rf.config_hash(config):
            summary.skipped.append(run_id)
            return rf.read_result(path)
        start = time.perf_counter()
        seed = job_seed(self.cfg.seed, run_id)
        # Build the surrogate before seeding: building a model draws from the global RNG,
        # and whether this worker had built it already must not change the draws below.
        surrogate = self._surrogate() if attack.needs_surrogate else None
        torch.manual_seed(seed)
        # Every example draws from its own stream (keyed by its dataset index), so what the
        # attack does to it depends neither on its batch nor on the cascade's pruning.
        draws = RowStreams(seed, self.indices)
        skipped = torch.zeros(len(self.indices), dtype=torch.bool, device=self.x.device)
        if candidates is not None:
            skipped = (self.clean.correct > 0) & ~torch.tensor(candidates, device=self.x.device)
        x_adv = self.x.clone()
        todo = torch.nonzero((self.clean.correct > 0) & ~skipped).flatten()
        infos: list[tuple[int, dict]] = []
        for start_i in range(0, len(todo), self.cfg.batch_size):
            rows = todo[start_i:start_i + self.cfg.batch_size]
            xb, yb = self.x[rows], self.y[rows]
            ctx = AttackContext(draws.rows(rows.cpu()), surrogate)
            res = attack.run(self.defense, xb, yb, threat, ctx)
            threat.verify(res.x_adv, xb)  # the runner verifies, not the attack
            x_adv[rows] = res.x_adv.detach()
            infos.append((len(rows), res.info))
        torch.manual_seed(job_seed(self.cfg.seed, run_id + "/score"))
        if len(todo) or self.defense.randomized:
            adv = score(self.defense, x_adv, self.y, self.draws)
        else:  # nothing attacked: x_adv is x, and a deterministic defense scores it as it did
            adv = self.clean
        attacked = (self.clean.correct > 0) & ~skipped
        abstains = bool(getattr(self.defense, "abstains", False))
        rejects = bool(getattr(self.defense, "rejects", False))
        # The headline: a rejected adversarial input is a defense win for a detector and an
        # error for a defense that abstains (as in certified accuracy); the other figure is
        # recorded beside it for a defense that rejects.
        as_win = torch.minimum(self.clean.correct, adv.survives)
        as_error = torch.minimum(self.clean.correct, adv.correct)
        robust = as_error if abstains else as_win
        robust_worst = self.clean.correct_all * (adv.correct_all if abstains else adv.survives_all)
        norms = threat.distance(x_adv.double(), self.x.double())
        n = len(self.indices)
        record = self.envelope("attack", run_id, config, time.perf_counter() - start)
        # An example the cascade skipped has no score of this attack (null); its figures
        # over all examples count it as broken, which it was, by an earlier attack.
        keep = ~skipped
        per_example = {
            "clean_correct": _floats(self.clean.correct),
            "attacked": [bool(v) for v in attacked.tolist()],
            "robust_correct": _floats(robust, keep),
            "robust_correct_worst": _floats(robust_worst, keep, int),
            "adv_correct": _floats(adv.correct, keep),
            "adv_survives": _floats(adv.survives, keep),
            "perturbation_norm": _floats(norms, keep),
            "clean_rejected": _floats(self.clean.rejected),
            "adv_rejected": _floats(adv.rejected, keep),
        }
        totals: dict[str, Any] = {"n": n, "interval": {"level": LEVEL, "method": METHOD},
                                  "attacked": int(attacked.sum()), "skipped_by_cascade": int(skipped.sum())}
        figures = {"clean_accuracy": self.clean.correct, "robust_accuracy": robust * keep,
                   "robust_accuracy_worst_of_draws": robust_worst * keep,
                   "clean_rejection_rate": self.clean.rejected, "adv_rejection_rate": adv.rejected[keep],
                   # "broken among those still robust": the attack's own figure in a cascade
                   "robust_among_attacked": robust[attacked]}
        if rejects:
            per_example["robust_correct_reject_as_win"] = _floats(as_win, keep)
            per_example["robust_correct_reject_as_error"] = _floats(as_error, keep)
            figures["robust_accuracy_reject_as_win"] = as_win * keep
            figures["robust_accuracy_reject_as_error"] = as_error * keep
        for name, values in figures.items():
            totals[name] = _mean(values)
            totals[f"{name}_ci"] = _interval(values)
        if not totals["attacked"]:
            totals["robust_among_attacked"] = totals["robust_among_attacked_ci"] = None
        record.update({
            "attack": {**attack.describe(), "summary": attack.summary, "traits": attack.traits(),
                       "override_reason": override.reason if override else None},
            "threat": threat.describe(self.dataset.dim),
            "draws": self.draws,
            "per_example": per_example,
            "summary": totals,
            "info": _merge_info(infos),
        })
        rf.write_result(self.cfg.results_dir, record)
        summary.written.append(run_id)
        return record


def _floats(t: torch.Tensor, keep: torch.Tensor | None = None, kind: type = float) -> list:
    """Per-example values, rounded; None where ``keep`` is False."""
    values = t.detach().cpu().tolist()
    mask = [True] * len(values) if keep is None else keep.cpu().tolist()
    return [(kind(round(float(v), 6)) if k else None) for v, k in zip(values, mask)]


def _mean(t: torch.Tensor) -> float:
    return round(float(t.float().mean()), 6) if t.numel() else 0.0


def _interval(t: torch.Tensor) -> list[float] | None:
    return rounded(accuracy_interval(t.detach().double().cpu().tolist()))


def _merge_info(infos: list[tuple[int, dict]]) -> dict[str, Any]:
    """Numeric diagnostics averaged over batches (weighted by size), others kept last."""
    total = sum(n for n, _ in infos) or 1
    out: dict[str, Any] = {}
    for key in {k for _, i in infos for k in i}:
        values = [(n, i[key]) for n, i in infos if key in i]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for _, v in values):
            # NaN/inf (e.g. a step-size statistic at ε = 0) become JSON-safe, not a crash.
            out[key] = rf.json_number(round(sum(n * v for n, v in values) / total, 6))
        else:
            out[key] = values[-1][1]
    return out


def _write_manifest_facts(sub: Submission, results_dir: Path) -> None:
    """``<results>/<dataset>/<defense>/manifest.json``: the manifest's facts for the site
    (which never reads submitted code)."""
    import json

    facts = sub.manifest.model_dump(mode="json", by_alias=True)
    facts["manifest_sha256"] = sub.manifest_sha256
    path = Path(results_dir) / sub.manifest.dataset / sub.id / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


PREPARE_JOB = "benchmark.isolated_jobs:prepare_submission"
ATTACK_JOB = "benchmark.isolated_jobs:isolated_attack_job"
CERTIFY_JOB = "benchmark.isolated_jobs:isolated_certify_job"
FLAGS_JOB = "benchmark.isolated_jobs:isolated_flags_job"


class Orchestrator:
    """The parent side of one submission: sends its jobs to a job runner (a child
    process with time and memory limits, or in-process) and reads back their files.

    Nothing here imports the submission's code: building and attacking the defense
    happen in the worker (:mod:`benchmark.isolated_jobs`); a job that hangs, crashes,
    exhausts memory or raises leaves a ``kind: "error"`` record and the run goes on.
    """

    def __init__(self, jobs: Any, cfg: RunConfig, sub: Submission, device: torch.device,
                 summary: RunSummary, progress: Any) -> None:
        self.jobs, self.cfg, self.sub, self.device = jobs, cfg, sub, str(device)
        self.summary, self.progress = summary, progress
        self.dataset = sub.manifest.dataset
        self.indices: list[int] | None = None

    def _call(self, fn: str, args: tuple, job: str, run_id: str, attack_id: str | None = None,
              threat_id: str | None = None) -> dict | None:
        from benchmark.isolated_jobs import call_or_record

        out = call_or_record(self.jobs, self.cfg, self.sub, fn, args, job=job, run_id=run_id, device=self.device,
                             attack_id=attack_id, threat_id=threat_id, indices=self.indices)
        if not out.ok:
            self.summary.errors.append(f"{run_id}: {out.kind}: {out.error}")
            return None
        return out.value

    def _record(self, value: dict | None) -> dict | None:
        if value is None or value.get("status") == "not-applicable":
            return None
        run_id = value["run_id"]
        (self.summary.written if value["status"] == "written" else self.summary.skipped).append(run_id)
        return rf.read_result(rf.result_path(self.cfg.results_dir, run_id))

    def prepare(self, planned: list[str]) -> bool:
        """Build and clean-score the defense in the worker; on failure every planned run
        gets an error record (so one broken build costs one time limit, not one per job)."""
        from benchmark.isolated_jobs import error_job_config, write_error_result

        self.progress.set_postfix_str(f"{self.sub.id} build")
        out = self.jobs.run(PREPARE_JOB, (self.cfg, self.sub.id))
        if out.ok:
            self.indices = out.value["indices"]
            return True
        config = error_job_config(self.cfg, self.sub, "prepare", timeout_s=self.jobs.timeout_s,
                                  memory_mb=self.jobs.memory_mb)
        for run_id in planned:
            write_error_result(self.cfg, self.sub, run_id, out, config, self.device)
        self.summary.errors.append(f"{self.sub.id}: cannot build or score the defense: {out.kind}: {out.error}")
        return False

    def attack(self, attack_id: str, threat: ThreatModel, counted: bool = False,
               candidates: list[bool] | None = None) -> dict | None:
        """Run (or reuse) one attack job and return its record.

        ``counted``: the job is one of the progress bar's planned jobs; it ticks the bar
        when done, or, when the attack does not apply, leaves the bar's total.
        ``candidates``: the examples the cascade hands to the attack (None: all).
        """
        run_id = rf.attack_run_id(self.dataset, self.sub.id, threat.id, attack_id)
        self.progress.set_postfix_str(f"{self.sub.id} {threat.id} {attack_id}")
        value = self._call(ATTACK_JOB, (self.cfg, self.sub.id, attack_id, threat.id, candidates), "attack",
                           run_id, attack_id, threat.id)
        if counted:
            if value is not None and value.get("status") == "not-applicable":
                with self.progress.get_lock():
                    self.progress.total -= 1
                self.progress.refresh()
            else:
                self.progress.update(1)
        return self._record(value)

    def certify(self, threats: list[ThreatModel]) -> dict | None:
        """Certify (or reuse the certificate)."""
        run_id = f"{self.dataset}/{self.sub.id}/certify/{self.sub.manifest.certify.method}"
        self.progress.set_postfix_str(f"{self.sub.id} certify")
        return self._record(self._call(CERTIFY_JOB, (self.cfg, self.sub.id, [t.id for t in threats]),
                                       "certify", run_id))

    def flags(self, threat: ThreatModel, records: dict[str, dict], unbounded: dict | None,
              sweep: list[tuple[float, float]] | None, certificate: dict | None) -> None:
        """Compute the flags of one threat from the records' files."""
        run_id = f"{self.dataset}/{self.sub.id}/{threat.id}/flags"
        args = (self.cfg, self.sub.id, threat.id, {a: r["run_id"] for a, r in records.items()},
                unbounded["run_id"] if unbounded else None, sweep,
                certificate["run_id"] if certificate else None)
        self._record(self._call(FLAGS_JOB, args, "flags", run_id, threat_id=threat.id))


def run_submission(orch: Orchestrator, attacks: list[str], threats: list[ThreatModel],
                   sweep_eps: dict[str, tuple[float, ...]] | None) -> None:
    """All jobs of one submission: every attack at every threat (the requested ones and the
    sweeps' ε; None: no sweep), ε = ∞, certificate, flags at every threat."""
    cfg, sub = orch.cfg, orch.sub
    _write_manifest_facts(sub, cfg.results_dir)
    all_threats = sweep_threats(threats, sweep_eps)
    planned = [rf.attack_run_id(orch.dataset, sub.id, t.id, a) for t in all_threats for a in attacks]
    if not orch.prepare(planned):
        orch.progress.update(len(planned))
        return
    by_threat: dict[str, dict[str, dict]] = {}
    overrides = {o.attack: o.params for o in sub.manifest.attack_overrides}
    baselines, cascade = order([make_attack(a, **overrides.get(a, {})) for a in attacks])
    for threat in all_threats:
        recs = by_threat.setdefault(threat.id, {})
        for a in baselines:
            rec = orch.attack(a.id, threat, counted=True)
            if rec is not None:
                recs[a.id] = rec
        feed = pruning_records(dict(recs))
        for a in cascade:
            candidates = None
            if cfg.cascade and feed:
                candidates = still_robust(feed[0]["per_example"]["clean_correct"], feed)
            rec = orch.attack(a.id, threat, counted=True, candidates=candidates)
            if rec is not None:
                recs[a.id] = rec
                feed.append(rec)
    unbounded = orch.attack("pgd", get_threat("linf-inf")) if "pgd" in attacks else None
    curves: dict[str, list[tuple[float, float]]] = {}
    for norm in ("linf", "l2"):
        points = []
        for threat in sorted((t for t in all_threats if t.norm == norm), key=lambda t: t.eps):
            recs = list(by_threat.get(threat.id, {}).values())
            if recs:
                if not points and sweep_eps:
                    # ε = 0 is not attacked (no perturbation is possible): it is the clean
                    # accuracy every record carries (scored with the same draws).
                    clean = recs[0]["per_example"]["clean_correct"]
                    points.append((0.0, sum(clean) / len(clean)))
                points.append((threat.eps, worst_case_accuracy(recs)))
        curves[norm] = points
    certificate = orch.certify(threats) if cfg.certify and sub.manifest.certify is not None else None
    for threat in all_threats:
        orch.flags(threat, by_threat.get(threat.id, {}), unbounded, curves.get(threat.norm), certificate)


def certify_job(run: SubmissionRun, threats: list[ThreatModel], summary: RunSummary) -> dict | None:
    """Certify a submission (or reuse its certificate) and return the record."""
    from benchmark.certify import certify_submission

    spec = run.sub.manifest.certify
    run_id = f"{run.dataset.id}/{run.sub.id}/certify/{spec.method}"
    n_override = run.profile.certify_n
    config = {**run.base_config("certify"), "certify": spec.model_dump(mode="json"),
              "profile_n": n_override, "threats": [t.id for t in threats]}
    if rf.existing_hash(run.cfg.results_dir, run_id) == rf.config_hash(config):
        summary.skipped.append(run_id)
        return rf.read_result(rf.result_path(run.cfg.results_dir, run_id))
    start = time.perf_counter()
    body = certify_submission(run.sub, run.defense, run.x, run.y, indices=run.indices, threats=threats,
                              device=run.device, seed=job_seed(run.cfg.seed, run_id), profile_n=n_override)
    record = run.envelope("certify", run_id, config, time.perf_counter() - start)
    record.update(body)
    rf.write_result(run.cfg.results_dir, record)
    summary.written.append(run_id)
    return record


def flags_job(run: SubmissionRun, threat: ThreatModel, records: dict[str, dict], unbounded: dict | None,
              sweep: list[tuple[float, float]] | None, certificate: dict | None, summary: RunSummary) -> dict:
    """Compute and write the flags of one defense at one fixed threat."""
    cert = None
    if certificate is not None:
        from benchmark.certify import consistency_violations

        pe = certificate["per_example"]
        r = threat.l2_radius(run.dataset.dim)
        found = consistency_violations(pe, {threat.id: {a: rec["per_example"] for a, rec in records.items()}},
                                       radii={threat.id: r}, indices=run.indices)[threat.id]
        alpha = getattr(run.sub.manifest.certify, "alpha", 0.0)
        certified = sum(bool(c) and rad >= r for c, rad in zip(pe["correct"], pe["radius"]))
        # Randomized smoothing fails with probability α per example (Cohen et al. 2019, Thm. 1).
        cert = {"violations": found, "allowed": math.ceil(alpha * len(pe["radius"])), "certified": certified}
    flags = compute_flags(records, unbounded=unbounded, sweep=sweep, randomness=run.randomness, certificate=cert)
    run_id = f"{run.dataset.id}/{run.sub.id}/{threat.id}/flags"
    inputs = sorted(r["config_hash"] for r in [*records.values(), unbounded, certificate] if r)
    config = {**run.base_config("flags"), "threat": threat.id, "inputs": inputs, "sweep": sweep,
              "randomness": run.randomness, "gradients": run.gradients}
    record = run.envelope("flags", run_id, config, 0.0)
    record.update({"threat": threat.describe(run.dataset.dim), "flags": flags})
    if rf.existing_hash(run.cfg.results_dir, run_id) != rf.config_hash(config):
        rf.write_result(run.cfg.results_dir, record)
        summary.written.append(run_id)
    return record


def surrogate_loader(cfg: RunConfig, dataset_id: str, device: torch.device) -> Callable[[], nn.Module | None]:
    """The transfer attack's surrogate, built on first use: the first valid ``standard-*``
    submission of the dataset without a preprocessing pipeline (an undefended model)."""
    cache: list[nn.Module | None] = []

    def load() -> nn.Module | None:
        if not cache:
            subs, _ = validate(manifest_paths([cfg.submissions_dir]), check_weights=False)
            std = [s for s in subs if s.manifest.dataset == dataset_id and s.id.startswith("standard-")
                   and s.manifest.defense is None]
            cache.append(build_defense(std[0], device) if std else None)
        return cache[0]

    return load


def run(cfg: RunConfig, progress: bool = True) -> RunSummary:
    """Run the benchmark.

    Raises:
        benchmark.manifest.ManifestError: a requested manifest is invalid (nothing is run).
        KeyError: an unknown attack, defense or threat id was requested.
    """
    from tqdm import tqdm

    from benchmark.manifest import ManifestError

    profile = get_profile(cfg.profile)
    device = resolve_device(cfg.device)
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
    attacks = list(cfg.attacks) or attack_ids()
    for a in attacks:
        make_attack(a)  # unknown id → KeyError with close names, before any work
    threats = [get_threat(t) for t in cfg.threats]
    summary = RunSummary()
    for sub in list(subs):  # a dataset whose files are missing: one line, the rest runs
        reason = unavailable(sub.manifest.dataset, cfg.data_dir, cfg.download)
        if reason:
            summary.unavailable.append(f"{sub.path}: dataset: {reason}; skipped")
            subs.remove(sub)
    rf.remove_stale_temporaries(cfg.results_dir)
    do_sweep = cfg.sweep if cfg.sweep is not None else profile.sweep
    workers, threads = worker_plan(cfg, device, len(subs))
    queue = sorted(subs, key=cost_rank)  # stable: manifest order within a rank
    lock = threading.Lock()

    def next_submission() -> Submission | None:
        with lock:
            return queue.pop(0) if queue else None

    def work(bar: Any) -> None:
        with job_runner(cfg, device, profile, threads) as jobs:
            while (sub := next_submission()) is not None:
                run_submission(Orchestrator(jobs, cfg, sub, device, summary, bar), attacks, threats,
                               profile.sweeps if do_sweep else None)

    planned_threats = sweep_threats(threats, profile.sweeps if do_sweep else None)
    with tqdm(total=len(planned_threats) * len(attacks) * len(subs), desc="gauntlet", unit="job",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        if workers == 1:
            work(bar)
        else:
            run_threads([lambda: work(bar)] * workers)
    return summary
