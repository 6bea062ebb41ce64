"""Every bad command-line option exits 2 with one clear line: no traceback, no silent fallback.

Each test calls :func:`gauntlet.benchmark.cli.main` in-process. ``run`` tests that must not start
real work replace ``gauntlet.benchmark.runner.run`` with a stub that fails the test when reached
(:func:`no_run`): every bad option must be refused before it.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gauntlet.benchmark import runner
from gauntlet.benchmark.cli import main
from gauntlet.benchmark.config import ConfigError, RunConfig, RunSummary
from gauntlet.benchmark.threats import get_threat

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SUBMISSIONS = FIXTURES / "submissions"
DEBUG_HINT = "(report this; rerun with GAUNTLET_DEBUG=1 for the traceback)"


def _call(argv: list[str]) -> int:
    """``main(argv)``'s exit code, whether returned or raised (argparse raises SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _one_error(capsys, argv: list[str], needle: str, code: int = 2) -> str:
    """Run ``argv``; assert exit ``code`` and exactly one stderr line, ``error: …needle…``."""
    rc = _call(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_run(monkeypatch):
    """``gauntlet.benchmark.runner.run`` replaced by a stub that fails the test if it is reached."""
    def refuse(cfg, progress=True):
        raise AssertionError(f"the run started despite a bad option: {cfg}")

    monkeypatch.setattr(runner, "run", refuse)


@pytest.fixture
def run_args(tmp_path) -> list[str]:
    """``gauntlet run`` on the fixture submissions, writing only under ``tmp_path``."""
    return ["run", "--submissions", str(SUBMISSIONS), "--results", str(tmp_path / "results"),
            "--site", str(tmp_path / "site"), "--quiet", "--no-sweep", "--no-certify"]


def _unwritable_folder(base: Path) -> Path | None:
    """A folder this process cannot create: inside a read-only folder, or (as root, who
    ignores permissions) under /sys; None when the platform offers neither."""
    if os.geteuid() != 0:
        ro = base / "read-only"
        ro.mkdir(exist_ok=True)
        ro.chmod(0o500)
        candidate = ro / "out"
    else:
        candidate = Path("/sys/gauntlet-test-unwritable")
    try:
        candidate.mkdir()
    except OSError:
        return candidate
    candidate.rmdir()
    return None


@pytest.fixture
def unwritable(tmp_path) -> Path:
    folder = _unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("no folder here refuses to be created")
    yield folder
    if folder.parent != Path("/sys"):
        folder.parent.chmod(0o700)


# -- gauntlet list ---------------------------------------------------------------------------

def test_list_outside_the_repository_names_the_missing_submissions_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # `cd /tmp && gauntlet list`
    _one_error(capsys, ["list"], "--submissions: submissions: no such folder")


def test_list_with_a_nonexistent_submissions_folder(capsys, tmp_path):
    missing = tmp_path / "nonexistent"
    _one_error(capsys, ["list", "--submissions", str(missing)], f"--submissions: {missing}: no such folder")


# -- gauntlet run: every RunConfig field, refused before any work --------------------------

@pytest.mark.parametrize("extra, needle", [
    (["--device", "banana"], "--device: expected auto, cpu, cuda or cuda:N, got 'banana'"),
    (["--device", "cuda:x"], "--device: expected auto, cpu, cuda or cuda:N"),
    (["--n-examples", "-1"], "--n-examples: must be an integer >= 1, got -1"),
    (["--n-examples", "0"], "--n-examples: must be an integer >= 1, got 0"),
    (["--batch-size", "-5"], "--batch-size: must be an integer >= 1, got -5"),
    (["--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    (["--job-memory", "0"], "--job-memory: must be an integer >= 1, got 0"),
    (["--job-timeout", "0"], "--job-timeout: must be a finite number of seconds > 0"),
    (["--job-timeout", "-3"], "--job-timeout: must be a finite number of seconds > 0"),
    (["--job-timeout", "nan"], "--job-timeout: must be a finite number of seconds > 0, got nan"),
    (["--job-timeout", "inf"], "--job-timeout: must be a finite number of seconds > 0, got inf"),
    (["--workers", "0"], "--workers: must be an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed: must be an integer from 0 to 2**63 - 1, got -1"),
    (["--profile", "banana"], "--profile: unknown profile 'banana'; known: full, quick"),
    (["--threat", "linf-1e999"], "--threat: threat 'linf-1e999': eps '1e999' is not a finite number"),
    (["--threat", "linf-nan"], "--threat: threat 'linf-nan': eps 'nan' is not a finite number"),
    (["--threat", "l2-Infinity"], "--threat: threat 'l2-Infinity': eps 'Infinity' is not a finite number"),
    (["--threat", "linf--1"], "--threat: threat 'linf--1': eps must be >= 0, got -1"),
    (["--threat", "l3-1"], "--threat: threat 'l3-1': expected '<linf|l2>-<eps>'"),
    (["--attack", "nosuch"], "--attack: unknown attack 'nosuch'"),
    (["--no-isolation", "--executor", "ray"], "--executor: 'ray' contradicts --no-isolation"),
    (["--no-isolation", "--executor", "local"], "--executor: 'local' contradicts --no-isolation"),
    (["--ray-address", "ray://head:10001"], "--ray-address: only used by executor 'ray', not 'local'"),
    (["--no-isolation", "--job-timeout", "5"], "--job-timeout: no limit can be enforced on in-process jobs"),
    (["--executor", "in-process", "--job-memory", "512"], "--job-memory: no limit can be enforced"),
    (["--no-isolation", "--workers", "2"], "--workers: in-process jobs run one at a time, got 2"),
])
def test_run_refuses_a_bad_option_before_any_work(capsys, no_run, run_args, tmp_path, extra, needle):
    _one_error(capsys, run_args + extra, needle)
    assert not (tmp_path / "results").exists() and not (tmp_path / "site").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--n-examples", "x"], "--n-examples: invalid int value: 'x' (see 'gauntlet run --help')"),
    (["--results", ""], "--results: expected a path, got an empty string"),
    (["--executor", "banana"], "--executor: invalid choice: 'banana'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_argparse_errors_are_one_line(capsys, no_run, run_args, extra, needle):
    _one_error(capsys, run_args + extra, needle)


def test_run_outside_the_repository_names_the_submissions_option(capsys, no_run, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _one_error(capsys, ["run", "--no-site", "--quiet"], "--submissions: submissions: no such folder")


def test_run_on_a_folder_without_manifests_is_refused_not_an_empty_success(capsys, no_run, run_args, tmp_path):
    (tmp_path / "empty").mkdir()
    _one_error(capsys, run_args + ["--submissions", str(tmp_path / "empty")],
               f"--submissions: {tmp_path / 'empty'}: no manifest.yaml found")


def test_unknown_defense_is_refused_by_the_runner_before_any_job(capsys, run_args, tmp_path):
    _one_error(capsys, run_args + ["--defense", "nosuch"], "--defense: unknown or invalid defense(s) ['nosuch']")
    assert not (tmp_path / "results").exists()


def test_cuda_without_cuda_names_the_device_option(capsys, run_args):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _one_error(capsys, run_args + ["--device", "cuda"], "--device: 'cuda' requested but CUDA is not available")


@pytest.mark.parametrize("option", ["--results", "--site"])
def test_run_refuses_an_existing_file_as_its_output_folder(capsys, no_run, run_args, tmp_path, option):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    _one_error(capsys, run_args + [option, str(target)], f"{option}: {target}: exists and is not a folder")


@pytest.mark.parametrize("option", ["--results", "--site"])
def test_run_refuses_a_folder_under_a_file(capsys, no_run, run_args, tmp_path, option):
    (tmp_path / "a-file").write_text("not a folder")
    target = tmp_path / "a-file" / "out"
    _one_error(capsys, run_args + [option, str(target)], f"{option}: {target}: cannot create or write this folder")


@pytest.mark.parametrize("option", ["--results", "--site"])
def test_run_refuses_an_unwritable_output_folder(capsys, no_run, run_args, unwritable, option):
    _one_error(capsys, run_args + [option, str(unwritable)], f"{option}: {unwritable}: cannot create or write")


def test_the_writability_probe_leaves_nothing_behind(monkeypatch, capsys, run_args, tmp_path):
    seen = []
    monkeypatch.setattr(runner, "run", lambda cfg, progress=True: seen.append(cfg) or RunSummary())
    results = tmp_path / "deep" / "er" / "results"
    assert _call(run_args + ["--results", str(results), "--no-site"]) == 0
    assert seen and not (tmp_path / "deep").exists()


def test_leaderboard_refuses_a_site_folder_it_would_wreck(capsys, tmp_path):
    """``--site .`` in the repository would replace ``defenses/`` (the builder replaces its
    generated sub-folders); a site holding the result folder would delete the results."""
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "results" / "mnist-embedded" / "undefended", results / "mnist-embedded" / "undefended")
    code = tmp_path / "repo" / "defenses" / "precious.py"
    code.parent.mkdir(parents=True)
    code.write_text("keep me")
    _one_error(capsys, ["leaderboard", "--results", str(results), "--site", str(tmp_path / "repo")],
               f"--site: {tmp_path / 'repo'}: not a site built by gauntlet (no index.html), yet it has defenses/")
    assert code.read_text() == "keep me"
    for site in (tmp_path, results, results / "site"):
        _one_error(capsys, ["leaderboard", "--results", str(results), "--site", str(site)],
                   f"--site: {site}: overlaps the result folder {results}")
    assert _call(["leaderboard", "--results", str(results), "--site", str(tmp_path / "site")]) == 0
    assert _call(["leaderboard", "--results", str(results), "--site", str(tmp_path / "site")]) == 0  # rebuild


def test_run_refuses_a_site_inside_its_results_before_any_work(capsys, no_run, run_args, tmp_path):
    _one_error(capsys, run_args + ["--site", str(tmp_path / "results" / "site")], "--site: ")


def test_leaderboard_refuses_an_unwritable_site(capsys, tmp_path, unwritable):
    (tmp_path / "results").mkdir()
    _one_error(capsys, ["leaderboard", "--results", str(tmp_path / "results"), "--site", str(unwritable)],
               f"--site: {unwritable}: cannot create or write")


# -- what gauntlet run passes on, and what it prints -----------------------------------------

def test_run_passes_executor_and_canonical_threats_into_the_config(monkeypatch, capsys, run_args):
    seen: list[RunConfig] = []
    monkeypatch.setattr(runner, "run", lambda cfg, progress=True: seen.append(cfg) or RunSummary())
    assert _call(run_args + ["--no-site", "--executor", "ray", "--ray-address", "ray://head:10001",
                             "--threat", "linf-0.0310", "--threat", "linf-0.031"]) == 0
    cfg = seen[-1]
    assert (cfg.executor, cfg.ray_address, cfg.isolate) == ("ray", "ray://head:10001", True)
    assert cfg.threats == ("linf-0.031",)  # the result files' name, once: the summary table finds them
    assert _call(run_args + ["--no-site", "--no-isolation"]) == 0
    assert (seen[-1].executor, seen[-1].isolate) == ("in-process", False)
    assert _call(run_args + ["--no-site", "--executor", "in-process"]) == 0
    assert (seen[-1].executor, seen[-1].isolate) == ("in-process", False)


def test_the_summary_counts_error_records(monkeypatch, capsys, run_args, tmp_path):
    summary = RunSummary(written=["a/b/linf-0.031/fgsm"], skipped=["a/b/linf-0.031/pgd"],
                         errors=["a/b/linf-0.031/square: timeout", "a/b/linf-0.031/spsa: killed"],
                         error_records=["a/b/linf-0.031/square", "a/b/linf-0.031/spsa"])
    monkeypatch.setattr(runner, "run", lambda cfg, progress=True: summary)
    rc = _call(run_args + ["--no-site"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert (f"1 result files written, 2 error records written, 1 reused (resume) in {tmp_path / 'results'}"
            in out.splitlines())
    assert err.count("job failed: ") == 2 and "Traceback" not in err


def test_an_unforeseen_exception_is_one_internal_error_line(monkeypatch, capsys, run_args):
    def broken(cfg, progress=True):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(runner, "run", broken)
    monkeypatch.delenv("GAUNTLET_DEBUG", raising=False)
    line = _one_error(capsys, run_args, "error: internal error: RuntimeError: kaput second line", code=1)
    assert line.endswith(DEBUG_HINT)
    monkeypatch.setenv("GAUNTLET_DEBUG", "1")
    with pytest.raises(RuntimeError, match="kaput"):
        main(run_args)


# -- gauntlet train --------------------------------------------------------------------------

@pytest.fixture
def trainable(tmp_path) -> Path:
    """A copy of dummy-linear with local recipes that raise."""
    subs = tmp_path / "submissions"
    shutil.copytree(SUBMISSIONS / "dummy-linear", subs / "dummy-linear")
    (subs / "dummy-linear" / "recipe.py").write_text(
        "def boom(job, **kw):\n    raise RuntimeError('recipe exploded\\nat epoch 0')\n\n"
        "def picky(job, lr=1.0):\n    raise ValueError(f'lr must be > 0, got {lr}')\n\n"
        "def nothing(job):\n    return None\n")
    return subs


def _set_recipe(subs: Path, train: str) -> Path:
    path = subs / "dummy-linear" / "manifest.yaml"
    lines = [f"train: {train}" if line.startswith("train:") else line
             for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("train, code, needle", [
    ('{recipe: "recipe:boom", args: {}}', 1, "train.recipe: RuntimeError: recipe exploded at epoch 0"),
    ('{recipe: "recipe:picky", args: {lr: -1}}', 2, "train.recipe: ValueError: lr must be > 0, got -1"),
    ('{recipe: "recipe:nothing", args: {}}', 1, "train.recipe: recipe:nothing returned NoneType, not a torch.nn.Module"),
])
def test_train_with_a_failing_recipe_names_manifest_and_field(capsys, trainable, train, code, needle):
    manifest = _set_recipe(trainable, train)
    before = manifest.read_text()
    _one_error(capsys, ["train", "dummy-linear", "--submissions", str(trainable), "--device", "cpu"],
               f"{manifest}: {needle}", code=code)
    assert manifest.read_text() == before  # nothing written


@pytest.mark.parametrize("extra, needle", [
    (["--device", "banana"], "--device: expected auto, cpu, cuda or cuda:N, got 'banana'"),
    (["--seed", "-1"], "--seed: must be an integer from 0 to 2**63 - 1, got -1"),
    (["--seed", str(2**64)], "--seed: must be an integer from 0 to 2**63 - 1"),
])
def test_train_refuses_bad_options(capsys, trainable, extra, needle):
    _one_error(capsys, ["train", "dummy-linear", "--submissions", str(trainable)] + extra, needle)


@pytest.mark.parametrize("sub_id", ["../dummy-linear", ".", ""])
def test_train_refuses_an_id_that_is_not_a_folder_name(capsys, trainable, sub_id):
    _one_error(capsys, ["train", sub_id, "--submissions", str(trainable)], "id: expected a submission folder name")


# -- the Python API: RunConfig checks every field itself -------------------------------------

@pytest.mark.parametrize("kw, needle", [
    ({"n_examples": -1}, "n_examples: must be an integer >= 1, got -1"),
    ({"n_examples": 2.5}, "n_examples: must be an integer >= 1, got 2.5"),
    ({"n_examples": True}, "n_examples: must be an integer >= 1, got True"),
    ({"batch_size": 0}, "batch_size: must be an integer >= 1, got 0"),
    ({"job_timeout_s": 0.0}, "job_timeout_s: must be a finite number of seconds > 0"),
    ({"job_timeout_s": math.inf}, "job_timeout_s: must be a finite number of seconds > 0, got inf"),
    ({"job_memory_mb": 0}, "job_memory_mb: must be an integer >= 1, got 0"),
    ({"workers": -2}, "workers: must be an integer >= 1, got -2"),
    ({"device": "cuda:"}, "device: expected auto, cpu, cuda or cuda:N"),
    ({"device": "gpu"}, "device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ({"executor": "dask"}, "executor: unknown executor 'dask'; known: local, in-process, ray"),
    ({"executor": "ray", "isolate": False}, "executor: 'ray' contradicts isolate=False"),
    ({"ray_address": "auto"}, "ray_address: only used by executor 'ray', not 'local'"),
    ({"executor": "ray", "ray_address": " "}, "ray_address: expected an address"),
    ({"profile": "fast"}, "profile: unknown profile 'fast'; known: full, quick"),
    ({"seed": -1}, "seed: must be an integer from 0 to 2**63 - 1, got -1"),
    ({"seed": "0"}, "seed: must be an integer from 0 to 2**63 - 1, got '0'"),
    ({"threats": ()}, "threats: at least one threat id is needed"),
    ({"threats": ("linf-1e999",)}, "threats: threat 'linf-1e999': eps '1e999' is not a finite number"),
    ({"defenses": "dummy-linear"}, "defenses: expected a tuple of id strings, got 'dummy-linear'"),
    ({"attacks": ("fgsm", 3)}, "attacks: expected a tuple of id strings"),
    ({"results_dir": ""}, "results_dir: expected a non-empty path, got ''"),
    ({"certify": "yes"}, "certify: must be True or False, got 'yes'"),
    ({"sweep": 1}, "sweep: must be True or False, got 1"),
    ({"isolate": False, "job_timeout_s": 10.0}, "job_timeout_s: no limit can be enforced on in-process jobs"),
])
def test_runconfig_rejects_each_bad_field(kw, needle):
    with pytest.raises(ConfigError) as info:
        RunConfig(**kw)
    assert str(info.value).startswith(needle) and "\n" not in str(info.value)


def test_runconfig_defaults_are_valid_and_isolation_agrees_with_the_executor():
    assert (RunConfig().executor, RunConfig().isolate) == ("local", True)
    assert RunConfig(isolate=False).executor == "in-process"
    assert RunConfig(executor="in-process").isolate is False
    cfg = RunConfig(results_dir="out", defenses=["a"], executor="ray", ray_address="ray://h:1", job_timeout_s=5)
    assert cfg.results_dir == Path("out") and cfg.defenses == ("a",)


@pytest.mark.parametrize("bad", ["linf-1e999", "linf-nan", "linf--1", "l2-Infinity", "linf-+inf", "l2--0.5"])
def test_threat_ids_that_parse_to_inf_nan_or_negative_are_refused(bad):
    with pytest.raises(ValueError, match=re.escape(f"threat '{bad}'")):
        get_threat(bad)


def test_the_unbounded_and_zero_threats_stay_valid():
    assert math.isinf(get_threat("linf-inf").eps) and get_threat("linf-inf").id == "linf-inf"
    assert math.isinf(get_threat("l2-inf").eps)
    assert get_threat("linf-0").eps == 0.0 and get_threat("linf-1e-400").eps == 0.0


# -- hypothesis: hostile argument lists ------------------------------------------------------

_HOSTILE = ["-1", "0", "1", "2", "1e999", "nan", "inf", "-inf", "", " ", "é", "💥", "\u202e", "9" * 40,
            "banana", "nosuch", "linf-1e999", "linf-nan", "linf--1", "x-1", "--", "-"]
_GOOD = {
    "--defense": ["dummy-linear", "dummy-quantized"], "--attack": ["fgsm", "pgd", "pgdd"],
    "--threat": ["linf-0.031", "l2-0.005", "linf-inf", "linf-0.0310"], "--profile": ["quick", "full"],
    "--n-examples": ["5", "20"], "--device": ["auto", "cpu", "cuda", "cuda:0", "cuda:-1"],
    "--seed": ["0", "7", str(2**63)], "--batch-size": ["1", "100"], "--job-timeout": ["0.5", "60"],
    "--job-memory": ["512"], "--workers": ["1", "3"], "--executor": ["local", "in-process", "ray"],
    "--ray-address": ["ray://head:10001", "auto"],
}
_PATHS = ["submissions", "results", "site", "missing/deep", "a-file", "a-file/below", "unwritable",
          "empty", "corrupt", "tiny", "readme.md", "no-markers.md"]
_OPTIONS = {
    "run": ["--submissions", "--defense", "--attack", "--threat", "--profile", "--n-examples", "--device",
            "--seed", "--results", "--site", "--data-dir", "--batch-size", "--job-timeout", "--job-memory",
            "--workers", "--executor", "--ray-address"],
    "list": ["--submissions"],
    "validate": [],
    "leaderboard": ["--results", "--site", "--submissions"],
    "report": ["--results", "--readme"],
}
_FLAGS = ["--download", "--no-sweep", "--no-certify", "--no-cascade", "--no-site", "--no-isolation", "--quiet"]
_PATH_OPTIONS = {"--submissions", "--results", "--site", "--data-dir", "--readme"}


def _sandbox(root: Path) -> dict[str, str]:
    """Named places under ``root`` for path options: missing, a file, unwritable, an empty
    result folder, one with a corrupt result, a tiny valid one, README files."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SUBMISSIONS, root / "submissions", dirs_exist_ok=True)
    (root / "a-file").write_text("not a folder")
    (root / "empty").mkdir(exist_ok=True)
    (root / "corrupt" / "mnist-embedded" / "x" / "linf-0.031").mkdir(parents=True, exist_ok=True)
    (root / "corrupt" / "mnist-embedded" / "x" / "linf-0.031" / "fgsm.json").write_text("{not json")
    tiny = FIXTURES / "results" / "mnist-embedded" / "undefended"
    shutil.copytree(tiny, root / "tiny" / "mnist-embedded" / "undefended", dirs_exist_ok=True)
    (root / "readme.md").write_text("# x\n<!-- gauntlet:table:start -->\n<!-- gauntlet:table:end -->\n")
    (root / "no-markers.md").write_text("# x\n")
    places = {name: str(root / name) for name in _PATHS}
    places["unwritable"] = str(_unwritable_folder(root) or root / "a-file" / "below")
    return places


def _argv(draw, command: str, places: dict[str, str]) -> list[str]:
    """``command`` and up to 5 options, each with a plausible or a hostile value (one in
    ten an option of another command)."""
    argv = [command]
    own = _OPTIONS[command] + (_FLAGS if command == "run" else [])
    for _ in range(draw(st.integers(0, 5))):
        foreign = draw(st.integers(0, 9)) == 0 or not own
        option = draw(st.sampled_from(["--bogus", "--results", "--workers"] if foreign else own))
        if option in _FLAGS:
            argv.append(option)
            continue
        good = [places[p] for p in _PATHS] if option in _PATH_OPTIONS else _GOOD.get(option, ["1"])
        argv += [option, draw(st.one_of(st.sampled_from(good), st.sampled_from(_HOSTILE)))]
    if command == "validate":
        argv += draw(st.lists(st.one_of(st.sampled_from([places[p] for p in _PATHS]), st.sampled_from(_HOSTILE)),
                              max_size=2))
    return argv


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_hostile_argument_lists_exit_0_1_or_2_without_a_traceback(tmp_path_factory, data):
    """Generated ``run``/``list``/``validate``/``leaderboard``/``report`` argument lists
    exit 0, 1 or 2, print no traceback and hit no internal error; exit 2 always says why.

    Limitation: ``gauntlet.benchmark.runner.run`` is replaced by a stub returning an empty
    :class:`RunSummary`, so what this checks for ``run`` is option validation (argparse,
    RunConfig, attack ids, output folders) and the reporting after an empty run, not the
    jobs themselves. The working folder is a sandbox, so no default path (``results/``,
    ``site/``, ``README.md``) reaches the repository.
    """
    root = tmp_path_factory.getbasetemp() / "hostile-cli"
    places = _sandbox(root)
    command = data.draw(st.sampled_from(sorted(_OPTIONS)))
    argv = _argv(data.draw, command, places)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(runner, "run", lambda cfg, progress=True: RunSummary())
        mp.delenv("GAUNTLET_DEBUG", raising=False)
        mp.chdir(root)
        rc = _call(argv)
    text = out.getvalue() + err.getvalue()
    assert rc in (0, 1, 2), (argv, rc, text)
    assert "Traceback" not in text and "internal error" not in text, (argv, text)
    if rc == 2:
        assert "error: " in err.getvalue(), (argv, text)
