"""Aggregation of result files: worst case, ranking, claim gaps, flags, missing attacks, errors."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.results import ResultError, iter_results
from leaderboard import aggregate as agg
from leaderboard import details

FIXTURES = Path(__file__).parent / "fixtures"
DS = "mnist-embedded"
CATALOG = {a: {"summary": a, "params": {}, "gradient_free": False, "needs_reparameterization": False}
           for a in ("fgsm", "pgd", "pgd-bpda", "pgd-eot", "pgd-bpda-eot", "square")}
CATALOG["reparam"] = {"summary": "reparam", "params": {}, "gradient_free": False, "needs_reparameterization": True}


def _generator():
    spec = importlib.util.spec_from_file_location("make_leaderboard_results",
                                                  FIXTURES / "make_leaderboard_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def board(root: Path, catalog: dict | None = None) -> agg.Board:
    return agg.load_board(root, catalog=CATALOG if catalog is None else catalog)


@pytest.fixture(scope="module")
def fixture_board() -> agg.Board:
    return board(FIXTURES / "results")


def write(root: Path, defense: str, attack: str, robust: list[float], *, threat: str = "linf-0.031",
          clean: list[float] | None = None, worst: list[int] | None = None, indices: list[int] | None = None) -> Path:
    """An attack result with explicit per-example arrays (any length)."""
    n = len(robust)
    clean = clean or [1.0] * n
    gen.attack(root, DS, defense, defense, threat, attack, clean, robust, worst)
    path = root / DS / defense / threat / f"{attack}.json"
    rec = json.loads(path.read_text())
    rec["dataset"]["indices"] = indices or list(range(n))
    rec["dataset"]["n"] = n
    for key in ("perturbation_norm", "clean_rejected", "adv_rejected"):
        rec["per_example"][key] = [0.0] * n
    path.write_text(json.dumps(rec))
    return path


# -- worst case ------------------------------------------------------------------------------

def test_worst_case_is_per_example_minimum_over_attacks(tmp_path):
    write(tmp_path, "d", "fgsm", [1, 1, 0, 0])
    write(tmp_path, "d", "pgd", [0, 1, 1, 0])
    wc = agg.worst_case(board(tmp_path), DS, "d", "linf-0.031")
    # Each attack alone leaves 50%; together only example 1 survives both.
    assert wc.per_attack == {"fgsm": 0.5, "pgd": 0.5}
    assert wc.accuracy == 0.25
    assert wc.n == 4 and not wc.uneven
    assert wc.strongest == "fgsm"  # tie broken by registry order


def test_worst_case_of_randomized_scores_and_worst_of_draws(tmp_path):
    write(tmp_path, "d", "pgd", [0.5, 1.0], worst=[0, 1])
    write(tmp_path, "d", "pgd-eot", [1.0, 0.3], worst=[1, 0])
    wc = agg.worst_case(board(tmp_path), DS, "d", "linf-0.031")
    assert wc.accuracy == pytest.approx((0.5 + 0.3) / 2)
    assert wc.worst_of_draws == 0.0
    assert wc.strongest == "pgd-eot"


def test_worst_case_aligns_examples_by_index_and_reports_uneven_coverage(tmp_path):
    write(tmp_path, "d", "fgsm", [1, 1, 0], indices=[10, 11, 12])
    write(tmp_path, "d", "pgd", [0, 1], indices=[12, 10])  # other order, example 11 missing
    wc = agg.worst_case(board(tmp_path), DS, "d", "linf-0.031")
    assert wc.n == 2 and wc.uneven
    assert wc.accuracy == 0.5  # 10 survives both; 12 broken by both
    assert agg.worst_case(board(tmp_path), DS, "d", "l2-0.005") is None


def test_fixture_worst_cases(fixture_board):
    get = lambda d, t: agg.worst_case(fixture_board, DS, d, t)  # noqa: E731
    assert get("jpeg", "linf-0.031").accuracy == pytest.approx(0.1)       # {0,1}∩{1,2}∩… = {1}
    assert get("jpeg", "linf-0.031").per_attack["pgd"] == pytest.approx(0.8)
    assert get("undefended", "l2-0.005").accuracy == pytest.approx(0.3)   # below every attack's 0.4
    assert min(get("undefended", "l2-0.005").per_attack.values()) == pytest.approx(0.4)


# -- ranking -----------------------------------------------------------------------------------

def test_ranking_order_and_unranked_last(fixture_board):
    table = agg.leaderboard(fixture_board)
    linf = table[(table.dataset == DS) & (table.threat == "linf-0.031")]
    # Ranked rows, then incomplete ones (fragile: two attacks failed), then unmeasured
    # (unbuildable: the defense could not be built).
    assert list(linf.defense) == ["madry", "detector", "smoothing", "jpeg", "undefended", "fragile", "unbuildable"]
    assert list(linf["rank"].iloc[:5]) == [1, 2, 3, 4, 5] and linf["rank"].iloc[5:].isna().all()
    assert list(linf.robust_accuracy.iloc[:6]) == pytest.approx([0.8, 0.5, 0.43, 0.1, 0.0, 0.6])
    l2 = table[(table.dataset == DS) & (table.threat == "l2-0.005")]
    assert list(l2.defense)[-3:] == ["fragile", "detector", "unbuildable"] and l2["rank"].isna().iloc[-3:].all()
    # Registered datasets in registry order: mnist-embedded before cifar10.
    assert list(dict.fromkeys(table.dataset)) == [DS, "cifar10"]


def test_ties_share_a_rank_and_are_ordered_by_clean_accuracy(tmp_path):
    write(tmp_path, "a", "pgd", [1, 0, 0, 0], clean=[1, 1, 0, 0])
    write(tmp_path, "b", "pgd", [1, 0, 0, 0], clean=[1, 1, 1, 0])
    write(tmp_path, "c", "pgd", [1, 1, 0, 0])
    linf = agg.leaderboard(board(tmp_path)).query("threat == 'linf-0.031'")
    assert list(linf.defense) == ["c", "b", "a"]
    assert list(linf["rank"]) == [1, 2, 2]


# -- claims ----------------------------------------------------------------------------------------

def test_claim_gap_and_not_reproduced_rule(fixture_board):
    table = agg.leaderboard(fixture_board).set_index(["dataset", "threat", "defense"])
    jpeg = table.loc[(DS, "linf-0.031", "jpeg")]
    assert jpeg.claim_gap == pytest.approx(0.75 - 0.1) and jpeg.not_reproduced
    madry = table.loc[(DS, "linf-0.031", "madry")]  # claim at linf-0.3, measured by the sweep
    assert madry.claim_threat == "linf-0.3"
    assert madry.claim_measured == pytest.approx(0.9)
    assert madry.claim_gap == pytest.approx(-0.01) and not madry.not_reproduced
    smoothing = table.loc[(DS, "l2-0.005", "smoothing")]
    assert smoothing.claim_dataset == "cifar10"
    assert math.isnan(table.loc[(DS, "linf-0.031", "undefended")].claim_gap)


def test_gap_at_exactly_the_tolerance_is_not_flagged(tmp_path):
    write(tmp_path, "d", "pgd", [1] * 14 + [0] * 6)  # measured 0.7
    b = board(tmp_path)
    at = agg.claim_gap(b, DS, "d", {"threat": "linf-0.031", "accuracy": 0.75, "source": "x"})
    above = agg.claim_gap(b, DS, "d", {"threat": "linf-0.031", "accuracy": 0.76, "source": "x"})
    unmeasured = agg.claim_gap(b, DS, "d", {"threat": "linf-0.3", "accuracy": 0.9, "source": "x"})
    assert not at["not_reproduced"] and above["not_reproduced"]
    assert unmeasured["measured"] is None and not unmeasured["not_reproduced"]


def test_pick_claim_prefers_same_threat_then_norm_then_this_dataset():
    claims = [{"threat": "l2-0.005", "accuracy": 0.1, "source": "a", "dataset": "cifar10"},
              {"threat": "linf-0.3", "accuracy": 0.2, "source": "b"},
              {"threat": "linf-0.031", "accuracy": 0.3, "source": "c", "dataset": "cifar10"},
              {"threat": "linf-0.031", "accuracy": 0.4, "source": "d", "dataset": DS}]
    m = {"claims": claims}
    assert agg.pick_claim(m, DS, "linf-0.031")["source"] == "d"
    assert agg.pick_claim(m, DS, "l2-0.005")["source"] == "a"
    assert agg.pick_claim({"claims": claims[:2]}, DS, "linf-0.031")["source"] == "b"
    assert agg.pick_claim({}, DS, "linf-0.031") is None


# -- flags, certificates, missing attacks, sweeps ---------------------------------------------------

def test_flags_parsing(fixture_board):
    flags = agg.flags(fixture_board, DS, "jpeg", "linf-0.031")
    raised = [f for f in flags if f["raised"]]
    assert [f["id"] for f in raised] == ["zero-gradients"]
    assert raised[0]["numbers"] == {"zero_grad_fraction": 0.9, "threshold": 0.5}
    assert raised[0]["tooltip"] == "zero-gradients: threshold = 0.5, zero_grad_fraction = 0.9"
    assert len(flags) == 7
    assert agg.flags(fixture_board, DS, "smoothing", "linf-0.031") is None
    table = agg.leaderboard(fixture_board).set_index(["dataset", "threat", "defense"])
    assert table.loc[(DS, "linf-0.031", "madry")].flags_raised == "one-step-beats-iterative"
    assert "zero-gradients" in agg.flag_docs(fixture_board)


def test_certified_accuracy(fixture_board):
    assert agg.certified(fixture_board, DS, "smoothing", "l2-0.005") == (0.5, "randomized-smoothing")
    assert agg.certified(fixture_board, DS, "jpeg", "l2-0.005") is None


def test_missing_attacks(fixture_board):
    # jpeg has no pgd-bpda-eot at l2; square is registered but never run; reparam needs a
    # reparameterization, so it is not expected.
    assert agg.missing_attacks(fixture_board, DS, "jpeg", "l2-0.005") == ["pgd-bpda-eot", "square"]
    assert agg.missing_attacks(fixture_board, DS, "madry", "l2-0.005") == ["square"]
    assert agg.missing_attacks(fixture_board, DS, "detector", "l2-0.005") == [
        "fgsm", "pgd", "pgd-bpda", "pgd-eot", "pgd-bpda-eot", "square"]


def test_missing_attacks_counts_attacks_other_defenses_ran(tmp_path):
    write(tmp_path, "a", "pgd", [1, 0])
    write(tmp_path, "a", "not-registered", [1, 0])
    write(tmp_path, "b", "pgd", [1, 0])
    assert agg.missing_attacks(board(tmp_path, catalog={}), DS, "b", "linf-0.031") == ["not-registered"]


def test_sweep_curve(fixture_board):
    curve = details.sweep_curve(fixture_board, DS, "madry", "linf")
    assert list(curve.eps) == [0.0, 0.031, 0.1, 0.3]
    assert list(curve.worst_case) == pytest.approx([1.0, 0.8, 0.9, 0.9])
    assert list(curve.attacks) == [2, 5, 2, 2]
    assert list(curve.pgd) == pytest.approx([1.0, 0.8, 0.9, 0.9])
    # The unbounded run (linf-inf) is not a point of the curve.
    undefended = details.sweep_curve(fixture_board, DS, "undefended", "linf")
    assert list(undefended.eps) == [0.0, 0.01, 0.031, 0.1, 0.3]
    assert agg.worst_case(fixture_board, DS, "undefended", "linf-inf").accuracy == 0.0


def test_attack_table_and_metadata(fixture_board):
    table = details.attack_table(fixture_board, DS, "jpeg", "linf-0.031")
    assert list(table.attack) == ["fgsm", "pgd", "pgd-bpda", "pgd-eot", "pgd-bpda-eot"]
    assert table.set_index("attack").loc["pgd-bpda", "robust_accuracy"] == pytest.approx(0.2)
    meta = details.run_metadata(fixture_board, DS, "jpeg")
    assert meta["files"] == 11 and meta["commit"] == ["0123456789abcdef0123456789abcdef01234567"]
    assert meta["wall_seconds"] == pytest.approx(5 * 12.0 + 4 * 1.5)
    assert meta["profile_label"] == "quick profile, 10 examples" and meta["errors"] == 0


def test_manifest_facts(fixture_board):
    assert fixture_board.manifests[(DS, "jpeg")]["paper"]["venue"] == "ICLR 2018"
    # No manifest.json: the name comes from the result files.
    assert fixture_board.manifests[(DS, "detector")] == {"id": "detector", "name": "Detector with rejection"}


# -- failed jobs (kind = error) --------------------------------------------------------------------

def error_file(root: Path, defense: str, leaf: str, *, slot: str = "linf-0.031", job: str = "attack",
               kind: str = "timeout", message: str = "no result within the wall-clock limit of 900 s") -> Path:
    gen.error(root, DS, defense, defense, slot, leaf, job, kind, message, 900.0)
    return root / DS / defense / slot / f"{leaf}.json"


def test_failed_attack_is_not_survived_and_the_row_is_incomplete_and_unranked(tmp_path):
    write(tmp_path, "d", "fgsm", [1, 1, 0, 0])
    error_file(tmp_path, "d", "pgd")
    write(tmp_path, "e", "fgsm", [1, 0, 0, 0])
    write(tmp_path, "e", "pgd", [1, 0, 0, 0])
    b = board(tmp_path)
    wc = agg.worst_case(b, DS, "d", "linf-0.031")
    # Over the finished attack only: fgsm's 0.5, not a 1.0 "survived" pgd, and marked.
    assert wc.accuracy == 0.5 and wc.attacks == ["fgsm"] and wc.failed == ["pgd"] and wc.incomplete
    assert not agg.worst_case(b, DS, "e", "linf-0.031").incomplete
    assert agg.failed_attacks(b, DS, "d", "linf-0.031") == ["pgd"]
    assert "pgd" not in agg.missing_attacks(b, DS, "d", "linf-0.031")
    linf = agg.leaderboard(b).query("threat == 'linf-0.031'")
    # d's 0.5 is an upper bound: listed after e (0.25) and not ranked.
    assert list(linf.defense) == ["e", "d"] and linf["rank"].iloc[0] == 1 and pd_isna(linf["rank"].iloc[1])
    row = linf.set_index("defense").loc["d"]
    assert row.incomplete and row.failed_attacks == "pgd" and row.job_errors == 1 and row.robust_accuracy == 0.5
    assert row.attacks_run == "fgsm"


def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


def test_failed_attack_at_the_claims_threat_blocks_reproduced_but_not_not_reproduced(tmp_path):
    write(tmp_path, "d", "fgsm", [1] * 7 + [0] * 3)  # measured 0.7 over fgsm alone
    error_file(tmp_path, "d", "pgd", kind="memory")
    b = board(tmp_path)
    close = agg.claim_gap(b, DS, "d", {"threat": "linf-0.031", "accuracy": 0.72, "source": "x"})
    far = agg.claim_gap(b, DS, "d", {"threat": "linf-0.031", "accuracy": 0.95, "source": "x"})
    assert close["incomplete"] and not close["not_reproduced"]
    assert far["incomplete"] and far["not_reproduced"]  # still holds: measured is an upper bound


def test_fixture_errors(fixture_board):
    b = fixture_board
    wc = agg.worst_case(b, DS, "fragile", "linf-0.031")
    assert wc.accuracy == pytest.approx(0.6) and wc.failed == ["pgd-bpda", "pgd-eot"]
    assert agg.failed_attacks(b, DS, "fragile", "l2-0.005") == ["pgd-bpda-eot"]
    errors = {e.label: e for e in b.errors(DS, "fragile")}
    assert set(errors) == {"linf-0.031/pgd-bpda", "linf-0.031/pgd-eot", "linf-0.031/flags",
                           "l2-0.005/pgd-bpda-eot", "certify/randomized-smoothing"}
    assert [errors[k].kind for k in sorted(errors)] == ["timeout", "exception", "crash", "timeout", "memory"]
    assert errors["linf-0.031/flags"].job == "flags" and not errors["linf-0.031/flags"].is_attack_slot
    assert errors["certify/randomized-smoothing"].job == "certify"
    assert "Traceback" in errors["l2-0.005/pgd-bpda-eot"].traceback
    assert agg.prepare_error(b, DS, "fragile") is None
    # The flags job failed: no flags, and no flags file pretending nothing was raised.
    assert agg.flags(b, DS, "fragile", "linf-0.031") is None
    build = agg.prepare_error(b, DS, "unbuildable")
    assert build.job == "prepare" and build.kind == "exception" and "missing_dep" in build.message
    assert agg.failed_attacks(b, DS, "unbuildable", "linf-0.031") == ["fgsm", "pgd", "pgd-bpda", "pgd-eot",
                                                                      "pgd-bpda-eot"]
    table = agg.leaderboard(b).set_index(["dataset", "threat", "defense"])
    row = table.loc[(DS, "linf-0.031", "unbuildable")]
    assert row.build_error == "exception: ModuleNotFoundError: No module named 'missing_dep'"
    assert pd_isna(row.robust_accuracy) and pd_isna(row["rank"]) and row.incomplete and row.job_errors == 10
    assert row.missing_attacks == "" and row.claim_accuracy == 0.9 and pd_isna(row.claim_gap)
    fragile = table.loc[(DS, "l2-0.005", "fragile")]
    assert fragile.failed_attacks == "pgd-bpda-eot" and fragile.job_errors == 5 and pd_isna(fragile.certified_accuracy)
    # Complete rows are untouched by other defenses' failures.
    assert not table.loc[(DS, "linf-0.031", "jpeg")].incomplete


def test_attack_table_lists_failed_jobs_in_place(fixture_board):
    table = details.attack_table(fixture_board, DS, "fragile", "linf-0.031").set_index("attack")
    assert list(table.index) == ["fgsm", "pgd", "pgd-bpda", "pgd-eot", "pgd-bpda-eot"]
    assert table.loc["pgd-bpda", "error_kind"] == "timeout" and pd_isna(table.loc["pgd-bpda", "robust_accuracy"])
    assert table.loc["pgd-eot", "error_message"].startswith("resident memory")
    assert table.loc["pgd-eot", "wall_seconds"] == 41.5 and table.loc["pgd-eot", "params"]["eot"] == 10
    assert pd_isna(table.loc["fgsm", "error_kind"])
    built = details.attack_table(fixture_board, DS, "unbuildable", "l2-0.005")
    assert set(built.error_job) == {"prepare"} and len(built) == 5
    assert details.run_metadata(fixture_board, DS, "fragile")["errors"] == 5


def test_minimal_error_record_infers_its_job_from_the_path(tmp_path):
    write(tmp_path, "d", "pgd", [1, 0])
    path = error_file(tmp_path, "d", "square", kind="crash", message="worker died")
    rec = json.loads(path.read_text())
    for key in ("job", "attack", "threat"):
        del rec[key]
    path.write_text(json.dumps(rec))
    (e,) = board(tmp_path).errors(DS, "d")
    assert (e.job, e.slot, e.name, e.kind, e.is_attack_slot) == ("attack", "linf-0.031", "square", "crash", True)
    assert e.tooltip == "linf-0.031/square: crash: worker died"


def test_error_records_written_by_the_runner_load(tmp_path):
    """The parent's own writer (benchmark.isolated_jobs), for an attack and a build failure."""
    from benchmark.isolated_jobs import error_job_config, write_error_result
    from benchmark.isolation import JobOutcome
    from benchmark.registry import load_submission
    from benchmark.runner import RunConfig

    sub = load_submission(FIXTURES / "submissions" / "dummy-linear" / "manifest.yaml")
    cfg = RunConfig(submissions_dir=FIXTURES / "submissions", results_dir=tmp_path, n_examples=3)
    out = JobOutcome(False, None, "no result within the wall-clock limit of 5 s", "timeout", 5.0)
    config = error_job_config(cfg, sub, "attack", attack_id="pgd", threat_id="linf-0.031", timeout_s=5, memory_mb=64)
    write_error_result(cfg, sub, f"{DS}/{sub.id}/linf-0.031/pgd", out, config, "cpu", [0, 1, 2])
    boom = JobOutcome(False, None, "ImportError: nope", "exception", 0.5, "Traceback ...\nImportError: nope\n")
    config = error_job_config(cfg, sub, "prepare", timeout_s=5, memory_mb=64)
    write_error_result(cfg, sub, f"{DS}/{sub.id}/l2-0.005/fgsm", boom, config, "cpu", [0, 1, 2])
    b = board(tmp_path)
    assert agg.failed_attacks(b, DS, sub.id, "linf-0.031") == ["pgd"]
    build = agg.prepare_error(b, DS, sub.id)
    assert (build.label, build.kind, build.message) == ("l2-0.005/fgsm", "exception", "ImportError: nope")
    assert build.is_attack_slot and agg.failed_attacks(b, DS, sub.id, "l2-0.005") == ["fgsm"]
    row = agg.leaderboard(b).set_index("threat").loc["linf-0.031"]
    assert row.build_error == "exception: ImportError: nope" and row.job_errors == 2


