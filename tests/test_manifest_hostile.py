"""Hostile manifests and submission folders: a manifest names only what may be named.

Each test is a finding of the trust-boundary review (item 4) and fails on the code before
the fix: a factory naming a standard-library callable, a module shadowing a project
package, duplicate YAML keys, validation importing code, symbolic links, resource bombs,
and one bad manifest stopping the others. The fixtures are under
``tests/fixtures/hostile-manifests`` (see its README).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from gauntlet.benchmark.cli import main
from gauntlet.benchmark.config import RunConfig
from gauntlet.benchmark.manifest import MAX_DEPTH, MAX_MANIFEST_BYTES, MAX_TEXT_CHARS, ManifestError, parse_manifest
from gauntlet.benchmark.registry import check_factory, factory_specs, load_submission, manifest_paths, resolve, validate
from tests.test_manifest import _edit

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HOSTILE = FIXTURES / "hostile-manifests"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A writable copy of the hostile manifests."""
    dst = tmp_path / "hostile"
    shutil.copytree(HOSTILE, dst, ignore=shutil.ignore_patterns("README.md"))
    return dst




def _cli(capsys, argv: list[str]) -> tuple[int, list[str]]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, [line for line in err.splitlines() if line.strip()]


# -- factories name the submission's modules or the project's defenses, nothing else -------

def test_stdlib_callables_are_refused_in_every_factory_field(hostile, capsys):
    path = hostile / "stdlib-factories" / "manifest.yaml"
    _, problems = validate([path])
    for field, module in [("model.factory", "subprocess"), ("defense.factory", "os"),
                          ("defense.steps[0].factory", "shutil"), ("train.recipe", "subprocess")]:
        assert any(p.startswith(f"{path}: {field}: module {module!r} is not allowed") for p in problems), problems
    code, lines = _cli(capsys, ["validate", str(path)])
    assert code == 2 and len(lines) == 4 and all(line.startswith(f"error: {path}: ") for line in lines), lines


@pytest.mark.parametrize("factory, reason", [
    ("torchvision.models:resnet18", "is not allowed"),
    ("torch.nn:Linear", "is not allowed"),
    ("builtins:eval", "is not allowed"),
    ("benchmark.cli:main", "is not allowed"),
    ("attacks.pgd:PGD", "is not allowed"),
    ("defenses.nosuch:X", "not found in the project's defenses package"),
    ("defenses.quilting:Path", "imports 'Path' from 'pathlib'"),  # a re-export is not a factory
])
def test_installed_and_project_callables_outside_defenses_are_refused(submissions, factory, reason):
    path = _edit(submissions / "dummy-linear", **{"model.factory": factory})
    _, problems = validate([path])
    assert any(p.startswith(f"{path}: model.factory: ") and reason in p for p in problems), problems


def test_resolve_refuses_what_validation_refuses(submissions):
    """Building a defense checks again: a caller that skipped validation runs nothing."""
    folder = submissions / "dummy-linear"
    for spec in ("subprocess:Popen", "shutil:rmtree", "os:system"):
        with pytest.raises(ValueError, match="is not allowed"):
            resolve(spec, folder, "dummy-linear")
    import gauntlet.defenses.models

    assert resolve("defenses.models:LinearClassifier", folder, "dummy-linear") is gauntlet.defenses.models.LinearClassifier


def test_every_reference_factory_is_in_defenses():
    """The allow-list is the project's defenses package only, because nothing else is used."""
    for path in manifest_paths([ROOT / "submissions"]):
        m = load_submission(path).manifest
        named = [spec.factory for _, spec in factory_specs(m)]
        named += [m.defense.factory] if m.defense and m.defense.factory else []
        named += [m.train.recipe] if m.train else []
        assert all(n.startswith("defenses.") for n in named), (path, named)


# -- a submission module never takes a project, standard-library or installed name ---------

@pytest.mark.parametrize("layout, shadowed", [
    ({"defenses/models.py": "class SmallCNN: pass\n"}, "defenses"),
    ({"defenses/__init__.py": ""}, "defenses"),
    ({"benchmark/registry.py": ""}, "benchmark"),
    ({"attacks.py": ""}, "attacks"),
    ({"leaderboard/site.py": ""}, "leaderboard"),
    ({"torch.py": ""}, "torch"),
    ({"os.py": ""}, "os"),
    ({"yaml.py": ""}, "yaml"),
    ({"json/__init__.py": ""}, "json"),
    ({"numpy.cpython-311-x86_64-linux-gnu.so": ""}, "numpy"),
])
def test_a_module_that_would_shadow_a_package_is_refused(submissions, layout, shadowed):
    folder = submissions / "dummy-linear"
    for rel, text in layout.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    _, problems = validate([folder / "manifest.yaml"])
    top = next(iter(layout)).split("/")[0]
    assert any(p.startswith(f"{folder / 'manifest.yaml'}: (folder): {top}") and "would shadow" in p
               and repr(shadowed) in p for p in problems), problems


