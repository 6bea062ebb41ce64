"""Manifest validation: strict types, `file: field: reason` errors, untrusted weights."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gauntlet.benchmark.cli import main
from gauntlet.benchmark.manifest import ManifestError, json_schema, parse_manifest
from gauntlet.benchmark.registry import check_factory, manifest_paths, validate


def _edit(folder: Path, **changes) -> Path:
    path = folder / "manifest.yaml"
    data = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        if value is ...:
            node.pop(leaf)
        else:
            node[leaf] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_committed_submissions_validate():
    root = Path(__file__).resolve().parent.parent
    subs, problems = validate(manifest_paths([root / "submissions"]))
    assert problems == []
    assert "standard-cnn-mnist" in {s.id for s in subs}


def test_fixture_submissions_validate(submissions):
    subs, problems = validate(manifest_paths([submissions]))
    assert problems == [] and {s.id for s in subs} == {"dummy-linear", "dummy-quantized"}


@pytest.mark.parametrize("change, field, reason", [
    ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
    ({"schema": 2}, "schema", "Input should be 1"),
    ({"id": "Bad_Id"}, "id", "String should match pattern"),
    ({"dataset": "mnist-embeded"}, "dataset", "did you mean 'mnist-embedded'"),
    ({"model.factory": "defenses.models:SmallCN"}, "model.factory", "did you mean defenses.models:SmallCNN"),
    ({"model.factory": "no_such_module:X"}, "model.factory", "not found"),
    ({"model.sha256": "ab" * 32}, "model.weights", "manifest says"),
    ({"model.weights": "../dummy-quantized/weights.pt"}, "model.weights", "leaves the submission folder"),
    ({"model.weights": "/etc/passwd"}, "model.weights", "leaves the submission folder"),
    ({"claims": [{"threat": "linf-0.3", "accuracy": 1.5, "source": "x"}]}, "claims[0].accuracy", "less than or equal to 1"),
    ({"properties": {"randomized": "yes"}}, "properties.randomized", "valid boolean"),
    ({"name": ...}, "name", "Field required"),
    ({"id": "other-name"}, "id", "must equal the folder name"),
])
def test_problems_name_file_field_and_reason(submissions, change, field, reason):
    folder = submissions / "dummy-linear"
    path = _edit(folder, **change)
    _, problems = validate([path])
    assert problems, "the change must be reported"
    assert any(p.startswith(f"{path}: {field}: ") and reason in p for p in problems), problems


def test_weights_that_are_not_a_state_dict_are_refused(submissions):
    folder = submissions / "dummy-linear"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "weights.pt").write_bytes(pickle.dumps(Evil()))
    import hashlib

    digest = hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()
    path = _edit(folder, **{"model.sha256": digest})
    _, problems = validate([path])
    assert any("weights_only=True" in p for p in problems), problems


def test_local_factory_module_is_found_without_importing_it(submissions):
    folder = submissions / "dummy-linear"
    (folder / "own.py").write_text("raise RuntimeError('must not be imported by validate')\nclass Mine: pass\n")
    path = _edit(folder, **{"defense": {"steps": [{"factory": "own:Mine"}]}})
    assert validate([path])[1] == []
    assert "did you mean own:Mine" in check_factory("own:Mnie", folder)


def test_cli_validate_exit_codes(submissions, capsys):
    assert main(["validate", str(submissions)]) == 0
    _edit(submissions / "dummy-linear", extra_key=1)
    assert main(["validate", str(submissions)]) == 2
    err = capsys.readouterr().err
    assert "dummy-linear/manifest.yaml: extra_key: Extra inputs are not permitted" in err
    assert "Traceback" not in err


def test_json_schema_is_published():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert {"schema", "id", "name", "dataset", "model"} <= set(schema["required"])


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False),
                         st.text(max_size=12))
yaml_values = st.recursive(yaml_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                             st.dictionaries(st.text(max_size=8), c, max_size=3)),
                           max_leaves=8)
keys = st.sampled_from(["schema", "id", "name", "paper", "authors", "dataset", "model", "defense", "properties",
                        "claims", "certify", "train", "attack_overrides", "notes", "bogus"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.dictionaries(keys, yaml_values, min_size=1, max_size=4), raw=st.booleans(),
       text=st.text(max_size=60))
def test_malformed_manifests_give_clear_errors_never_tracebacks(tmp_path, capsys, mutations, raw, text):
    folder = tmp_path / "dummy-linear"
    folder.mkdir(exist_ok=True)
    path = folder / "manifest.yaml"
    if raw:
        path.write_text(text, encoding="utf-8")
    else:
        base = {"schema": 1, "id": "dummy-linear", "name": "x", "dataset": "mnist-embedded",
                "model": {"factory": "defenses.models:LinearClassifier"}}
        base.update(mutations)
        path.write_text(yaml.safe_dump(base), encoding="utf-8")
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code in (0, 2)
    assert "Traceback" not in err
    if code == 2:
        for line in err.strip().splitlines():
            assert line.startswith(f"error: {path}: "), line


def test_parse_manifest_reports_yaml_errors(tmp_path):
    p = tmp_path / "manifest.yaml"
    p.write_text("id: [unclosed\n")
    with pytest.raises(ManifestError) as e:
        parse_manifest(p)
    assert e.value.problems[0].startswith(f"{p}: (yaml): ")
