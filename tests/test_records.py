"""The result-file schema (benchmark/records.py): values, not only structure, on write and
on read, one line naming the file and the field; old files keep loading."""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from gauntlet.benchmark import records
from gauntlet.benchmark.results import ResultError, existing_hash, iter_results, read_result, write_result
from gauntlet.leaderboard.board import ManifestFacts

FIXTURES = Path(__file__).parent / "fixtures"
DS = "mnist-embedded"
PGD = FIXTURES / "results" / DS / "jpeg" / "linf-0.031" / "pgd.json"
CERT = FIXTURES / "results" / DS / "smoothing" / "certify" / "randomized-smoothing.json"
FLAGS = FIXTURES / "results" / DS / "jpeg" / "linf-0.031" / "flags.json"
ERROR = FIXTURES / "results" / DS / "fragile" / "linf-0.031" / "pgd-bpda.json"
#: The values the leaderboard used to coerce or drop: a string, NaN, out of range, ∞, a bool.
HOSTILE = {"string": "1", "nan": float("nan"), "five": 5.0, "negative": -3, "infinity": float("inf"),
           "bool": True}
_PART = re.compile(r'\["([^"]*)"\]|\[(\d+)\]|([^.\[\]]+)')


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def cascade_record() -> dict:
    """The jpeg PGD fixture as a schema-2 cascade record: examples 8 and 9 were broken
    before (attacked false, scores null), the rest attacked."""
    rec = load(PGD)
    rec["schema_version"] = 2
    per = rec["per_example"]
    per["attacked"] = [True] * 8 + [False, False]
    for key in ("robust_correct", "robust_correct_worst", "perturbation_norm", "adv_rejected"):
        per[key][8:] = [None, None]
    per["adv_correct"] = list(per["robust_correct"])
    per["adv_survives"] = list(per["robust_correct"])
    rec["summary"].update(attacked=8, skipped_by_cascade=2, robust_accuracy_ci=[0.44, 0.97],
                          robust_among_attacked=0.8, robust_among_attacked_ci=None,
                          interval={"level": 0.95, "method": "clopper-pearson"})
    return rec


def problem(record: dict) -> str:
    with pytest.raises(ResultError) as e:
        records.validate(record, "some/file.json")
    message = str(e.value)
    assert "\n" not in message and message.startswith("some/file.json: ")
    return message.removeprefix("some/file.json: ")


# -- what passes -------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["results", "results-v1"])
def test_every_fixture_record_and_manifest_passes(folder):
    """Old files (schema 1, frozen in results-v1) keep loading."""
    paths = [p for p, _ in iter_results(FIXTURES / folder)]
    assert len(paths) == (90 if folder == "results" else 68)
    for m in (FIXTURES / folder).rglob("manifest.json"):
        records.check_model(ManifestFacts, load(m), str(m))


def test_a_cascade_record_with_nulls_passes_and_is_returned_as_is():
    rec = cascade_record()
    rec["summary"]["a_future_figure"] = "anything"  # unknown fields pass: forward compatibility
    rec["per_example"]["a_future_array"] = ["x"]
    assert records.validate(rec, "f.json") is rec
    for kind, path in (("certify", CERT), ("flags", FLAGS), ("error", ERROR)):
        assert records.validate(load(path), "f.json")["kind"] == kind


def test_an_unbounded_threat_is_the_string_inf():
    rec = load(FIXTURES / "results" / DS / "undefended" / "linf-inf" / "pgd.json")
    assert rec["threat"]["eps"] == rec["threat"]["raw_radius"] == "inf"
    records.validate(rec, "f.json")
    rec["threat"]["eps"] = "Infinity"
    assert problem(rec).startswith('threat.eps: expected a finite number >= 0 or "inf" (got "Infinity")')


# -- values --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("field", ["summary.robust_accuracy", "summary.clean_accuracy",
                                   "per_example.robust_correct[3]", "per_example.clean_correct[0]",
                                   "per_example.adv_rejected[2]", "per_example.adv_survives[1]",
                                   "summary.robust_accuracy_ci[1]", "summary.interval.level"])
def test_an_accuracy_is_a_finite_number_in_0_1(field, value):
    rec = cascade_record()
    target, key = _locate(rec, field)
    target[key] = value
    assert problem(rec).startswith(f"{field}: ")