def test_a_local_defenses_package_never_replaces_the_projects(submissions):
    folder = submissions / "dummy-linear"
    (folder / "defenses").mkdir()
    (folder / "defenses" / "models.py").write_text("class LinearClassifier:\n    pass\n")
    import gauntlet.defenses.models

    assert resolve("defenses.models:LinearClassifier", folder, "dummy-linear") is gauntlet.defenses.models.LinearClassifier


def test_a_data_folder_with_a_module_like_name_is_not_a_module(submissions):
    folder = submissions / "dummy-linear"
    (folder / "io").mkdir()
    (folder / "io" / "patches.pt").write_bytes(b"")
    (folder / "own.py").write_text("class Mine: pass\n")
    assert validate([folder / "manifest.yaml"])[1] == []


# -- duplicate keys ----------------------------------------------------------------------

def test_duplicate_keys_name_file_key_and_line(hostile):
    path = hostile / "duplicate-keys" / "manifest.yaml"
    with pytest.raises(ManifestError) as e:
        parse_manifest(path)
    assert e.value.problems == [f"{path}: model.factory: duplicate key 'factory' at line 9 (first at line 7); "
                                "YAML would silently keep only the last"]


@pytest.mark.parametrize("text, field", [
    ("id: a\nid: b\n", "id"),
    ("model: {factory: 'defenses.models:SmallCNN', args: {k: 1, k: 2}}\n", "model.args.k"),
    ("claims:\n  - {threat: linf-0.3, threat: l2-1.0}\n", "claims[0].threat"),
    ("properties: {true: 1, yes: 2}\n", "properties.True"),  # both are the boolean true
])
def test_every_duplicate_key_is_an_error(tmp_path, text, field):
    path = tmp_path / "manifest.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as e:
        parse_manifest(path)
    assert any(p.startswith(f"{path}: {field}: duplicate key ") for p in e.value.problems), e.value.problems


# -- validation only reads ---------------------------------------------------------------

def test_validation_imports_nothing_even_with_the_folder_on_sys_path(submissions, monkeypatch):
    """``find_spec("pkg.mod")`` imports ``pkg``: with the submission folder on ``sys.path``
    (the working directory, ``python -m``) the old lookup ran ``pkg/__init__.py``."""
    folder = submissions / "dummy-linear"
    pkg = folder / "gauntlet_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pathlib import Path\nPath(__file__).with_name('RAN').write_text('x')\n")
    (pkg / "mod.py").write_text("class X: pass\n")
    path = _edit(folder, **{"model.factory": "gauntlet_probe_pkg.missing:X"})
    monkeypatch.syspath_prepend(str(folder))
    try:
        _, problems = validate([path])
    finally:
        sys.modules.pop("gauntlet_probe_pkg", None)
    assert not (pkg / "RAN").exists(), "validation executed the submission's package"
    assert any("not found: no gauntlet_probe_pkg/missing.py" in p for p in problems), problems


def test_validation_never_asks_the_import_system(submissions, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"find_spec{args} called during validation")

    monkeypatch.setattr(importlib.util, "find_spec", refuse)
    (submissions / "dummy-linear" / "own.py").write_text("class Mine: pass\n")
    _edit(submissions / "dummy-linear", **{"defense": {"steps": [{"factory": "own:Mine"}]}})
    subs, problems = validate(manifest_paths([submissions, ROOT / "submissions"]), check_weights=False)
    assert problems == [] and len(subs) == 2 + len(list((ROOT / "submissions").glob("*/manifest.yaml")))


# -- symbolic links ----------------------------------------------------------------------

