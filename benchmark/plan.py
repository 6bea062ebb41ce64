"""A run planned as a graph of frozen job specs, before anything runs.

Each :class:`JobSpec` names its job by a canonical run id (also its result file's path,
HELM's ``RunSpec`` pattern) and its inputs by run id, never by live objects, so a spec
can be pickled to another process or machine and the same run always plans the same
graph. Planning is pure: it reads parsed manifests and the attack registry (the
attacks' traits order the cascade) and imports no submitted code.

Per submission, the graph is::

    prepare ─┬─ baselines at each threat ── cascade attack 1 ── cascade attack 2 … (per threat)
             ├─ pgd at ε = ∞
             ├─ certify (when the manifest claims a certificate)
             └─ flags at each threat (after every attack of its norm, ε = ∞ and certify)

An attack that turns out not to apply (decided in the worker from the built defense's
facts) completes with no record; its dependants use the records that exist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from gauntlet.attacks.registry import make_attack
from gauntlet.benchmark.cascade import order
from gauntlet.benchmark.results import attack_run_id
from gauntlet.benchmark.threats import ThreatModel, get_threat, sweep_threats

if TYPE_CHECKING:
    from gauntlet.benchmark.registry import Submission

KINDS = ("prepare", "attack", "certify", "flags")
UNBOUNDED = "linf-inf"


@dataclass(frozen=True)
class JobSpec:
    """One job: what it computes and which jobs' results it needs."""

    #: "prepare", "attack", "certify" or "flags".
    kind: str
    #: Canonical id: the result file's path without ``.json`` (prepare: no file).
    run_id: str
    #: The submission (a lane: its jobs share one built defense).
    submission: str
    dataset: str
    attack: str | None = None
    threat: str | None = None
    #: Run ids that must be finished first (successful or not).
    inputs: tuple[str, ...] = ()
    #: Attack jobs of a cascade: the run ids whose breaks prune this attack's examples
    #: (the naive baseline is chosen among the first ``len(baselines)``, the rest are the
    #: cascade attacks before it). Empty: every example.
    baselines: tuple[str, ...] = ()
    pruned_by: tuple[str, ...] = ()
    #: Counted in the progress bar (the attack jobs at the requested and sweep threats).
    counted: bool = False
    #: certify: the threats whose radii it reports.
    threats: tuple[str, ...] = ()
    #: flags: attack id → run id at this threat; the curve's run ids per ε of its norm.
    records: tuple[tuple[str, str], ...] = ()
    curve: tuple[tuple[float, tuple[str, ...]], ...] = ()
    #: flags: the curve starts at ε = 0 with the clean accuracy (a sweep was run).
    curve_from_zero: bool = False
    unbounded: str | None = None
    certificate: str | None = None


@dataclass
class Plan:
    """Every job of a run, in a deterministic order (submissions in scheduling order)."""

    specs: list[JobSpec] = field(default_factory=list)
    #: Submission id → the attack run ids planned for it (error records on a failed build).
    attack_runs: dict[str, list[str]] = field(default_factory=dict)

    def by_id(self) -> dict[str, JobSpec]:
        return {s.run_id: s for s in self.specs}

    def lanes(self) -> list[str]:
        return list(dict.fromkeys(s.submission for s in self.specs))

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(self.specs)


def prepare_id(dataset: str, sub_id: str) -> str:
    return f"{dataset}/{sub_id}/prepare"


def certify_id(dataset: str, sub_id: str, method: str) -> str:
    return f"{dataset}/{sub_id}/certify/{method}"


def flags_id(dataset: str, sub_id: str, threat: str) -> str:
    return f"{dataset}/{sub_id}/{threat}/flags"


def plan_submission(sub: Submission, attacks: list[str], threats: list[ThreatModel],
                    sweeps: dict[str, tuple[float, ...]] | None, *, cascade: bool = True,
                    certify: bool = True) -> list[JobSpec]:
    """The jobs of one submission (see the module's graph)."""
    ds, sid = sub.manifest.dataset, sub.id
    prep = prepare_id(ds, sid)
    specs = [JobSpec("prepare", prep, sid, ds)]
    overrides = {o.attack: o.params for o in sub.manifest.attack_overrides}
    baselines, chain = order([make_attack(a, **overrides.get(a, {})) for a in attacks])
    all_threats = sweep_threats(threats, sweeps)
    at: dict[str, dict[str, str]] = {}
    for t in all_threats:
        ids = at.setdefault(t.id, {})
        for a in baselines:
            ids[a.id] = attack_run_id(ds, sid, t.id, a.id)
            specs.append(JobSpec("attack", ids[a.id], sid, ds, a.id, t.id, (prep,), counted=True))
        base = tuple(ids.values())
        before: list[str] = []
        for a in chain:
            rid = attack_run_id(ds, sid, t.id, a.id)
            specs.append(JobSpec("attack", rid, sid, ds, a.id, t.id, (prep, *base, *before), counted=True,
                                 baselines=base if cascade else (), pruned_by=tuple(before) if cascade else ()))
            before.append(rid)
            ids[a.id] = rid
    unbounded = None
    if "pgd" in attacks:
        unbounded = attack_run_id(ds, sid, UNBOUNDED, "pgd")
        specs.append(JobSpec("attack", unbounded, sid, ds, "pgd", UNBOUNDED, (prep,)))
    certificate = None
    if certify and sub.manifest.certify is not None:
        certificate = certify_id(ds, sid, sub.manifest.certify.method)
        specs.append(JobSpec("certify", certificate, sid, ds, inputs=(prep,),
                             threats=tuple(t.id for t in threats)))
    for t in all_threats:
        same_norm = sorted((u for u in all_threats if u.norm == t.norm), key=lambda u: u.eps)
        curve = tuple((u.eps, tuple(at[u.id].values())) for u in same_norm)
        needs = [prep, *(r for _, ids in curve for r in ids), *at[t.id].values(),
                 *(x for x in (unbounded, certificate) if x)]
        specs.append(JobSpec("flags", flags_id(ds, sid, t.id), sid, ds, threat=t.id,
                             inputs=tuple(dict.fromkeys(needs)), records=tuple(at[t.id].items()),
                             curve=curve, curve_from_zero=bool(sweeps), unbounded=unbounded,
                             certificate=certificate))
    return specs


def plan_run(subs: list[Submission], attacks: list[str], threat_ids: list[str],
             sweeps: dict[str, tuple[float, ...]] | None, *, cascade: bool = True,
             certify: bool = True) -> Plan:
    """The whole run's graph; ``subs`` in the order their lanes should start."""
    threats = [get_threat(t) for t in threat_ids]
    plan = Plan()
    for sub in subs:
        specs = plan_submission(sub, attacks, threats, sweeps, cascade=cascade, certify=certify)
        plan.specs.extend(specs)
        plan.attack_runs[sub.id] = [s.run_id for s in specs if s.kind == "attack" and s.counted]
    return plan


def cost_rank(sub: Submission) -> int:
    """Lane order, so that parallel workers finish together: first the defenses that
    declare themselves expensive (an example limit), then randomized or rejecting ones
    (EOT attacks, R scoring draws, detectors), then the rest."""
    m = sub.manifest
    if m.example_limits:
        return 0
    return 1 if m.properties.randomized or m.properties.rejects else 2
