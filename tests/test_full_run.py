"""The embedded default end to end (slow: about 40 minutes on a 2-core CPU): every committed
submission, every attack, both threats, sweeps, certificates, flags, then the site."""
from __future__ import annotations

from pathlib import Path

import pytest

from gauntlet.attacks.base import ATTACKS
from gauntlet.attacks.registry import attack_ids
from gauntlet.benchmark.results import iter_results
from gauntlet.benchmark.runner import RunConfig, run
from gauntlet.benchmark.threats import FIXED_THREATS
from gauntlet.leaderboard.site import build_site

ROOT = Path(__file__).resolve().parent.parent


def check_full_run(results: Path, site: Path, defenses: tuple[str, ...] = ()) -> None:
    """Run the quick profile and check that every job finished and nothing contradicts."""
    summary = run(RunConfig(submissions_dir=ROOT / "submissions", defenses=defenses, results_dir=results),
                  progress=False)
    assert summary.errors == []
    records = [r for _, r in iter_results(results)]
    attacks = [r for r in records if r["kind"] == "attack"]
    ran = {(r["defense"]["id"], r["threat"]["id"], r["attack"]["id"]) for r in attacks}
    facts = {r["defense"]["id"]: r["defense"]["facts"] for r in attacks}
    threats = {*FIXED_THREATS, *(r["threat"]["id"] for r in attacks if r["threat"]["id"] != "linf-inf")}
    for d in facts:
        for t in threats:  # every attack that applies runs at every ε, sweep points included
            missing = [a for a in attack_ids() if ATTACKS.get(a).not_applicable(facts[d]) is None
                       and (d, t, a) not in ran]
            assert not missing, (d, t, missing)
    for r in records:
        if r["kind"] == "flags":
            violated = [f for f in r["flags"] if f["id"] == "certificate-violated" and f["raised"]]
            assert not violated, (r["run_id"], violated)
    assert build_site(results, site).is_file()


@pytest.mark.slow
def test_embedded_default_end_to_end(tmp_path):
    check_full_run(tmp_path / "results", tmp_path / "site")