def test_a_symlinked_manifest_is_refused_without_reading_it(submissions, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("password: hunter2 {\n")
    path = submissions / "dummy-linear" / "manifest.yaml"
    path.unlink()
    path.symlink_to(secret)
    code, lines = _cli(capsys, ["validate", str(submissions)])
    assert code == 2
    assert f"error: {path}: (file): is a symbolic link; a manifest must be a regular file inside its submission " \
           "folder" in lines
    assert not any("hunter2" in line for line in lines), lines


def test_a_dangling_symlinked_manifest_is_reported_not_skipped(submissions):
    path = submissions / "dummy-linear" / "manifest.yaml"
    path.unlink()
    path.symlink_to(submissions / "nonexistent")
    subs, problems = validate(manifest_paths([submissions]))
    assert [s.id for s in subs] == ["dummy-quantized"]
    assert problems == [f"{path}: (file): is a symbolic link; a manifest must be a regular file inside its "
                        "submission folder"]


def test_a_symlinked_submission_folder_is_refused(submissions, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (submissions / "dummy-linear").rename(elsewhere)
    (submissions / "dummy-linear").symlink_to(elsewhere)
    _, problems = validate(manifest_paths([submissions]))
    assert problems == [f"{submissions / 'dummy-linear' / 'manifest.yaml'}: (folder): the submission folder is a "
                        f"symbolic link (to {elsewhere})"]


def test_a_manifest_that_is_not_a_regular_file_is_refused(tmp_path):
    folder = tmp_path / "fifo"
    folder.mkdir()
    os.mkfifo(folder / "manifest.yaml")  # reading it would block forever
    _, problems = validate([folder / "manifest.yaml"])
    assert problems == [f"{folder / 'manifest.yaml'}: (file): not a regular file"]


def test_symlinks_that_leave_the_folder_are_refused(submissions, tmp_path):
    folder = submissions / "dummy-linear"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "own.py").write_text("class Mine: pass\n")
    (folder / "own.py").symlink_to(outside / "own.py")
    (folder / "hostname").symlink_to("/etc/hostname")
    path = _edit(folder, **{"defense": {"steps": [{"factory": "own:Mine"}]}})
    _, problems = validate([path])
    assert f"{path}: defense.steps[0].factory: module 'own': own.py is a symbolic link that leaves the " \
           "submission folder" in problems, problems
    assert any(p.startswith(f"{path}: (folder): hostname: a symbolic link to /etc/hostname") for p in problems)
    assert any(p.startswith(f"{path}: (folder): own.py: a symbolic link to ") for p in problems)


def test_symlinks_inside_the_folder_are_fine(submissions):
    folder = submissions / "dummy-linear"
    (folder / "data").mkdir()
    (folder / "weights.pt").rename(folder / "data" / "weights.pt")
    (folder / "weights.pt").symlink_to("data/weights.pt")
    assert validate([folder / "manifest.yaml"])[1] == []


# -- resource bombs ----------------------------------------------------------------------

def test_deep_nesting_is_refused_before_pyyaml_recurses(hostile):
    path = hostile / "nested-bomb" / "manifest.yaml"
    assert path.stat().st_size < 2500
    _, problems = validate([path])
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: model.args.x[0][0]") and \
        problems[0].endswith(f": nested deeper than {MAX_DEPTH} levels (line 7)"), problems


def test_an_alias_bomb_is_refused(hostile):
    path = hostile / "alias-bomb" / "manifest.yaml"
    assert path.stat().st_size < 600
    _, problems = validate([path])
    assert problems == [f"{path}: model.args.a: anchor &a on a mapping or list (line 8); "
                        "anchors are allowed only on plain values"]


def test_aliases_of_plain_values_are_bounded_by_the_size_limit(submissions):
    """A reference manifest repeats one ``reason`` by alias; repeating a long one is refused."""
    path = submissions / "dummy-linear" / "manifest.yaml"
    long = "x" * (MAX_MANIFEST_BYTES // 2)
    path.write_text(path.read_text() + f"notes: &n {long}\n"
                    "attack_overrides: [{attack: pgd, params: {a: *n}, reason: a long enough reason}]\n")
    with pytest.raises(ManifestError) as e:
        parse_manifest(path)
    assert e.value.problems == [f"{path}: attack_overrides[0].params.a: aliases expand the manifest beyond "
                                f"{MAX_MANIFEST_BYTES} characters (line 16)"]


@pytest.mark.parametrize("sparse", [False, True])
def test_a_huge_manifest_is_refused_by_its_size(submissions, sparse):
    path = submissions / "dummy-linear" / "manifest.yaml"
    if sparse:  # a 100 MB file, refused without being read
        with open(path, "ab") as f:
            f.truncate(100 * 2**20)
    else:
        path.write_text(path.read_text() + "notes: " + "x" * MAX_MANIFEST_BYTES + "\n")
    size = path.stat().st_size
    _, problems = validate([path])
    assert problems == [f"{path}: (file): {size} bytes; the limit is {MAX_MANIFEST_BYTES}"]


@pytest.mark.parametrize("change, field", [
    ({"notes": "n" * (MAX_TEXT_CHARS + 1)}, "notes"),
    ({"paper": {"title": "t" * 301}}, "paper.title"),
    ({"authors": ["a" * 301]}, "authors[0]"),
    ({"claims": [{"threat": "linf-0.3", "accuracy": 0.5, "source": "s" * 301}]}, "claims[0].source"),
    ({"attack_overrides": [{"attack": "pgd", "params": {}, "reason": "r" * (MAX_TEXT_CHARS + 1)}]},
     "attack_overrides[0].reason"),
])
def test_free_text_fields_have_length_limits(submissions, change, field):
    path = _edit(submissions / "dummy-linear", **change)
    _, problems = validate([path])
    assert any(p.startswith(f"{path}: {field}: String should have at most ") for p in problems), problems


# -- one bad manifest never stops the others ---------------------------------------------

@pytest.fixture
def mixed(submissions, hostile) -> Path:
    """The two good fixture submissions beside every hostile one, and a manifest whose
    timestamp PyYAML cannot build (a ``ValueError``, not a ``YAMLError``)."""
    for folder in hostile.iterdir():
        shutil.copytree(folder, submissions / folder.name)
    bad = submissions / "bad-date"
    bad.mkdir()
    (bad / "manifest.yaml").write_text("schema: 1\nid: bad-date\nnotes: 2001-13-45\n")
    return submissions


def test_validate_reports_every_bad_manifest_and_keeps_the_good(mixed, capsys):
    subs, problems = validate(manifest_paths([mixed]))
    assert {s.id for s in subs} == {"dummy-linear", "dummy-quantized"}
    bad = {"alias-bomb", "bad-date", "duplicate-keys", "nested-bomb", "stdlib-factories"}
    assert {Path(p.split(": ")[0]).parent.name for p in problems} == bad
    assert f"{mixed / 'bad-date' / 'manifest.yaml'}: (yaml): cannot build a value: ValueError: month must be " \
           "in 1..12" in problems
    code, lines = _cli(capsys, ["validate", str(mixed)])
    assert code == 2 and len(lines) == len(problems)
    assert all(line.startswith(f"error: {mixed}/") for line in lines)


def test_list_shows_the_good_and_marks_the_bad(mixed, capsys):
    assert main(["list", "--submissions", str(mixed)]) == 0
    out = capsys.readouterr().out
    assert "dummy-linear" in out and "dummy-quantized" in out
    assert out.count("(invalid)") == 8  # 1 + 1 + 1 + 1 + 4 (one per stdlib factory)


def test_run_of_a_good_defense_is_not_stopped_by_a_bad_sibling(mixed):
    from gauntlet.benchmark import runner

    subs = runner._requested(RunConfig(submissions_dir=mixed, defenses=("dummy-linear",)))
    assert [s.id for s in subs] == ["dummy-linear"]
    with pytest.raises(ManifestError) as e:  # a run of everything refuses, as before
        runner._requested(RunConfig(submissions_dir=mixed))
    assert len(e.value.problems) == 8


def test_problem_lines_stay_one_line_whatever_the_file_names(submissions, tmp_path, capsys):
    folder = submissions / "dummy-linear"
    (folder / "evil\nname").symlink_to(tmp_path)
    code, lines = _cli(capsys, ["validate", str(folder)])
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f'error: {folder / "manifest.yaml"}: (folder): "evil\\nname": a symbolic link')


def test_the_submission_hash_is_the_manifest_files_hash(submissions):
    import hashlib

    path = submissions / "dummy-linear" / "manifest.yaml"
    assert load_submission(path).manifest_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_check_factory_reads_a_bounded_module(submissions):
    folder = submissions / "dummy-linear"
    (folder / "big.py").write_text("x = 1\n" * 200_000)
    (folder / "binary.py").write_bytes(b"\xff\xfe\x00class X: pass\n")
    assert "the limit is" in check_factory("big:x", folder)
    assert "cannot be read" in check_factory("binary:X", folder)


def test_the_weights_size_limit_is_the_datasets(submissions):
    """8 MiB on MNIST, 16 MiB on CIFAR-10 (a larger input needs larger models and databases)."""
    path = submissions / "dummy-linear" / "manifest.yaml"
    weights = path.parent / "weights.pt"
    with open(weights, "ab") as f:  # sparse: 10 MiB without writing them
        f.truncate(10 * 2**20)
    _, problems = validate([path], check_weights=False)
    assert problems == [f"{path}: model.weights: 'weights.pt' is 10.0 MiB; the limit is 8 MiB"]
    path.write_text(path.read_text().replace("dataset: mnist-embedded", "dataset: cifar10"))
    assert validate([path], check_weights=False)[1] == []
    with open(weights, "ab") as f:
        f.truncate(17 * 2**20)
    assert validate([path], check_weights=False)[1] == [
        f"{path}: model.weights: 'weights.pt' is 17.0 MiB; the limit is 16 MiB"]
