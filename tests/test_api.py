"""The Python API (gauntlet.evaluate / certify / Report) against truths nobody tuned: a
linear model's exact robust set, the runner's own numbers on the folder the report
writes, and the caller's model left as it was."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gauntlet
from gauntlet.benchmark.registry import build_defense, load_submission
from gauntlet.benchmark.threats import get_threat
from tests.linear import linear_problem
from tests.linear_exact import exact_robustness

ROOT = Path(__file__).resolve().parent.parent


def _standard_cnn():
    return build_defense(load_submission(ROOT / "submissions" / "standard-cnn-mnist" / "manifest.yaml")).classifier


def test_evaluate_on_a_linear_model_finds_its_exact_robust_set(tmp_path):
    model, x, y = linear_problem(60, num_classes=4, side=8, seed=1)
    threat = "linf-0.031"  # 8 of these 60 examples are robust
    exact = exact_robustness(model.linear.weight, model.linear.bias, x, y, get_threat(threat))
    report = gauntlet.evaluate(model, x, y, threats=(threat,), workdir=tmp_path, progress=False)  # every attack
    assert report.errors == []
    row = report.summary.set_index("threat").loc[threat]
    clear = ~exact.borderline
    assert 0.1 < float(exact.robust[clear].double().mean()) < 0.9  # the problem separates the examples
    assert row["robust_accuracy"] == pytest.approx(float(exact.robust.double().mean()), abs=float((~clear).double().mean()) + 1e-9)
    assert row["robust_ci_low"] <= row["robust_accuracy"] <= row["robust_ci_high"]
    table = report.attacks
    assert {"fgsm", "pgd", "apgd-ce", "apgd-t", "square"} <= set(table["attack"]) and (table["threat"] == threat).all()


def test_evaluate_leaves_the_callers_model_as_it_was(tmp_path):
    model, x, y = linear_problem(8, seed=2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gauntlet.evaluate(model, x, y, threats=("linf-0.031",), attacks=("fgsm",), workdir=tmp_path, progress=False)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_defense_built_from_steps_meets_the_adaptive_attacks(tmp_path):
    """JPEG is non-differentiable: BPDA through it breaks what raw PGD cannot see through."""
    from gauntlet.defenses.jpeg import JPEG

    defense = gauntlet.Defense(steps=[JPEG(75)], classifier=_standard_cnn())
    report = gauntlet.evaluate(defense, dataset="mnist-embedded", n=16, threats=("linf-0.1",),
                               attacks=("pgd", "pgd-bpda"), workdir=tmp_path, progress=False)
    assert report.errors == []
    acc = report.attacks.set_index("attack")["robust_accuracy"]
    assert acc["pgd-bpda"] <= acc["pgd"]
    assert set(report.flags["flag"])  # every flag evaluated, raised or not, with its meaning
    assert report.flags["meaning"].str.len().min() > 0
    page = report.to_html(tmp_path / "site")
    assert page.is_file() and "notebook" in page.name


def test_to_submission_round_trip_reproduces_the_numbers(tmp_path):
    subs = tmp_path / "submissions"
    report = gauntlet.evaluate(_standard_cnn(), dataset="mnist-embedded", n=8, attacks=("fgsm", "pgd", "square"),
                               id="my-cnn", workdir=tmp_path / "work", progress=False)
    folder = report.to_submission(subs / "my-cnn", name="My CNN", authors=["A. Researcher"])
    assert {p.name for p in folder.iterdir()} >= {"manifest.yaml", "weights.pt"}
    out = subprocess.run([sys.executable, "-m", "gauntlet.benchmark.cli", "validate", str(subs)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    cmd = report.reproduce_command(subs).split()[2:]
    out = subprocess.run([sys.executable, "-m", "gauntlet.benchmark.cli", "run", *cmd, "--results",
                          str(tmp_path / "results"), "--no-certify"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    for path in sorted((tmp_path / "work" / "results" / "mnist-embedded" / "my-cnn").rglob("*.json")):
        if path.name in ("manifest.json",):
            continue
        rel = path.relative_to(tmp_path / "work" / "results")
        mine, theirs = json.loads(path.read_text()), json.loads((tmp_path / "results" / rel).read_text())
        assert mine.get("summary") == theirs.get("summary"), rel
        assert mine.get("per_example") == theirs.get("per_example"), rel


def test_to_submission_refuses_what_it_cannot_reproduce(tmp_path):
    model, x, y = linear_problem(8, seed=3)
    report = gauntlet.evaluate(model, x, y, threats=("linf-0.031",), attacks=("fgsm",), workdir=tmp_path,
                               progress=False)
    with pytest.raises(ValueError, match="tensors"):
        report.to_submission(tmp_path / "out" / "notebook", name="x")
    with pytest.raises(ValueError, match="not the report's id"):
        report.to_submission(tmp_path / "out" / "other", name="x")


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: gauntlet.evaluate(m, x), "both x and y"),
    (lambda m, x, y: gauntlet.evaluate(m), "dataset="),
    (lambda m, x, y: gauntlet.evaluate(m, x * 3, y), r"\[0, 1\]"),
    (lambda m, x, y: gauntlet.evaluate("model", x, y), "torch.nn.Module"),
    (lambda m, x, y: gauntlet.certify(m, x, y, sigma=-1.0), "sigma"),
])
def test_bad_arguments_are_one_clear_error(call, match):
    model, x, y = linear_problem(4, seed=4)
    with pytest.raises((ValueError, TypeError), match=match):
        call(model, x, y)


def test_certify_a_smoothed_linear_model_within_its_exact_radius(tmp_path):
    """Cohen et al.'s certified radius σ·Φ⁻¹(p_A lower bound) never exceeds the smoothed
    binary linear classifier's exact radius |w·x + b| / ‖w‖ (the distance to its plane)."""
    model, x, y = linear_problem(12, num_classes=2, seed=5)
    cert = gauntlet.certify(model, x, y, sigma=0.25, n=2000, n0=64, batch=500, workdir=tmp_path)
    per = cert.per_example
    w = (model.linear.weight[1] - model.linear.weight[0]).detach().double()
    exact = ((x.flatten(1).double() @ w).abs() / w.norm())
    radius = torch.tensor(per["radius"].to_numpy(), dtype=torch.float64)
    assert (radius <= exact + 1e-6).all()
    assert (radius > 0).any()
    s = cert.summary
    assert set(s["threat"]) == {"linf-0.031", "l2-0.005"}
    assert ((s["ci_low"] <= s["certified_accuracy"]) & (s["certified_accuracy"] <= s["ci_high"])).all()


def test_to_submission_refuses_a_class_defined_in_main(tmp_path):
    """Copying the running script (or a notebook) as the submission's module would run its
    top level in the sandbox: refused, with the fix."""
    from gauntlet.api import Report

    model = type("Net", (torch.nn.Linear,), {"__module__": "__main__"})(64, 4)
    report = Report(tmp_path, "notebook", "mnist-embedded", ("linf-0.031",), model=model)
    with pytest.raises(ValueError, match="__main__"):
        report.to_submission(tmp_path / "out" / "notebook", name="x")
