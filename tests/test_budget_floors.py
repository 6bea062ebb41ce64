"""Budget floors: an override lowers a declared budget down to its floor, never switches an
attack off, and the full-budget APGD-CE and a full-budget black-box attack always run."""
from __future__ import annotations

import dataclasses
import itertools
import shutil
from pathlib import Path

import pytest

from gauntlet.attacks.base import ATTACKS
from gauntlet.attacks.budgets import defaults, full_budget
from gauntlet.attacks.registry import attack_ids, make_attack, make_attack_unchecked, override_problems
from gauntlet.attacks.square import P_HALVINGS, p_schedule
from gauntlet.benchmark.applicability import not_applicable
from gauntlet.benchmark.registry import load_submission, manifest_paths, validate

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: Every fact the applicability rule reads (gauntlet.attacks.base.defense_facts plus the run's surrogate fact).
FACTS = ("randomized", "differentiable", "rejects", "abstains", "zero_gradients", "reparameterization",
         "surrogate")


def every_facts():
    for values in itertools.product((False, True), repeat=len(FACTS)):
        yield dict(zip(FACTS, values))


@pytest.mark.parametrize("attack_id", attack_ids())
def test_every_floor_is_a_positive_integer_budget_no_higher_than_its_default(attack_id):
    cls = ATTACKS.get(attack_id)
    d = defaults(cls)
    assert cls.FLOORS, f"{attack_id} declares no floors"
    for name, floor in cls.FLOORS.items():
        assert name in d, f"{attack_id}.FLOORS names {name!r}, not a parameter"
        assert isinstance(d[name], int) and not isinstance(d[name], bool), (attack_id, name)
        assert isinstance(floor, int) and 1 <= floor <= d[name], (attack_id, name, floor, d[name])


def test_the_full_budget_apgd_ce_runs_against_every_defense():
    cls = ATTACKS.get("apgd-ce")
    assert full_budget(cls)
    assert all(not_applicable(cls.traits(), facts) is None for facts in every_facts())


def test_a_full_budget_black_box_attack_runs_against_every_defense():
    """Whatever the facts (randomized, masked, rejecting, no surrogate …), some attack with
    the gradient_free trait and every floor at its default applies."""
    anchors = [ATTACKS.get(a) for a in attack_ids()
               if ATTACKS.get(a).gradient_free and full_budget(ATTACKS.get(a))]
    for facts in every_facts():
        assert any(not_applicable(c.traits(), facts) is None for c in anchors), facts


def test_the_issue_s_override_is_refused_by_make_attack():
    """``steps: 0`` / ``n_queries: 1`` switched every attack off (the undefended CNN ranked first)."""
    with pytest.raises(ValueError, match="apgd-ce always runs at its full budget"):
        make_attack("apgd-ce", steps=0)
    with pytest.raises(ValueError, match=r"params\.n_queries: 1 is below the floor 250 of square"):
        make_attack("square", n_queries=1)
    with pytest.raises(ValueError, match="params.eot: 1 is below the floor 2"):
        make_attack("pgd-eot", eot=1)
    assert make_attack("square", n_queries=250).params.n_queries == 250
    assert make_attack("square").params.n_queries == 5000
    # The unchecked constructor is for tests and experiments (toy budgets); the runner never calls it.
    assert make_attack_unchecked("apgd-ce", steps=3).params.steps == 3


@pytest.mark.parametrize("attack_id, params, field, reason", [
    ("square", {"n_querys": 100}, "params.n_querys", "unknown parameter of square; did you mean 'n_queries'"),
    ("square", {"p_init": 0.0}, "params.p_init", "not a budget parameter square lets an override lower"),
    ("pgd-eot", {"step_size": 0.0}, "params.step_size", "not a budget parameter"),
    ("pgd-eot", {"steps": 20}, "params.steps", "not a budget parameter"),  # α is tied to the 40 steps
    ("square", {"n_queries": 6000}, "params.n_queries", "above the default 5000"),
    ("square", {"n_queries": 500.0}, "params.n_queries", "is not an integer"),
    ("square", {"n_queries": True}, "params.n_queries", "is not an integer"),
    ("spsa", {"iterations": 9, "samples": 32}, "params.iterations", "9 is below the floor 10"),
    ("apgd-t", {"n_target_classes": 0}, "params.n_target_classes", "below the floor 3"),
    ("square", {"n_queries": 5000}, "params", "changes no budget of square"),
    ("square", {}, "params", "changes no budget"),
    ("random", {"samples": 1}, "attack", "random always runs at its full budget"),
    ("transfer", {"steps": 1}, "attack", "transfer always runs at its full budget"),
])
def test_override_problems_name_the_field_and_the_reason(attack_id, params, field, reason):
    @dataclasses.dataclass
    class O:
        attack: str
        params: dict

    problems = override_problems([O(attack_id, params)])
    assert any(p.startswith(f"attack_overrides[0].{field}: ") and reason in p for p in problems), problems


def test_unknown_and_duplicate_attacks_are_problems():
    @dataclasses.dataclass
    class O:
        attack: str
        params: dict

    problems = override_problems([O("squar", {"n_queries": 500}), O("square", {"n_queries": 500}),
                                  O("square", {"n_queries": 300})])
    assert problems[0].startswith("attack_overrides[0].attack: unknown attack 'squar'; did you mean 'square'")
    assert problems[1] == "attack_overrides[2].attack: square is already overridden in attack_overrides[1]"
    assert len(problems) == 2


def test_every_reference_submission_s_overrides_respect_the_floors():
    subs, problems = validate(manifest_paths([ROOT / "submissions"]), check_weights=False)
    assert not [p for p in problems if "attack_overrides" in p], problems
    overridden = {(s.id, o.attack) for s in subs for o in s.manifest.attack_overrides}
    assert ("song2018-pixeldefend", "square") in overridden  # the lowest one: 250 queries


def _with_overrides(tmp_path: Path, overrides: str) -> Path:
    folder = tmp_path / "subs" / "dummy-linear"
    shutil.copytree(FIXTURES / "submissions" / "dummy-linear", folder)
    manifest = folder / "manifest.yaml"
    manifest.write_text(manifest.read_text() + overrides)
    return manifest


SWITCHED_OFF = """attack_overrides:
  - {attack: apgd-ce, params: {steps: 0}, reason: "0123456789"}
  - {attack: square, params: {n_queries: 1}, reason: "0123456789"}
  - {attack: spsa, params: {iteration: 5}, reason: "0123456789"}
"""


def test_gauntlet_validate_reports_every_bad_override_and_exits_2(tmp_path, capsys):
    from gauntlet.benchmark.cli import main

    manifest = _with_overrides(tmp_path, SWITCHED_OFF)
    assert load_submission(manifest).manifest.attack_overrides  # the schema alone accepts it
    assert main(["validate", str(manifest)]) == 2
    err = capsys.readouterr()
    text = err.out + err.err
    assert f"{manifest}: attack_overrides[0].attack: apgd-ce always runs at its full budget" in text
    assert f"{manifest}: attack_overrides[1].params.n_queries: 1 is below the floor 250 of square" in text
    assert f"{manifest}: attack_overrides[2].params.iteration: unknown parameter of spsa; did you mean" in text


def test_a_run_with_a_bad_override_refuses_before_any_work(tmp_path):
    from gauntlet.benchmark.manifest import ManifestError
    from gauntlet.benchmark.runner import RunConfig, run

    manifest = _with_overrides(tmp_path, SWITCHED_OFF)
    with pytest.raises(ManifestError, match="below the floor"):
        run(RunConfig(submissions_dir=manifest.parent.parent, attacks=("fgsm",), threats=("linf-0.031",),
                      n_examples=2, results_dir=tmp_path / "results", sweep=False, isolate=False), progress=False)
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.json"))


def test_square_floor_gives_every_phase_of_the_schedule_a_query():
    """The schedule is rescaled to 10,000 iterations; its shortest phase after the first
    (rescaled 10-50) is 40 = 10,000/250 long, so from 250 queries on every p is tried."""
    phases = [b - a for a, b in zip(P_HALVINGS, P_HALVINGS[1:] + (10000,))]
    assert min(phases) == 40 and 10000 / min(phases) == ATTACKS.get("square").FLOORS["n_queries"]
    for n in (250, 251, 333, 500, 1000):
        assert len({p_schedule(it, n, 0.8) for it in range(n - 1)}) == len(P_HALVINGS) + 1, n


def test_the_catalog_carries_the_floors_and_the_site_shows_them_beside_an_override():
    from gauntlet.benchmark.catalog import attack_catalog
    from gauntlet.leaderboard import aggregate as agg
    from gauntlet.leaderboard.board import Board, _catalog_entry

    catalog = {a: _catalog_entry(a, c) for a, c in attack_catalog().items()}
    assert catalog["square"]["floors"] == {"n_queries": 250}
    assert catalog["apgd-ce"]["floors"] == {"steps": 100, "restarts": 1, "eot": 10}
    board = Board(Path("."), [], {}, catalog)
    assert agg.budget_change(board, "square", {"n_queries": 500, "p_init": 0.8}) == "n_queries 5000 → 500 (floor 250)"
    with pytest.raises(ValueError, match="floors"):
        _catalog_entry("square", {**attack_catalog()["square"], "floors": {"n_queries": "250"}})
