"""Aggregation of result files: worst case and intervals, ranking and overlaps, claims, naive
baseline by trait, abstention, flags, missing attacks, errors, old schemas."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gauntlet.benchmark.intervals import accuracy_interval, clopper_pearson
from gauntlet.benchmark.results import ResultError, iter_results
from gauntlet.leaderboard import aggregate as agg
from gauntlet.leaderboard import details

FIXTURES = Path(__file__).parent / "fixtures"
DS = "mnist-embedded"
CATALOG = {a: {"summary": a, "params": {}, "gradient_free": False, "needs_reparameterization": False,
               "traits": {"naive_baseline": a == "pgd"}}
           for a in ("fgsm", "pgd", "pgd-bpda", "pgd-eot", "pgd-bpda-eot", "square")}
CATALOG["reparam"] = {"summary": "reparam", "params": {}, "gradient_free": False, "needs_reparameterization": True,
                      "traits": {"adaptive": True}}
NAIVE = {"naive_baseline": True}
BLIND = {"naive_baseline": True, "needs_rejection": True}
ADAPTIVE = {"adaptive": True}


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
          clean: list[float] | None = None, worst: list[int] | None = None, indices: list[int] | None = None,
          **schema2) -> Path:
    """An attack result with explicit per-example arrays (any length); ``schema2``:
    ``traits``, ``facts``, ``readings`` (a schema-2 record)."""
    n = len(robust)
    clean = clean or [1.0] * n
    gen.attack(root, DS, defense, defense, threat, attack, clean, robust, worst, **schema2)
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


def test_worst_case_intervals(tmp_path):
    write(tmp_path, "d", "fgsm", [1] * 9 + [0], clean=[1] * 9 + [0])
    write(tmp_path, "d", "pgd", [1] * 7 + [0] * 3, clean=[1] * 9 + [0])
    wc = agg.worst_case(board(tmp_path), DS, "d", "linf-0.031")
    assert wc.accuracy == pytest.approx(0.7) and wc.accuracy_ci == pytest.approx(clopper_pearson(7, 10))
    assert wc.worst_of_draws_ci == pytest.approx(clopper_pearson(7, 10))
    assert wc.clean_ci == pytest.approx(clopper_pearson(9, 10))
    assert wc.per_attack_ci["fgsm"] == pytest.approx(clopper_pearson(9, 10))
    assert wc.per_attack_ci["pgd"] == pytest.approx(clopper_pearson(7, 10))
    assert wc.strongest == "pgd" and wc.strongest_ci == wc.per_attack_ci["pgd"]
    assert wc.naive == "pgd" and wc.naive_ci == wc.per_attack_ci["pgd"] and not wc.naive_blind


def test_worst_case_interval_of_fractional_scores(tmp_path):
    write(tmp_path, "d", "pgd", [0.5, 1.0, 0.2, 0.9], worst=[0, 1, 0, 0])
    write(tmp_path, "d", "pgd-eot", [1.0, 0.3, 0.4, 0.9], worst=[1, 0, 0, 0])
    wc = agg.worst_case(board(tmp_path), DS, "d", "linf-0.031")
    # Per-example minima 0.5, 0.3, 0.2, 0.9 (sum 1.9): lower bound at 1 of 4, upper at 2 of 4.
    assert wc.accuracy_ci == pytest.approx((clopper_pearson(1, 4)[0], clopper_pearson(2, 4)[1]))
    assert wc.worst_of_draws_ci == pytest.approx(clopper_pearson(0, 4))


def test_interval_columns_in_the_table(fixture_board):
    table = agg.leaderboard(fixture_board)
    for name in ("clean_accuracy", "robust_accuracy", "robust_accuracy_worst_of_draws", "naive_accuracy",
                 "strongest_accuracy", "certified_accuracy", "claim_measured"):
        assert {f"{name}_ci_low", f"{name}_ci_high"} <= set(table.columns), name
    assert "pgd_accuracy" not in table.columns
    row = table.set_index(["dataset", "threat", "defense"]).loc[(DS, "linf-0.031", "jpeg")]
    assert (row.robust_accuracy_ci_low, row.robust_accuracy_ci_high) == pytest.approx(clopper_pearson(1, 10))
    assert (row.clean_accuracy_ci_low, row.clean_accuracy_ci_high) == pytest.approx(clopper_pearson(10, 10))
    assert row.naive_attack == "pgd" and row.naive_accuracy == pytest.approx(0.8)
    assert (row.naive_accuracy_ci_low, row.naive_accuracy_ci_high) == pytest.approx(clopper_pearson(8, 10))


def test_overlapping_neighbours_are_marked_and_far_apart_ones_are_not(tmp_path):
    n = 40
    write(tmp_path, "hi", "pgd", [1] * n)               # [0.912, 1]
    write(tmp_path, "lo1", "pgd", [1] + [0] * (n - 1))  # [0.001, 0.132]
    write(tmp_path, "lo2", "pgd", [0] * n)              # [0, 0.088]
    write(tmp_path, "bad", "fgsm", [0] * n)
    error_file(tmp_path, "bad", "pgd")  # incomplete: unranked, never marked
    linf = agg.leaderboard(board(tmp_path)).query("threat == 'linf-0.031'")
    assert list(linf.defense) == ["hi", "lo1", "lo2", "bad"]
    assert list(linf.overlaps_next) == [False, True, False, False]
    assert agg.OVERLAP_TOOLTIP == "95% intervals overlap: the order of these rows is not significant"


def test_fixture_overlaps(fixture_board):
    linf = agg.leaderboard(fixture_board).query("dataset == @DS and threat == 'linf-0.031'").set_index("defense")
    # Ten examples each: madry's 0.8 [0.444, 0.975] overlaps the detector's 0.5 [0.187, 0.813].
    assert linf.loc["madry", "overlaps_next"] and linf.loc["jpeg", "overlaps_next"]
    assert not linf.loc["undefended", "overlaps_next"]  # the last ranked row
    assert not linf.loc["fragile", "overlaps_next"] and not linf.loc["unbuildable", "overlaps_next"]


# -- naive baseline by trait, abstention ------------------------------------------------------------

def test_naive_baseline_of_a_detector_is_the_rejection_blind_record_by_trait(tmp_path):
    rej = {"rejects": True, "abstains": False, "randomized": False, "differentiable": True}
    win = [1.0] * 6 + [0.0] * 4
    write(tmp_path, "det", "fgsm", [1.0] * 8 + [0.0] * 2, traits={}, facts=rej)
    write(tmp_path, "det", "pgd", [1.0] * 7 + [0.0] * 3, traits=NAIVE, facts=rej)
    write(tmp_path, "det", "pgd-blind", [1.0] * 9 + [0.0], traits=BLIND, facts=rej)
    write(tmp_path, "det", "pgd-bpda", win, traits=ADAPTIVE, facts=rej)
    b = board(tmp_path)
    wc = agg.worst_case(b, DS, "det", "linf-0.031")
    assert wc.naive == "pgd-blind" and wc.naive_blind and wc.naive_accuracy == pytest.approx(0.9)
    row = agg.leaderboard(b).set_index("threat").loc["linf-0.031"]
    assert row.naive_attack == "pgd-blind" and row.naive_blind and row.naive_accuracy == pytest.approx(0.9)
    table = details.attack_table(b, DS, "det", "linf-0.031").set_index("attack")
    assert table.loc["pgd-blind", "naive"] and table.loc["pgd-blind", "blind"] and not table.loc["pgd", "naive"]
    # The trait decides, not the id: a renamed baseline is found, a "pgd" without the trait is not.
    write(tmp_path, "other", "pgd", [1.0] * 10, traits=ADAPTIVE)
    write(tmp_path, "other", "plain-gradient", [1.0] * 5 + [0.0] * 5, traits=NAIVE)
    assert agg.worst_case(board(tmp_path), DS, "other", "linf-0.031").naive == "plain-gradient"


def test_naive_baseline_of_old_records_comes_from_the_catalog(tmp_path):
    write(tmp_path, "d", "fgsm", [1, 1, 0, 0])
    write(tmp_path, "d", "pgd", [1, 0, 0, 0])
    assert agg.worst_case(board(tmp_path), DS, "d", "linf-0.031").naive == "pgd"
    # No traits recorded and none in the catalog: no naive baseline is claimed.
    assert agg.worst_case(board(tmp_path, catalog={}), DS, "d", "linf-0.031").naive is None
    from gauntlet.benchmark.catalog import attack_catalog

    real = attack_catalog()
    assert real["pgd"]["traits"]["naive_baseline"] and real["pgd-blind"]["traits"]["needs_rejection"]
    assert not real["fgsm"]["traits"]["naive_baseline"]


def test_abstaining_defense_shows_the_other_reading_beside_the_headline(tmp_path):
    facts = {"rejects": True, "abstains": True, "randomized": True, "differentiable": True}
    # Headline (abstention = error) is robust_correct; the other figure counts abstention as a win.
    as_error = [1.0, 1.0, 0.0, 0.0]
    as_win = [1.0, 1.0, 1.0, 0.0]
    write(tmp_path, "s", "pgd", as_error, traits=NAIVE, facts=facts, readings=(as_win, as_error))
    write(tmp_path, "s", "fgsm", [1.0, 1.0, 1.0, 0.0], traits={}, facts=facts,
          readings=([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]))
    b = board(tmp_path)
    assert agg.abstains(b, DS, "s") is True
    wc = agg.worst_case(b, DS, "s", "linf-0.031")
    assert wc.accuracy == 0.5 and wc.other.rejection == "win" and wc.other.accuracy == 0.75
    assert wc.other.ci == pytest.approx(clopper_pearson(3, 4))
    table = details.attack_table(b, DS, "s", "linf-0.031").set_index("attack")
    assert table.loc["pgd", "robust_accuracy_other"] == 0.75 and table.loc["pgd", "other_rejection"] == "win"
    # A detector: the headline counts a rejection as a win; the other figure as an error.
    det = {**facts, "abstains": False}
    write(tmp_path, "det", "pgd", as_win, traits=NAIVE, facts=det, readings=(as_win, as_error))
    wc = agg.worst_case(board(tmp_path), DS, "det", "linf-0.031")
    assert wc.accuracy == 0.75 and wc.other.rejection == "error" and wc.other.accuracy == 0.5
    # Old records: no second reading, nothing beside the headline.
    write(tmp_path, "old", "pgd", as_win)
    assert agg.worst_case(board(tmp_path), DS, "old", "linf-0.031").other is None


# -- claims ----------------------------------------------------------------------------------------

def test_claim_verdicts_in_the_fixture_table(fixture_board):
    table = agg.leaderboard(fixture_board).set_index(["dataset", "threat", "defense"])
    jpeg = table.loc[(DS, "linf-0.031", "jpeg")]
    # 0.75 lies above the measured 0.1's interval [0.003, 0.445]: not reproduced.
    assert jpeg.claim_gap == pytest.approx(0.75 - 0.1) and jpeg.not_reproduced
    assert jpeg.claim_verdict == "not reproduced" and jpeg.claim_judged
    assert (jpeg.claim_measured_ci_low, jpeg.claim_measured_ci_high) == pytest.approx(clopper_pearson(1, 10))
    madry = table.loc[(DS, "linf-0.031", "madry")]  # claim at linf-0.3, measured by the sweep
    assert madry.claim_threat == "linf-0.3"
    assert madry.claim_measured == pytest.approx(0.9)
    assert madry.claim_gap == pytest.approx(-0.01) and not madry.not_reproduced
    assert madry.claim_verdict == "consistent"
    smoothing = table.loc[(DS, "l2-0.005", "smoothing")]
    # Made on CIFAR-10: context, never judged (the gap stays as information).
    assert smoothing.claim_dataset == "cifar10" and not smoothing.claim_judged
    assert smoothing.claim_verdict == "context" and not smoothing.not_reproduced
    assert smoothing.claim_gap == pytest.approx(0.61 - 0.62)
    assert math.isnan(table.loc[(DS, "linf-0.031", "undefended")].claim_gap)
    assert not hasattr(agg, "GAP_TOLERANCE") and not hasattr(agg, "NAIVE_ATTACK")


def test_claim_is_judged_against_the_measured_interval(tmp_path):
    write(tmp_path, "d", "pgd", [1] * 7 + [0] * 3)  # measured 0.7, interval [0.348, 0.933]
    b = board(tmp_path)
    low, high = clopper_pearson(7, 10)

    def judge(accuracy: float, **claim) -> dict:
        return agg.claim_gap(b, DS, "d", {"threat": "linf-0.031", "accuracy": accuracy, "source": "x", **claim})

    # 20 points above the measurement but inside its interval: consistent (a fixed
    # 5-point tolerance would have called it not reproduced).
    inside = judge(0.9)
    assert inside["verdict"] == "consistent" and inside["consistent"] and not inside["not_reproduced"]
    assert inside["gap"] == pytest.approx(0.2) and inside["measured_ci"] == pytest.approx((low, high))
    above = judge(0.95)
    assert above["verdict"] == "not reproduced" and above["not_reproduced"] and 0.95 > high
    assert judge(round(high, 12))["verdict"] == "consistent"  # on the bound: inside
    assert judge(0.2)["verdict"] == "consistent"  # below the interval: the defense does better than claimed
    unmeasured = judge(0.9, threat="linf-0.3")
    assert unmeasured["measured"] is None and unmeasured["verdict"] == "not measured"
    assert not unmeasured["not_reproduced"]


def test_claims_on_another_dataset_or_model_are_context_not_judged(tmp_path):
    write(tmp_path, "d", "pgd", [1] * 7 + [0] * 3)
    b = board(tmp_path)
    other_ds = agg.claim_gap(b, DS, "d", {"threat": "linf-0.031", "accuracy": 0.99, "source": "x",
                                          "dataset": "cifar10"})
    other_model = agg.claim_gap(b, DS, "d", {"threat": "linf-0.031", "accuracy": 0.99, "source": "x",
                                             "same_model": False})
    same = agg.claim_gap(b, DS, "d", {"threat": "linf-0.031", "accuracy": 0.99, "source": "x", "dataset": DS,
                                      "same_model": True})
    for c, reason in ((other_ds, "claim on cifar10"), (other_model, "another model")):
        assert c["verdict"] == "context" and not c["judged"] and c["context"] == [reason]
        assert not c["not_reproduced"] and not c["consistent"]
        assert c["gap"] == pytest.approx(0.29)  # kept as information
    assert same["judged"] and same["verdict"] == "not reproduced"
    # Old manifests have no same_model: the claim is about the submitted model.
    assert agg.claim_gap(b, DS, "d", {"threat": "linf-0.031", "accuracy": 0.99, "source": "x"})["judged"]
    # In the table: a same_model false claim is not judged.
    gen.manifest(tmp_path, DS, {"id": "d", "name": "d", "claims": [
        {"threat": "linf-0.031", "accuracy": 0.99, "source": "T1", "dataset": None, "same_model": False}]})
    row = agg.leaderboard(board(tmp_path)).set_index("threat").loc["linf-0.031"]
    assert not row.claim_same_model
    assert row.claim_verdict == "context" and not row.not_reproduced and not row.claim_judged


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
    # A claim about another model comes after one about the submitted model.
    other_model = {"threat": "linf-0.031", "accuracy": 0.5, "source": "e", "same_model": False}
    assert agg.pick_claim({"claims": [other_model, claims[3]]}, DS, "linf-0.031")["source"] == "d"


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


def test_certified_accuracy_and_its_interval(fixture_board):
    cert = agg.certified(fixture_board, DS, "smoothing", "l2-0.005")
    assert (cert.accuracy, cert.method) == (0.5, "randomized-smoothing")
    assert cert.ci == pytest.approx(clopper_pearson(5, 10))  # 0/1 outcomes over the 10 certified examples
    assert agg.certified(fixture_board, DS, "jpeg", "l2-0.005") is None
    table = agg.leaderboard(fixture_board).set_index(["dataset", "threat", "defense"])
    row = table.loc[(DS, "l2-0.005", "smoothing")]
    assert (row.certified_accuracy_ci_low, row.certified_accuracy_ci_high) == pytest.approx(clopper_pearson(5, 10))


def test_certified_curve_intervals_come_from_the_per_example_arrays(fixture_board):
    (run,) = fixture_board.select("certify", DS, "smoothing")
    curve = agg.certified_curve(run.record).set_index("radius")
    # radius ≥ 0.3 and correct: examples 0 (0.9), 1 (0.5), 2 (0.3), 8 (0.6): 4 of 10.
    assert curve.loc[0.3, "accuracy"] == pytest.approx(0.4)
    assert (curve.loc[0.3, "ci_low"], curve.loc[0.3, "ci_high"]) == pytest.approx(clopper_pearson(4, 10))
    assert curve.loc[0.0, "accuracy"] == pytest.approx(0.8)
    rec = {**run.record, "per_example": {}}  # no arrays: the recorded curve, no intervals
    bare = agg.certified_curve(rec)
    assert list(bare.accuracy) == run.record["summary"]["curve"]["accuracy"] and bare.ci_low.isna().all()


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
    assert list(curve.naive) == pytest.approx([1.0, 0.8, 0.9, 0.9])
    assert list(curve.naive_attack) == ["pgd"] * 4  # madry's ε = 0 is a recorded run
    # Every point has its interval.
    expected = [clopper_pearson(k, 10) for k in (10, 8, 9, 9)]
    assert list(curve.worst_case_ci_low) == pytest.approx([e[0] for e in expected])
    assert list(curve.worst_case_ci_high) == pytest.approx([e[1] for e in expected])
    assert (curve.naive_ci_low[1], curve.naive_ci_high[1]) == pytest.approx(clopper_pearson(8, 10))
    # The unbounded run (linf-inf) is not a point of the curve.
    undefended = details.sweep_curve(fixture_board, DS, "undefended", "linf")
    assert list(undefended.eps) == [0.0, 0.01, 0.031, 0.1, 0.3]
    assert agg.worst_case(fixture_board, DS, "undefended", "linf-inf").accuracy == 0.0


def test_attack_table_and_metadata(fixture_board):
    table = details.attack_table(fixture_board, DS, "jpeg", "linf-0.031")
    assert list(table.attack) == ["fgsm", "pgd", "pgd-bpda", "pgd-eot", "pgd-bpda-eot"]
    row = table.set_index("attack").loc["pgd-bpda"]
    assert row.robust_accuracy == pytest.approx(0.2)
    assert (row.robust_accuracy_ci_low, row.robust_accuracy_ci_high) == pytest.approx(clopper_pearson(2, 10))
    assert (row.clean_accuracy_ci_low, row.clean_accuracy_ci_high) == pytest.approx(clopper_pearson(10, 10))
    assert list(table.naive) == [False, True, False, False, False]  # pgd: the naive baseline by trait
    smoothing = details.attack_table(fixture_board, DS, "smoothing", "linf-0.031").set_index("attack")
    scores = json.loads((FIXTURES / "results" / DS / "smoothing" / "linf-0.031" / "pgd.json").read_text())
    assert (smoothing.loc["pgd", "robust_accuracy_ci_low"], smoothing.loc["pgd", "robust_accuracy_ci_high"]) == \
        pytest.approx(accuracy_interval(scores["per_example"]["robust_correct"]))  # fractional scores
    detector = details.attack_table(fixture_board, DS, "detector", "linf-0.031").set_index("attack")
    assert detector.loc["pgd", "adv_rejection_rate_ci_high"] == pytest.approx(clopper_pearson(3, 10)[1])
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
    """The orchestrator's own error records (gauntlet.benchmark.error_records), for an attack and a
    build failure."""
    from gauntlet.benchmark.error_records import error_job_config, error_record
    from gauntlet.benchmark.results import write_result
    from gauntlet.benchmark.isolation import JobOutcome
    from gauntlet.benchmark.registry import load_submission
    from gauntlet.benchmark.runner import RunConfig

    sub = load_submission(FIXTURES / "submissions" / "dummy-linear" / "manifest.yaml")
    cfg = RunConfig(submissions_dir=FIXTURES / "submissions", results_dir=tmp_path, n_examples=3)
    out = JobOutcome(False, None, "no result within the wall-clock limit of 5 s", "timeout", 5.0)
    config = error_job_config(cfg, sub, "attack", attack_id="pgd", threat_id="linf-0.031", timeout_s=5, memory_mb=64)
    write_result(tmp_path, error_record(cfg, sub, f"{DS}/{sub.id}/linf-0.031/pgd", out, config, "cpu", [0, 1, 2]))
    boom = JobOutcome(False, None, "ImportError: nope", "exception", 0.5, "Traceback ...\nImportError: nope\n")
    config = error_job_config(cfg, sub, "prepare", timeout_s=5, memory_mb=64)
    write_result(tmp_path, error_record(cfg, sub, f"{DS}/{sub.id}/l2-0.005/fgsm", boom, config, "cpu", [0, 1, 2]))
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
    from gauntlet.benchmark.profiles import PROFILES

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


@pytest.mark.parametrize("folder", ["results-v1", "results"])
def test_old_schema_fixtures_still_load(folder):
    """Both committed folders are schema 1: they must keep loading, ranking and getting
    intervals, naive baselines and verdicts computed from their per-example arrays."""
    from gauntlet.benchmark.catalog import fallback_catalog

    # results-v1 predates attacks.json: the registry's catalog, as `gauntlet leaderboard` supplies
    old = agg.load_board(FIXTURES / folder, catalog=fallback_catalog(FIXTURES / folder))
    assert {r.record["schema_version"] for r in old.runs} == {1}
    assert len(old.runs) == (68 if folder == "results-v1" else 90)
    table = agg.leaderboard(old).set_index(["dataset", "threat", "defense"])
    jpeg = table.loc[(DS, "linf-0.031", "jpeg")]
    assert jpeg.robust_accuracy == pytest.approx(0.1)
    assert (jpeg.robust_accuracy_ci_low, jpeg.robust_accuracy_ci_high) == pytest.approx(clopper_pearson(1, 10))
    assert jpeg.naive_attack == "pgd" and jpeg.naive_accuracy == pytest.approx(0.8)
    assert jpeg.claim_verdict == "not reproduced"
    assert table.loc[(DS, "linf-0.031", "madry")]["rank"] == 1
    assert table.loc[(DS, "l2-0.005", "smoothing")].certified_accuracy == pytest.approx(0.5)
    assert table.loc[(DS, "l2-0.005", "smoothing")].claim_verdict == "context"


def test_registry_catalog_and_no_defense_or_attack_import(tmp_path):
    """The runner's attacks.json holds the registry in order; the leaderboard reads it (and
    renders a site) without importing a defense or an attack module."""
    from gauntlet.attacks.registry import attack_ids
    from gauntlet.benchmark.catalog import write_catalog

    write_catalog(tmp_path)
    write(tmp_path, "d", "pgd", [1, 0, 0, 0])
    code = ("import sys; from leaderboard import aggregate as a; "
            f"c = a.load_board({str(tmp_path)!r}).catalog; print(','.join(c)); "
            "assert all(isinstance(v['params'], dict) and v['summary'] for v in c.values()); "
            "import gauntlet.leaderboard.site; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('defenses', 'attacks')]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent,
                         capture_output=True, text=True)
    assert out.stdout.strip().split(",") == attack_ids()


def test_sweep_curve_clean_point_has_its_interval(tmp_path):
    write(tmp_path, "d", "pgd", [1] * 6 + [0] * 4, clean=[1] * 9 + [0])
    write(tmp_path, "d", "pgd", [1] * 2 + [0] * 8, clean=[1] * 9 + [0], threat="linf-0.1")
    curve = details.sweep_curve(board(tmp_path), DS, "d", "linf").set_index("threat")
    assert curve.loc["linf-0", "worst_case"] == pytest.approx(0.9) and pd_isna(curve.loc["linf-0", "naive_attack"])
    assert (curve.loc["linf-0", "worst_case_ci_low"], curve.loc["linf-0", "naive_ci_high"]) == pytest.approx(
        (clopper_pearson(9, 10)[0], clopper_pearson(9, 10)[1]))
    assert (curve.loc["linf-0.1", "naive_ci_low"], curve.loc["linf-0.1", "naive_ci_high"]) == pytest.approx(
        clopper_pearson(2, 10))