@pytest.mark.parametrize("damage", ["kind", "threat", "attack", "certify"])
def test_malformed_error_record_raises_naming_the_file(tmp_path, damage):
    path = error_file(tmp_path, "d", "pgd")
    rec = json.loads(path.read_text())
    if damage == "kind":
        rec["error"]["kind"] = "gremlins"
    elif damage == "threat":
        rec["threat"]["id"] = "l2-0.005"
    elif damage == "attack":
        rec["attack"]["id"] = "fgsm"
    else:
        rec["job"]["kind"] = "certify"
    path.write_text(json.dumps(rec))
    with pytest.raises(ResultError, match=str(path)):
        board(tmp_path)


# -- budgets and profiles -------------------------------------------------------------------------------

def test_reduced_budgets_and_budget_change(fixture_board):
    catalog = {**CATALOG, "pgd-eot": {**CATALOG["pgd-eot"], "params": dict(gen.PARAMS["pgd-eot"])}}
    b = agg.Board(fixture_board.results_dir, fixture_board.runs, fixture_board.manifests, catalog)
    (budget,) = agg.reduced_budgets(b, DS, "jpeg", "linf-0.031")
    assert budget == {"attack": "pgd-eot", "params": {**gen.PARAMS["pgd-eot"], "eot": 4},
                      "reason": "JPEG on CPU is slow; EOT reduced to 4 draws.", "change": "eot 10 → 4"}
    assert agg.budget_change(b, "pgd-eot", {"eot": 4, "steps": 40, "new": 1.5}) == "eot 10 → 4, new = 1.5"
    assert agg.reduced_budgets(b, DS, "madry", "linf-0.031") == []
    table = agg.leaderboard(b).set_index(["dataset", "threat", "defense"])
    assert table.loc[(DS, "l2-0.005", "jpeg")].reduced_budget == "pgd-eot"
    assert table.loc[(DS, "l2-0.005", "madry")].reduced_budget == ""
    row = details.attack_table(b, DS, "jpeg", "l2-0.005").set_index("attack").loc["pgd-eot"]
    assert row.budget_change == "eot 10 → 4" and row.override_reason.startswith("JPEG on CPU")


