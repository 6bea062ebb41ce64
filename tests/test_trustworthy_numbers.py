"""Issue 12, "Numbers a reviewer can trust": every ε runs the whole suite, every figure has
an interval, results go stale with the code, and the smaller soundness fixes (best point
of a randomized defense, abstention, the certificate consistency check, flags from
traits). Each test here fails on the code before the issue."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from gauntlet.benchmark import code_hash as ch
from gauntlet.benchmark.results import iter_results, read_result
from gauntlet.benchmark.runner import RunConfig, run

DATASET = "mnist-embedded"


def _run(submissions: Path, results: Path, **kw) -> object:
    cfg = dict(submissions_dir=submissions, defenses=("dummy-linear",), attacks=("fgsm",),
               threats=("linf-0.1",), n_examples=10, results_dir=results, sweep=False, isolate=False,
               certify=False)
    cfg.update(kw)
    return run(RunConfig(**cfg), progress=False)


def _attack_jobs_of(run_ids: list[str]) -> list[str]:
    return [r for r in run_ids if not r.endswith("/flags")]


def _attack_jobs(summary) -> list[str]:
    return _attack_jobs_of(summary.written)


# -- 1. the worst case at every ε ------------------------------------------------------

def test_every_attack_runs_at_every_sweep_eps(submissions, tmp_path):
    attacks = ("fgsm", "pgd", "random")
    summary = _run(submissions, tmp_path, attacks=attacks, threats=("linf-0.031", "l2-0.005"), sweep=True)
    assert summary.errors == []
    folder = tmp_path / DATASET / "dummy-linear"
    for threat in ("linf-0.031", "linf-0.1", "linf-0.3", "l2-0.005", "l2-0.05"):  # the quick profile's ε
        assert {p.stem for p in (folder / threat).glob("*.json")} == {*attacks, "flags"}, threat
    flags = read_result(folder / "linf-0.031" / "flags.json")
    monotone = next(f for f in flags["flags"] if f["id"] == "non-monotone-in-eps")
    assert monotone["raised"] is False
    sweep = flags["config"]["sweep"]
    assert [eps for eps, _ in sweep] == [0.0, 0.031, 0.1, 0.3]
    # Each point is the per-example worst case over the whole suite run at that ε.
    recs = [read_result(folder / "linf-0.1" / f"{a}.json")["per_example"]["robust_correct"] for a in attacks]
    worst = [min(v for v in col if v is not None) for col in zip(*recs)]  # null: skipped by the cascade
    assert sweep[2][1] == pytest.approx(sum(worst) / len(recs[0]))


# -- 2. an interval on every figure ------------------------------------------------------

def test_every_accuracy_in_a_record_carries_its_exact_interval(submissions, tmp_path):
    _run(submissions, tmp_path, attacks=("fgsm",), n_examples=20)
    rec = read_result(tmp_path / DATASET / "dummy-linear" / "linf-0.1" / "fgsm.json")
    s = rec["summary"]
    for name in ("clean_accuracy", "robust_accuracy", "robust_accuracy_worst_of_draws", "clean_rejection_rate",
                 "adv_rejection_rate"):
        low, high = s[f"{name}_ci"]
        assert 0 <= low <= s[name] <= high <= 1, name
    k = round(s["robust_accuracy"] * 20)
    from scipy.stats import binomtest

    exact = binomtest(k, 20).proportion_ci(method="exact")
    assert s["robust_accuracy_ci"] == pytest.approx([exact.low, exact.high], abs=1e-6)
    assert s["interval"]["level"] == 0.95


# -- 3. results that go stale when the code changes ---------------------------------------

def test_editing_one_byte_of_any_helper_module_reruns_the_job(submissions, tmp_path, monkeypatch):
    """The config hash covers every source file of the harness, not only the attack's own
    module: a one-byte edit of a helper (here a copy of attacks/losses.py) re-runs the job."""
    copy = tmp_path / "attacks-copy"
    shutil.copytree(Path(ch.package_folders(("gauntlet.attacks",))[0]), copy)
    real = ch.package_folders

    def folders(packages=ch.HASHED_PACKAGES):
        return [copy if f.name == "attacks" else f for f in real(packages)]

    monkeypatch.setattr(ch, "package_folders", folders)
    ch.clear_cache()
    results = tmp_path / "results"
    first = _run(submissions, results)
    assert len(_attack_jobs(first)) == 1
    again = _run(submissions, results)
    assert _attack_jobs(again) == [] and len(_attack_jobs_of(again.skipped)) == 1  # unchanged code: resume
    helper = copy / "losses.py"
    helper.write_bytes(helper.read_bytes() + b"#")
    ch.clear_cache()
    edited = _run(submissions, results)
    assert len(_attack_jobs(edited)) == 1 and _attack_jobs_of(edited.skipped) == []
    ch.clear_cache()


def test_editing_any_file_of_the_submission_folder_reruns_the_job(submissions, tmp_path):
    results = tmp_path / "results"
    assert len(_attack_jobs(_run(submissions, results))) == 1
    (submissions / "dummy-linear" / "helper.py").write_text("# a module the manifest may import\n")
    assert len(_attack_jobs(_run(submissions, results))) == 1


def test_batch_size_is_part_of_the_config_hash(submissions, tmp_path):
    """Results are not invariant to the batch size (docs/results.md: convolution kernels
    round differently per batch shape, and a randomized defense draws its noise per batch
    from torch's global generator), so a different ``--batch-size`` is a different
    configuration and never reuses a file computed under another."""
    results = tmp_path / "results"
    _run(submissions, results, attacks=("pgd",), batch_size=100)
    path = results / DATASET / "dummy-linear" / "linf-0.1" / "pgd.json"
    big = read_result(path)
    second = _run(submissions, results, attacks=("pgd",), batch_size=3)
    small = read_result(path)
    assert f"{DATASET}/dummy-linear/linf-0.1/pgd" in second.written
    assert (big["config"]["batch_size"], small["config"]["batch_size"]) == (100, 3)
    assert big["config_hash"] != small["config_hash"]
    # The decisions agree on this easy linear model; the points need not (other random starts).
    assert big["per_example"]["clean_correct"] == small["per_example"]["clean_correct"]


def test_convolutions_are_not_batch_invariant_bitwise(mnist_test_slice):
    """Why invariance is impossible: the same model on the same examples gives other float
    results in a batch of 7 than in a batch of 100 (oneDNN picks kernels by shape)."""
    from gauntlet.benchmark.registry import build_defense, load_submission

    root = Path(__file__).resolve().parent.parent
    defense = build_defense(load_submission(root / "submissions" / "standard-cnn-mnist" / "manifest.yaml"),
                            torch.device("cpu"))
    x = mnist_test_slice[0][:98]
    with torch.no_grad():
        whole = defense(x)
        pieces = torch.cat([defense(x[i:i + 7]) for i in range(0, 98, 7)])
    assert torch.allclose(whole, pieces, atol=1e-4)
    if torch.equal(whole, pieces):
        pytest.skip("this build happens to be bitwise batch-invariant for this model")


# -- 4. smaller soundness fixes ---------------------------------------------------------------

class NoisyLinear(nn.Module):
    """Two classes; z_0 − z_1 = m0 − Σδ + N(0, σ²) per call, so that from x0 = 0.5 the
    expected margin falls linearly to m0 − d·ε at the corner δ = +ε. A randomized defense
    whose single-draw margins are mostly noise."""

    randomized = True

    def __init__(self, m0: float = 0.6, sigma: float = 2.0) -> None:
        super().__init__()
        self.m0, self.sigma = m0, sigma

    def expected_margin(self, x: torch.Tensor) -> torch.Tensor:
        return self.m0 - (x - 0.5).flatten(1).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.expected_margin(x) + self.sigma * torch.randn(len(x), device=x.device)
        return torch.stack([m, torch.zeros_like(m)], dim=1)


def test_randomized_defense_pgd_keeps_its_last_iterate_not_a_lucky_draw():
    """Single-draw PGD against a randomized defense: the kept point must not be chosen on
    one noisy draw. Here every final iterate sits at the corner whose expected margin is
    −1.0 (probability correct Φ(−0.5) = 0.31); choosing the lowest single-draw margin on the
    way keeps earlier points of higher expected margin (≈ 0.36–0.40 on this model)."""
    from scipy.stats import norm

    from gauntlet.attacks.base import AttackContext
    from gauntlet.attacks.registry import make_attack
    from gauntlet.benchmark.threats import ThreatModel

    torch.manual_seed(0)
    model = NoisyLinear()
    x = torch.full((400, 1, 4, 4), 0.5)
    y = torch.zeros(400, dtype=torch.long)
    threat = ThreatModel("linf", 0.1)
    res = make_attack("pgd").run(model, x, y, threat, AttackContext(torch.Generator().manual_seed(1)))
    threat.verify(res.x_adv, x)
    p_correct = float(torch.from_numpy(norm.cdf(model.expected_margin(res.x_adv).numpy() / model.sigma)).mean())
    assert p_correct == pytest.approx(norm.cdf(-1.0 / 2.0), abs=0.01)
    assert res.info["kept"] == "last iterate"


class PixelGridDetector(nn.Module):
    """A linear classifier with a reject logit that fires on any input off the 1/255 pixel
    grid, i.e. on every perturbed MNIST digit and on no clean one."""

    rejects = True

    def __init__(self, abstains: bool) -> None:
        super().__init__()
        from gauntlet.defenses.models import LinearClassifier

        self.abstains = abstains
        self.linear = LinearClassifier(784, 10)  # the trained dummy of tests/fixtures/submissions
        weights = Path(__file__).resolve().parent / "fixtures" / "submissions" / "dummy-linear" / "weights.pt"
        self.linear.load_state_dict(torch.load(weights, weights_only=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        off_grid = ((x * 255 - (x * 255).round()).abs().flatten(1).amax(1) > 1e-3).to(z)
        return torch.cat([z, (100.0 * off_grid - 50.0).unsqueeze(1)], dim=1)


@pytest.mark.parametrize("abstains", [False, True])
def test_abstention_is_an_error_in_the_headline_and_a_detection_is_a_win(abstains, mnist_test_slice):
    from gauntlet.attacks.base import AttackContext
    from gauntlet.attacks.registry import make_attack
    from gauntlet.benchmark.scoring import score
    from gauntlet.benchmark.threats import ThreatModel
    from gauntlet.defenses.pipeline import Defense

    defense = Defense(PixelGridDetector(abstains)).eval()
    defense.abstains = abstains
    x, y = mnist_test_slice[0][:20], mnist_test_slice[1][:20]
    threat = ThreatModel("linf", 0.031)
    clean = score(defense, x, y, 1)
    assert float(clean.rejected.sum()) == 0 and float(clean.correct.sum()) >= 15  # on the grid, mostly right
    x_adv = make_attack("fgsm").run(defense, x, y, threat, AttackContext(torch.Generator().manual_seed(0))).x_adv
    adv = score(defense, x_adv, y, 1)
    attacked = clean.correct > 0  # FGSM leaves an already misclassified example alone
    if abstains:  # the attacker aims for the abstention (an error) and every perturbed digit gets it
        assert float(adv.rejected[attacked].mean()) == 1.0
    else:  # against a detector a rejected point is worse for the attacker than the clean one
        assert bool((adv.correct + adv.rejected)[attacked].min() == 1.0)
    # What the runner records as the headline (gauntlet.benchmark.runner.SubmissionRun.attack_job).
    from gauntlet.attacks.base import defense_facts

    assert defense_facts(defense)["abstains"] is abstains
    headline = torch.minimum(clean.correct, adv.correct if abstains else adv.survives)
    assert float(headline.sum()) == (0.0 if abstains else float(clean.correct.sum()))


def test_runner_counts_a_smoothed_models_abstention_as_not_robust(tmp_path):
    root = Path(__file__).resolve().parent.parent
    results = tmp_path / "results"
    summary = run(RunConfig(submissions_dir=root / "submissions", defenses=("cohen2019-smoothing-s025",),
                            attacks=("fgsm",), threats=("linf-0.3",), n_examples=10, results_dir=results,
                            sweep=False, isolate=False, certify=False), progress=False)
    assert summary.errors == []
    rec = read_result(results / DATASET / "cohen2019-smoothing-s025" / "linf-0.3" / "fgsm.json")
    pe, s = rec["per_example"], rec["summary"]
    assert rec["defense"]["facts"]["abstains"] is True
    assert pe["robust_correct"] == pe["robust_correct_reject_as_error"]
    assert all(a >= b for a, b in zip(pe["robust_correct_reject_as_win"], pe["robust_correct"]))
    assert s["robust_accuracy"] == s["robust_accuracy_reject_as_error"] <= s["robust_accuracy_reject_as_win"]
    assert s["adv_rejection_rate"] > 0  # it does abstain at ℓ∞ 0.3, so the two figures differ
    assert s["robust_accuracy"] < s["robust_accuracy_reject_as_win"]


def test_a_certified_example_misclassified_in_most_draws_is_a_violation():
    """The consistency check can fire on a smoothed model: wrong in 6 of 10 draws at a
    point inside the certified radius is a violation (before, only 10 of 10 counted)."""
    from gauntlet.benchmark.certify import consistency_violations

    cert = {"radius": [1.0, 1.0, 1.0], "correct": [1, 1, 1]}
    attack = {"clean_correct": [1.0, 1.0, 1.0], "robust_correct": [0.4, 0.9, 0.6],
              "adv_survives": [0.4, 0.9, 0.6]}
    found = consistency_violations(cert, {"l2-x": {"pgd": attack}}, radii={"l2-x": 0.5}, indices=[7, 8, 9])
    assert found == {"l2-x": [7]}
    # An abstention is not a wrong class: survival (label or abstain) 1.0 is no violation.
    abstained = {"clean_correct": [1.0, 1.0, 1.0], "robust_correct": [0.0, 0.0, 0.0],
                 "robust_correct_reject_as_win": [1.0, 1.0, 1.0], "adv_survives": [1.0, 1.0, 1.0]}
    assert consistency_violations(cert, {"l2-x": {"pgd": abstained}}, radii={"l2-x": 0.5},
                                  indices=[7, 8, 9]) == {"l2-x": []}


def _record(attack_id: str, robust: list[float], traits: dict[str, bool], **info) -> dict:
    return {"attack": {"id": attack_id, "traits": traits}, "info": info,
            "per_example": {"clean_correct": [1.0] * len(robust), "robust_correct": robust},
            "summary": {"robust_accuracy": sum(robust) / len(robust)}}


def test_flags_follow_attack_traits_not_id_lists():
    """A new attack is counted by its declared traits: an adaptive attack nobody listed,
    and APGD (which runs on the adaptive view), both raise adaptive-beats-naive."""
    from gauntlet.benchmark.flags import compute_flags

    naive = _record("pgd", [1.0] * 10, {"naive_baseline": True}, zero_grad_fraction=0.0)
    for adaptive_id in ("apgd-ce", "brand-new-attack"):
        records = {"pgd": naive, adaptive_id: _record(adaptive_id, [0.0] * 5 + [1.0] * 5, {"adaptive": True})}
        flag = next(f for f in compute_flags(records) if f["id"] == "adaptive-beats-naive")
        assert flag["raised"] and flag["numbers"]["examples"] == 5, adaptive_id
    records = {"pgd": naive, "my-black-box": _record("my-black-box", [0.0] * 3 + [1.0] * 7, {"gradient_free": True})}
    flag = next(f for f in compute_flags(records) if f["id"] == "black-box-beats-white-box")
    assert flag["raised"] and flag["numbers"]["examples"] == 3


def test_flags_read_traits_of_old_records_from_the_registry():
    from gauntlet.benchmark.flags import compute_flags

    old = {"pgd": {"attack": {"id": "pgd"}, "info": {"zero_grad_fraction": 0.5},
                   "per_example": {"clean_correct": [1.0] * 4, "robust_correct": [1.0] * 4},
                   "summary": {"robust_accuracy": 1.0}}}
    flag = next(f for f in compute_flags(old) if f["id"] == "zero-gradients")
    assert flag["raised"]


def test_results_of_a_run_record_attack_traits(submissions, tmp_path):
    _run(submissions, tmp_path, attacks=("fgsm", "pgd"))
    for _, rec in iter_results(tmp_path):
        if rec["kind"] == "attack":
            from gauntlet.attacks.base import ATTACKS

            assert rec["attack"]["traits"] == ATTACKS.get(rec["attack"]["id"]).traits()
