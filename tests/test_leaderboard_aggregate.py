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
    assert list(linf.defense) == ["madry", "detector", "smoothing", "jpeg", "undefended"]
    assert list(linf["rank"]) == [1, 2, 3, 4, 5]
    assert list(linf.robust_accuracy) == pytest.approx([0.8, 0.5, 0.43, 0.1, 0.0])
    l2 = table[(table.dataset == DS) & (table.threat == "l2-0.005")]
    assert list(l2.defense)[-1] == "detector" and l2["rank"].isna().iloc[-1]
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
    curve = agg.sweep_curve(fixture_board, DS, "madry", "linf")
    assert list(curve.eps) == [0.0, 0.031, 0.1, 0.3]
    assert list(curve.worst_case) == pytest.approx([1.0, 0.8, 0.9, 0.9])
    assert list(curve.attacks) == [2, 5, 2, 2]
    assert list(curve.pgd) == pytest.approx([1.0, 0.8, 0.9, 0.9])
    # The unbounded run (linf-inf) is not a point of the curve.
    undefended = agg.sweep_curve(fixture_board, DS, "undefended", "linf")
    assert list(undefended.eps) == [0.0, 0.01, 0.031, 0.1, 0.3]
    assert agg.worst_case(fixture_board, DS, "undefended", "linf-inf").accuracy == 0.0


def test_attack_table_and_metadata(fixture_board):
    table = agg.attack_table(fixture_board, DS, "jpeg", "linf-0.031")
    assert list(table.attack) == ["fgsm", "pgd", "pgd-bpda", "pgd-eot", "pgd-bpda-eot"]
    assert table.set_index("attack").loc["pgd-bpda", "robust_accuracy"] == pytest.approx(0.2)
    meta = agg.run_metadata(fixture_board, DS, "jpeg")
    assert meta["files"] == 11 and meta["commit"] == ["0123456789abcdef0123456789abcdef01234567"]
    assert meta["wall_seconds"] == pytest.approx(5 * 12.0 + 4 * 1.5)


def test_manifest_facts(fixture_board):
    assert fixture_board.manifests[(DS, "jpeg")]["paper"]["venue"] == "ICLR 2018"
    # No manifest.json: the name comes from the result files.
    assert fixture_board.manifests[(DS, "detector")] == {"id": "detector", "name": "Detector with rejection"}


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