def test_profile_summary(tmp_path):
    write(tmp_path, "d", "fgsm", [1, 0, 1])
    write(tmp_path, "d", "pgd", [1, 0, 1, 1, 1], threat="l2-0.005")
    path = tmp_path / DS / "d" / "l2-0.005" / "pgd.json"
    rec = json.loads(path.read_text())
    rec["profile"] = "full"
    path.write_text(json.dumps(rec))
    b = board(tmp_path)
    linf = agg.profile_summary(b.select("attack", DS, "d", "linf-0.031"))
    from benchmark.profiles import PROFILES

    assert linf["label"] == "quick profile, 3 examples" and linf["description"] == PROFILES["quick"].description
    assert agg.profile_summary(b.runs)["label"] == "full + quick profiles, 3–5 examples"
    assert agg.profile_summary([])["label"] == "—"
    table = agg.leaderboard(b).set_index("threat")
    assert table.loc["l2-0.005", "profile"] == "full profile, 5 examples"


# -- errors and old schemas --------------------------------------------------------------------------

def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    shutil.copytree(FIXTURES / "results", root)
    return root


@pytest.mark.parametrize("damage", ["garbage", "schema", "short", "moved"])
def test_bad_result_file_raises_naming_the_file(tmp_path, damage):
    root = _copy(tmp_path)
    path = root / DS / "jpeg" / "linf-0.031" / "pgd.json"
    rec = json.loads(path.read_text())
    if damage == "garbage":
        path.write_text("{not json")
    elif damage == "schema":
        rec["schema_version"] = 99
        path.write_text(json.dumps(rec))
    elif damage == "short":
        rec["per_example"]["robust_correct"] = rec["per_example"]["robust_correct"][:3]
        path.write_text(json.dumps(rec))
    else:
        path.rename(path.with_name("pgd-bpda-eot2.json"))
        path = path.with_name("pgd-bpda-eot2.json")
    with pytest.raises(ResultError, match=str(path)):
        board(root)


