"""The runner on the dummy submissions: patterns, resume, determinism, interruption."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gauntlet.benchmark.results import SCHEMA_VERSION, iter_results, read_result
from gauntlet.benchmark.runner import RunConfig, run

ATTACKS = ("fgsm", "pgd", "pgd-bpda", "random")
FAST = ("fgsm", "pgd")


def _run(submissions: Path, results: Path, **kw) -> object:
    cfg = dict(submissions_dir=submissions, attacks=ATTACKS, threats=("linf-0.1",), n_examples=30,
               results_dir=results, sweep=False, isolate=False)
    cfg.update(kw)
    return run(RunConfig(**cfg), progress=False)


def _acc(results: Path, defense: str, threat: str, attack: str) -> float:
    return read_result(results / "mnist-embedded" / defense / threat / f"{attack}.json")["summary"]["robust_accuracy"]


def _stable(record: dict) -> dict:
    """A record without what may differ between identical runs (timings)."""
    return {k: v for k, v in record.items() if k not in ("timing",)}


def test_quantizer_masks_raw_gradients_and_falls_to_bpda(submissions, tmp_path):
    results = tmp_path / "results"
    summary = _run(submissions, results)
    assert summary.errors == []
    clean = read_result(results / "mnist-embedded/dummy-quantized/linf-0.1/pgd.json")["summary"]["clean_accuracy"]
    naive = _acc(results, "dummy-quantized", "linf-0.1", "pgd")
    bpda = _acc(results, "dummy-quantized", "linf-0.1", "pgd-bpda")
    undefended = _acc(results, "dummy-linear", "linf-0.1", "pgd")
    assert naive >= clean - 0.1, "raw PGD barely moves a quantized model's accuracy"
    assert bpda <= undefended + 0.1, "BPDA brings it down to the undefended model's level"
    flags = {f["id"]: f for f in read_result(results / "mnist-embedded/dummy-quantized/linf-0.1/flags.json")["flags"]}
    assert flags["zero-gradients"]["raised"] and flags["unbounded-attack-fails"]["raised"]
    plain = {f["id"]: f for f in read_result(results / "mnist-embedded/dummy-linear/linf-0.1/flags.json")["flags"]}
    assert not any(f["raised"] for f in plain.values()), plain


def test_every_final_point_is_recorded_inside_the_threat(submissions, tmp_path):
    results = tmp_path / "results"
    _run(submissions, results, threats=("linf-0.031", "l2-0.005"), attacks=("pgd",))
    for _, rec in iter_results(results):
        if rec["kind"] == "attack" and rec["threat"]["raw_radius"] != "inf":
            assert max(rec["per_example"]["perturbation_norm"]) <= rec["threat"]["raw_radius"] + 1e-6
            assert len(rec["per_example"]["robust_correct"]) == rec["dataset"]["n"] == 30
            assert rec["schema_version"] == SCHEMA_VERSION == 2 and rec["environment"]["torch"]


def test_resume_skips_finished_runs_and_same_seed_is_identical(submissions, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    first = _run(submissions, a, attacks=FAST)
    again = _run(submissions, a, attacks=FAST)
    assert again.written == [] and sorted(again.skipped) == sorted(first.written)
    _run(submissions, b, attacks=FAST)
    files_a = {p.relative_to(a): _stable(r) for p, r in iter_results(a)}
    files_b = {p.relative_to(b): _stable(r) for p, r in iter_results(b)}
    assert files_a == files_b
    other = _run(submissions, tmp_path / "c", seed=1, attacks=("pgd",), defenses=("dummy-linear",))
    assert other.written and (tmp_path / "c" / "mnist-embedded").is_dir()


def test_killed_run_resumes_to_the_same_files(submissions, tmp_path):
    """SIGKILL part-way: no partial file is visible, and a re-run completes identically."""
    results = tmp_path / "killed"
    cmd = [sys.executable, "-m", "gauntlet.benchmark.cli", "run", "--submissions", str(submissions), "--results",
           str(results), "--n-examples", "30", "--threat", "linf-0.1", "--no-sweep", "--no-site", "--quiet",
           "--workers", "1"]
    for a in ATTACKS:
        cmd += ["--attack", a]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONHASHSEED": "0"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list(results.rglob("*.json"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for path in results.rglob("*.json"):
        json.loads(path.read_text())  # every visible file is complete
    _run(submissions, results)
    reference = tmp_path / "reference"
    _run(submissions, reference)
    got = {p.relative_to(results): _stable(r) for p, r in iter_results(results)}
    want = {p.relative_to(reference): _stable(r) for p, r in iter_results(reference)}
    assert got == want
    assert not list(results.rglob("*.tmp")), "stale temporary files are cleaned up"


def test_cli_run_bad_input_exits_2_without_traceback(submissions, tmp_path):
    base = [sys.executable, "-m", "gauntlet.benchmark.cli", "run", "--submissions", str(submissions),
            "--results", str(tmp_path / "r"), "--no-site", "--quiet"]
    for extra, needle in ([["--attack", "pgdd"]], "Did you mean 'pgd'"), ([["--threat", "l3-1"]], "expected"), \
                         ([["--defense", "nope"]], "unknown or invalid defense"):
        out = subprocess.run(base + extra[0], capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        assert needle in out.stderr and "Traceback" not in out.stderr
    (submissions / "dummy-linear" / "manifest.yaml").write_text("schema: 1\nid: dummy-linear\n")
    out = subprocess.run(base, capture_output=True, text=True)
    assert out.returncode == 2 and "dummy-linear/manifest.yaml: name: Field required" in out.stderr


def test_cli_run_refuses_tampered_weights_before_running_anything(submissions, tmp_path):
    weights = submissions / "dummy-linear" / "weights.pt"
    weights.write_bytes(weights.read_bytes() + b"tampered")
    out = subprocess.run([sys.executable, "-m", "gauntlet.benchmark.cli", "run", "--submissions", str(submissions),
                          "--results", str(tmp_path / "r"), "--no-site", "--quiet"], capture_output=True, text=True)
    assert out.returncode == 2 and "dummy-linear/manifest.yaml: model.weights: sha256 of weights.pt is" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r").exists()


def test_parallel_workers_give_the_same_numbers(submissions, tmp_path):
    """Two single-threaded workers, one submission each, write what one in-process run writes
    (only the recorded thread count differs): every job seeds itself from its run id."""
    parallel = _run(submissions, tmp_path / "parallel", attacks=("fgsm", "pgd"), isolate=True, workers=2)
    _run(submissions, tmp_path / "serial", attacks=("fgsm", "pgd"))

    def numbers(root: Path) -> dict:
        out = {}
        for p, r in iter_results(root):
            env = {k: v for k, v in r["environment"].items() if k != "threads"}
            out[p.relative_to(root)] = {**_stable(r), "environment": env}
        return out

    assert parallel.errors == []
    got, want = numbers(tmp_path / "parallel"), numbers(tmp_path / "serial")
    assert got == want and len(got) == 8


HIDDEN_NOISE = '''
import torch
from gauntlet.defenses.pipeline import Step


class HiddenNoise(Step):
    """Adds Gaussian noise on every call but does not declare ``randomized``."""

    def forward(self, x):
        return (x + 0.5 * torch.randn_like(x)).clamp(0, 1)
'''


def test_observed_randomness_reaches_the_scorer_and_the_eot_view(submissions, tmp_path):
    """A defense that hides its randomness (manifest and code say deterministic) is
    marked randomized by the runner: clean and adversarial scores average R draws (some
    per-example scores are fractions) and the EOT attack runs with its k draws."""
    from gauntlet.attacks.adaptive import AdaptiveView
    from gauntlet.benchmark.profiles import get_profile
    from gauntlet.benchmark.registry import load_submission
    from gauntlet.benchmark.jobs import SubmissionRun

    folder = submissions / "dummy-linear"
    (folder / "hidden.py").write_text(HIDDEN_NOISE)
    manifest = folder / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace(
        "properties:", "defense:\n  steps:\n    - {factory: \"hidden:HiddenNoise\", args: {}}\nproperties:"))
    cfg = RunConfig(submissions_dir=submissions, defenses=("dummy-linear",), attacks=("pgd-eot",),
                    threats=("linf-0.1",), n_examples=30, results_dir=tmp_path, sweep=False,
                    isolate=False, certify=False)
    sub_run = SubmissionRun(load_submission(manifest), cfg, get_profile("quick"), "cpu", lambda: None)
    assert sub_run.randomness["varied"] and sub_run.defense.randomized
    assert AdaptiveView(sub_run.defense, eot=10).eot == 10
    assert run(cfg, progress=False).errors == []
    record = read_result(tmp_path / "mnist-embedded" / "dummy-linear" / "linf-0.1" / "pgd-eot.json")
    assert record["draws"] == get_profile("quick").draws > 1
    assert any(0 < v < 1 for v in record["per_example"]["clean_correct"]), record["per_example"]
    assert record["defense"]["facts"]["randomized"]
    flags = read_result(tmp_path / "mnist-embedded" / "dummy-linear" / "linf-0.1" / "flags.json")
    assert any(f["id"] == "undeclared-randomness" and f["raised"] for f in flags["flags"]), flags["flags"]


def test_manifest_declared_randomness_marks_the_defense(submissions):
    """``properties.randomized: true`` reaches the defense every attack and the scorer read,
    even when its code declares nothing (as ``properties.rejects`` does)."""
    from gauntlet.benchmark.registry import build_defense, load_submission

    manifest = submissions / "dummy-linear" / "manifest.yaml"
    assert not build_defense(load_submission(manifest)).randomized
    manifest.write_text(manifest.read_text().replace("randomized: false", "randomized: true"))
    assert build_defense(load_submission(manifest)).randomized