@pytest.mark.parametrize("field, value, reason", [
    ('summary.certified_accuracy["l2-0.005"]', "1", "input should be a valid number (got \"1\")"),
    ('summary.certified_accuracy["linf-0.031"]', 5.0, "less than or equal to 1 (got 5.0)"),
    ("summary.curve.accuracy[0]", -0.1, "greater than or equal to 0"),
    ("per_example.radius[0]", -1.0, "greater than or equal to 0"),
    ("per_example.radius[1]", float("inf"), "finite number"),
    ("per_example.correct[2]", 0.5, "valid integer"),
    ("per_example.prediction[0]", "3", "valid integer"),
    ("summary.n", -1, "greater than or equal to 0"),
])
def test_certificate_values(field, value, reason):
    rec = load(CERT)
    target, key = _locate(rec, field)
    target[key] = value
    message = problem(rec)
    assert message.startswith(f"{field}: ") and reason in message


@pytest.mark.parametrize("field, value, reason", [
    ("summary.attacked", -1, "greater than or equal to 0"),
    ("summary.skipped_by_cascade", 1.0, "valid integer"),
    ("draws", 0, "greater than or equal to 1"),
    ("dataset.indices[0]", "0", "valid integer"),
    ("per_example.robust_correct_worst[0]", 0.5, "valid integer"),
    ("per_example.perturbation_norm[0]", -0.5, "greater than or equal to 0"),
    ("per_example.attacked[0]", 1, "valid boolean"),
    ("threat.norm", "l1", "'linf' or 'l2'"),
    ("run_id", 7, "valid string"),
    ("attack.id", None, "valid string"),
    ("defense.randomized", "false", "valid boolean"),
    ("config_hash", "abc", "should match pattern"),
    ("timing.wall_seconds", float("nan"), "finite number"),
])
def test_counts_flags_and_ids(field, value, reason):
    rec = cascade_record()
    target, key = _locate(rec, field)
    target[key] = value
    message = problem(rec)
    assert message.startswith(f"{field}: ") and reason in message


def test_interval_bounds_are_ordered():
    rec = cascade_record()
    rec["summary"]["robust_accuracy_ci"] = [0.9, 0.1]
    assert problem(rec) == "summary.robust_accuracy_ci: interval low 0.9 above high 0.1"


def test_a_missing_field_is_named():
    rec = cascade_record()
    del rec["summary"]["robust_accuracy"]
    assert problem(rec) == "summary.robust_accuracy: missing"


def test_several_problems_are_one_line():
    rec = cascade_record()
    rec["summary"]["robust_accuracy"] = "1"
    rec["summary"]["clean_accuracy"] = 5.0
    assert problem(rec) == 'summary.clean_accuracy: input should be less than or equal to 1 (got 5.0) (and 1 more)'


# -- arrays and nulls -------------------------------------------------------------------------

def test_per_example_arrays_have_one_entry_per_example():
    rec = cascade_record()
    rec["per_example"]["adv_survives"] = rec["per_example"]["adv_survives"][:9]
    assert problem(rec) == "per_example.adv_survives: 9 entries for dataset.n = 10"
    rec = cascade_record()
    rec["dataset"]["indices"] = rec["dataset"]["indices"][:9]
    assert problem(rec) == "dataset.n: 10 but dataset.indices has 9 entries"


def test_a_score_is_null_only_where_the_cascade_skipped_the_example():
    rec = cascade_record()
    rec["per_example"]["robust_correct"][3] = None
    assert problem(rec) == ("per_example.robust_correct[3]: null, but per_example.attacked[3] is true "
                            "(only a skipped example has no score)")
    rec = cascade_record()
    rec["per_example"]["clean_correct"][9] = None  # a clean score is never null
    assert problem(rec).startswith("per_example.clean_correct[9]: input should be a valid number")
    old = load(PGD)  # schema 1: no cascade, no nulls
    old["per_example"]["robust_correct"][0] = None
    assert problem(old).startswith("per_example.robust_correct[0]: null, but no per_example.attacked")


# -- flags, errors, envelope ----------------------------------------------------------------------

