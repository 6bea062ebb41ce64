"""The jobs themselves, as they run in a worker: build a submission once
(:class:`SubmissionRun`), then attack, certify and flag it.

Each job returns an :data:`Outcome` — ``("computed", record)``, ``("reused", None)`` when
the result on disk already has this job's config hash, or ``("not-applicable", None)`` —
and writes nothing: the orchestrator (:mod:`gauntlet.benchmark.runner`) is the only writer of
result files. Everything a job needs from other jobs (the cascade's candidates, the
records a flags job reads) is handed to it as data.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from typing import Any, Callable

import torch
from torch import nn

from gauntlet.attacks.adaptive import observed_gradients
from gauntlet.attacks.base import AttackContext, defense_facts
from gauntlet.attacks.registry import make_attack
from gauntlet.benchmark import results as rf
from gauntlet.benchmark.code_hash import code_hash, submission_files_hash
from gauntlet.benchmark.config import RunConfig, job_seed
from gauntlet.benchmark.datasets import get_dataset
from gauntlet.benchmark.flags import ZERO_GRAD_THRESHOLD, compute_flags
from gauntlet.benchmark.intervals import LEVEL, METHOD, accuracy_interval, rounded
from gauntlet.benchmark.profiles import Profile
from gauntlet.benchmark.registry import Submission
from gauntlet.benchmark.sandbox import open_defense
from gauntlet.benchmark.scoring import Scores, declared_randomness_check, score
from gauntlet.benchmark.streams import RowStreams
from gauntlet.benchmark.surrogates import has_surrogate
from gauntlet.benchmark.threats import ThreatModel

#: What a job returns: (status, record or None).
Outcome = tuple[str, "dict[str, Any] | None"]
REUSED: Outcome = ("reused", None)
NOT_APPLICABLE: Outcome = ("not-applicable", None)


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
        # One sandbox serves the attacks (and the clean scores), another the final scoring:
        # each attack's adversarial points are scored by a fresh server that has seen no
        # other input of these examples (:meth:`score_fresh`). No sandbox: built here.
        self.threads = torch.get_num_threads()
        #: The attack sandbox, then the scoring sandbox (started on first use: a resumed
        #: run whose attacks are all reused never needs it); empty without a sandbox.
        self.sandboxes: list = []
        if cfg.sandbox == "bwrap":
            from gauntlet.benchmark.sandbox import Sandbox

            self.sandboxes.append(Sandbox(sub.folder, str(device)))
        try:
            self.defense = open_defense(sub, device, self.threads, self.sandboxes[0] if self.sandboxes else None)
            self._seed(job_seed(cfg.seed, f"{m.dataset}/{m.id}/randomness"))
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
            self._seed(job_seed(cfg.seed, f"{m.dataset}/{m.id}/clean"))
            self.clean: Scores = score(self.defense, self.x, self.y, self.draws, cfg.batch_size)
        except BaseException:
            self.close()
            raise

    def _seed(self, seed: int, defense: Any = None) -> None:
        """Seed this process's draws and the defense's own (in its sandbox, if any)."""
        torch.manual_seed(seed)
        seed_defense = getattr(defense if defense is not None else self.defense, "manual_seed", None)
        if callable(seed_defense):
            seed_defense(seed)

    def score_fresh(self, x_adv: torch.Tensor, y: torch.Tensor, seed: int) -> Scores:
        """Score final adversarial points unrecognisably: in a fresh server of the scoring
        sandbox (it has seen no other input of these examples; the clean inputs were scored
        in the attack sandbox), through the same calls as any query, in an order shuffled
        by ``seed``. Without a sandbox, on the one defense, in the same shuffled order."""
        perm = torch.randperm(len(x_adv), generator=torch.Generator().manual_seed(seed)).to(x_adv.device)
        scorer = self.defense
        if self.sandboxes:
            if len(self.sandboxes) == 1:
                from gauntlet.benchmark.sandbox import Sandbox

                self.sandboxes.append(Sandbox(self.sub.folder, str(self.device)))
            scorer = open_defense(self.sub, self.device, self.threads, self.sandboxes[1], wipe=True)
        try:
            if scorer is not self.defense and self.defense.randomized and not scorer.randomized:
                scorer.randomized = True
            self._seed(seed, scorer)
            s = score(scorer, x_adv[perm], y[perm], self.draws, self.cfg.batch_size)
        finally:
            if scorer is not self.defense:
                scorer.close()
        inv = torch.argsort(perm)
        return Scores(*(getattr(s, f.name)[inv] for f in dataclasses.fields(Scores)))

    def close(self) -> None:
        """Stop the defense's servers and sandboxes."""
        close = getattr(getattr(self, "defense", None), "close", None)
        if callable(close):
            close()
        for sb in self.sandboxes:
            sb.close()
        self.sandboxes = []

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
            self._seed(job_seed(self.cfg.seed, f"{m.dataset}/{m.id}/gradients"))
            self._gradients = observed_gradients(self.defense, self.x[:16], self.y[:16])
            if self._gradients["zero_fraction"] > ZERO_GRAD_THRESHOLD:
                self.defense.zero_gradients = True
        return self._gradients

    def facts(self) -> dict[str, bool]:
        """:func:`gauntlet.attacks.base.defense_facts`, with the observed-gradients fact measured
        first, so that every record of the submission (attack, certify, flags) carries the
        same facts whichever job a worker runs first; plus ``surrogate``: whether the
        project declares a surrogate for the dataset (:mod:`gauntlet.benchmark.surrogates`)."""
        self.gradients  # noqa: B018 - measures and sets zero_gradients on first use
        return {**defense_facts(self.defense), "surrogate": has_surrogate(self.dataset.id)}

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
        slice, the submission's every file, the whole harness source (:mod:`gauntlet.benchmark.code_hash`),
        the seed, draws, batch size (results are not batch-invariant: docs/results.md),
        device type and torch version."""
        return {"schema_version": rf.SCHEMA_VERSION, "kind": kind, "dataset": self.dataset.id,
                "indices": list(self.indices), "defense": self.sub.id,
                "manifest_sha256": self.sub.manifest_sha256, "weights_sha256": self.weights_sha,
                "submission_files": submission_files_hash(self.sub.path.parent), "code": code_hash(),
                "seed": self.cfg.seed, "draws": self.draws, "batch_size": self.cfg.batch_size,
                "device": self.device.type, "torch": torch.__version__, "sandbox": self.cfg.sandbox}

    # -- attack jobs -------------------------------------------------------------------

    def attack_job(self, attack_id: str, threat: ThreatModel, existing: str | None = None,
                   candidates: list[bool] | None = None) -> Outcome:
        """Run one attack at one threat, unless ``existing`` (the config hash of the result
        file on disk) is this job's: then ``("reused", None)``. Not applicable to the
        defense's facts: ``("not-applicable", None)``; else ``("computed", record)``.

        ``candidates``: per example, whether the cascade hands it to this attack (False:
        an earlier attack broke it, :mod:`gauntlet.benchmark.cascade`); None: every example. Only
        clean-correct candidates are attacked.
        """
        override = self.overrides.get(attack_id)
        attack = make_attack(attack_id, **(override.params if override else {}))
        if attack.not_applicable(self.facts()) is not None:
            return NOT_APPLICABLE
        run_id = rf.attack_run_id(self.dataset.id, self.sub.id, threat.id, attack_id)
        config = {**self.base_config("attack"), "attack": attack.describe(), "threat": threat.id}
        if candidates is not None:
            if len(candidates) != len(self.indices):
                raise ValueError(f"{run_id}: {len(candidates)} cascade flags for {len(self.indices)} examples")
            config["cascade"] = [bool(c) for c in candidates]
        if existing == rf.config_hash(config):
            return REUSED
        start = time.perf_counter()
        seed = job_seed(self.cfg.seed, run_id)
        # Build the surrogate before seeding: building a model draws from the global RNG,
        # and whether this worker had built it already must not change the draws below.
        surrogate = self._surrogate() if attack.needs_surrogate else None
        self._seed(seed)
        # Every example draws from its own stream (keyed by its dataset index), so what the
        # attack does to it depends neither on its batch nor on the cascade's pruning.
        draws = RowStreams(seed, self.indices)
        skipped = torch.zeros(len(self.indices), dtype=torch.bool, device=self.x.device)
        if candidates is not None:
            skipped = (self.clean.correct > 0) & ~torch.tensor(candidates, device=self.x.device)
        x_adv = self.x.clone()
        attacked = (self.clean.correct > 0) & ~skipped
        todo = torch.nonzero(attacked).flatten()
        infos: list[tuple[int, dict]] = []
        for start_i in range(0, len(todo), self.cfg.batch_size):
            rows = todo[start_i:start_i + self.cfg.batch_size]
            xb, yb = self.x[rows], self.y[rows]
            ctx = AttackContext(draws.rows(rows.cpu()), surrogate)
            res = attack.run(self.defense, xb, yb, threat, ctx)
            threat.verify(res.x_adv, xb)  # the runner verifies, not the attack
            x_adv[rows] = res.x_adv.detach()
            infos.append((len(rows), res.info))
        # Only the attacked rows are scored again. Elsewhere x_adv is x: a skipped row has no
        # score of this attack, and a clean-wrong one (every draw wrong) scores 0 whatever
        # its adversarial score, so their adv scores are the clean ones (for a randomized
        # defense, other draws of the same quantity), as for a deterministic defense.
        adv = self.clean
        if len(todo):
            fresh = self.score_fresh(x_adv[todo], self.y[todo], job_seed(self.cfg.seed, run_id + "/score"))
            adv = Scores(*(getattr(self.clean, f.name).index_copy(0, todo, getattr(fresh, f.name))
                           for f in dataclasses.fields(Scores)))
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
        return "computed", record


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


def certify_job(run: SubmissionRun, threats: list[ThreatModel], existing: str | None = None) -> Outcome:
    """Certify a submission (``("reused", None)`` when ``existing`` is this job's config hash)."""
    from gauntlet.benchmark.certify import certify_submission

    spec = run.sub.manifest.certify
    run_id = f"{run.dataset.id}/{run.sub.id}/certify/{spec.method}"
    n_override = run.profile.certify_n
    config = {**run.base_config("certify"), "certify": spec.model_dump(mode="json"),
              "profile_n": n_override, "threats": [t.id for t in threats]}
    if existing == rf.config_hash(config):
        return REUSED
    start = time.perf_counter()
    body = certify_submission(run.sub, run.defense, run.x, run.y, indices=run.indices, threats=threats,
                              device=run.device, seed=job_seed(run.cfg.seed, run_id), profile_n=n_override)
    record = run.envelope("certify", run_id, config, time.perf_counter() - start)
    record.update(body)
    return "computed", record


def flags_job(run: SubmissionRun, threat: ThreatModel, records: dict[str, dict], unbounded: dict | None,
              sweep: list[tuple[float, float]] | None, certificate: dict | None,
              existing: str | None = None) -> Outcome:
    """The flags of one defense at one threat (``("reused", None)`` when ``existing`` is
    this job's config hash)."""
    cert = None
    if certificate is not None:
        from gauntlet.benchmark.certify import consistency_violations

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
    if existing == rf.config_hash(config):
        return REUSED
    return "computed", record


def surrogate_loader(cfg: RunConfig, dataset_id: str, device: torch.device) -> Callable[[], nn.Module | None]:
    """The transfer attack's surrogate, built on first use: the project's surrogate of the
    dataset (:mod:`gauntlet.benchmark.surrogates`), loaded from the repository, never from
    ``cfg.submissions_dir``; None when the project declares none (the transfer attack is
    then not applicable: the ``surrogate`` fact).

    Raises (on first use):
        gauntlet.benchmark.surrogates.SurrogateError: the declared surrogate is missing or invalid.
    """
    from gauntlet.benchmark.surrogates import load_surrogate

    cache: list[nn.Module | None] = []

    def load() -> nn.Module | None:
        if not cache:
            cache.append(load_surrogate(dataset_id, device))
        return cache[0]

    return load