def test_bad_manifest_file_raises_naming_the_file(tmp_path):
    root = _copy(tmp_path)
    path = root / DS / "jpeg" / "manifest.json"
    path.write_text("[1, 2")
    with pytest.raises(ResultError, match=str(path)):
        board(root)


def test_missing_results_folder_raises(tmp_path):
    with pytest.raises(ResultError, match="not found"):
        board(tmp_path / "nope")


def test_iter_results_skips_manifest_json():
    names = {p.name for p, _ in iter_results(FIXTURES / "results")}
    assert "manifest.json" not in names and "pgd.json" in names


def test_old_schema_fixtures_still_load():
    old = board(FIXTURES / "results-v1")
    assert len(old.runs) == 68
    table = agg.leaderboard(old).set_index(["dataset", "threat", "defense"])
    assert table.loc[(DS, "linf-0.031", "jpeg")].robust_accuracy == pytest.approx(0.1)
    assert table.loc[(DS, "linf-0.031", "madry")]["rank"] == 1
    assert table.loc[(DS, "l2-0.005", "smoothing")].certified_accuracy == pytest.approx(0.5)


def test_registry_catalog_and_no_defense_import():
    code = ("import sys; from leaderboard import aggregate as a; from attacks.registry import attack_ids; "
            "c = a.attack_catalog(); assert list(c) == attack_ids(), c; "
            "assert all(isinstance(v['params'], dict) and v['summary'] for v in c.values()); "
            "import leaderboard.site; "
            "bad = [m for m in sys.modules if m == 'defenses' or m.startswith('defenses.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