def test_flags_and_error_records():
    rec = load(FLAGS)
    rec["flags"][1]["raised"] = "yes"
    assert problem(rec).startswith("flags[1].raised: input should be a valid boolean")
    rec = load(ERROR)
    rec["error"]["kind"] = "gremlins"
    assert problem(rec).startswith("error.kind: input should be 'timeout', 'memory', 'crash' or 'exception'")
    rec = load(ERROR)
    rec["error"]["seconds"] = -1.0
    assert problem(rec).startswith("error.seconds: ")


@pytest.mark.parametrize("version", [True, 3, "2", None])
def test_schema_version_and_kind(version):
    rec = load(PGD)
    rec["schema_version"] = version
    assert problem(rec).startswith("schema_version: ")
    rec = load(PGD)
    rec["kind"] = "attacks"
    assert problem(rec).startswith('kind: unknown kind "attacks"')


def test_nan_in_a_free_form_field_is_named():
    rec = cascade_record()
    rec["info"]["zero_grad_fraction"] = float("nan")
    assert problem(rec) == "info.zero_grad_fraction: not a finite number (NaN or Infinity)"
    assert records.validate(rec, "f.json", deep=False) is rec  # a reader that saw no NaN token


# -- the writer and the reader ---------------------------------------------------------------

def test_write_result_refuses_an_invalid_record_and_writes_nothing(tmp_path):
    rec = cascade_record()
    rec["summary"]["robust_accuracy"] = 1.5
    with pytest.raises(ResultError, match=r"pgd\.json: summary\.robust_accuracy: input should be less than"):
        write_result(tmp_path, rec)
    assert not any(tmp_path.iterdir())  # not even its folder
    rec["summary"]["robust_accuracy"] = 0.8
    path = write_result(tmp_path, rec)
    assert read_result(path) == rec


@pytest.mark.parametrize("token, field", [("NaN", "summary.robust_accuracy"), ("Infinity", "summary.robust_accuracy"),
                                          ("-Infinity", "info.zero_grad_fraction")])
def test_read_result_names_the_field_of_a_raw_nan_or_infinity(tmp_path, token, field):
    rec = load(PGD)
    target, key = _locate(rec, field)
    target[key] = "@@"
    path = tmp_path / "pgd.json"
    path.write_text(json.dumps(rec).replace('"@@"', token))
    with pytest.raises(ResultError) as e:
        read_result(path)
    assert str(e.value).startswith(f"{path}: {field}: ")


def test_an_invalid_existing_file_is_redone(tmp_path):
    rec = load(PGD)
    path = write_result(tmp_path, rec)
    assert existing_hash(tmp_path, rec["run_id"]) == rec["config_hash"]
    bad = copy.deepcopy(rec)
    bad["summary"]["robust_accuracy"] = "0.8"
    path.write_text(json.dumps(bad))
    assert existing_hash(tmp_path, rec["run_id"]) is None


def test_the_ci_summary_names_file_and_field(tmp_path, capsys):
    from gauntlet.benchmark.summary import main, md

    root = tmp_path / "results"
    shutil.copytree(FIXTURES / "results" / DS / "jpeg", root / DS / "jpeg")
    path = root / DS / "jpeg" / "linf-0.031" / "fgsm.json"
    rec = load(path)
    rec["summary"]["robust_accuracy"] = -3
    path.write_text(json.dumps(rec))
    assert main([str(root)]) == 1
    assert md(f"{path}: summary.robust_accuracy: ") in capsys.readouterr().out


# -- manifest.json beside the results --------------------------------------------------------

@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_claimed_accuracy_in_manifest_json_is_checked(value):
    data = load(FIXTURES / "results" / DS / "jpeg" / "manifest.json")
    data["claims"][0]["accuracy"] = value
    with pytest.raises(ResultError) as e:
        records.check_model(ManifestFacts, data, "m.json")
    assert str(e.value).startswith("m.json: claims[0].accuracy: ")


def test_field_paths():
    assert records.field_path(("per_example", "robust_correct", 3)) == "per_example.robust_correct[3]"
    assert records.field_path(("summary", "certified_accuracy", "linf-0.031")) == \
        'summary.certified_accuracy["linf-0.031"]'
    assert records.field_path(()) == "(top level)"


def _locate(rec: dict, field: str) -> tuple[object, object]:
    """(container, key) of a field path as records.field_path writes it."""
    parts = [key if key else int(i) if i else name for key, i, name in _PART.findall(field)]
    target = rec
    for p in parts[:-1]:
        target = target[p]
    return target, parts[-1]
