"""Gauntlet's whole attack suite beside AutoAttack's "standard" evaluation, side by side.

Run with ``AUTOATTACK_DIR=/work/peers/auto-attack pytest
tests/benchmarks/test_bench_autoattack.py --benchmark-enable -s`` (``BENCH_EXAMPLES``:
examples per run, default 100; the full grid, 3 models × 4 threats, takes about half an
hour on two cores). ``AUTOATTACK_DIR`` is the folder holding the ``autoattack`` package of
a checkout of github fra31/auto-attack (Croce & Hein, ICML 2020), never vendored here and
not a dependency; it is put on ``sys.path`` inside the test only. Without it every
comparison is skipped.

Per (model, threat), back to back in one process (the CPU may be shared), on the same
defense module and the first ``BENCH_EXAMPLES`` examples of mnist-embedded's fixed
evaluation order (those a run scores):

* **Gauntlet**: :func:`gauntlet.benchmark.runner.run` of that one submission at that one threat,
  every registered attack (cascade on, no sweep, no certificate, in-process, one
  worker), timed whole: building the defense, clean scoring, every attack, the ε = ∞ PGD
  run the runner always adds, and the flags. Its robust accuracy is the per-example worst
  case over the threat's attack files (an example the cascade skipped, ``null``, was
  already broken by an earlier attack); the ``linf-inf`` folder is timed, not counted.
* **AutoAttack**: ``AutoAttack(model, norm, eps=raw radius, version='standard',
  seed=0)`` (APGD-CE, APGD-T with 9 targets, FAB-T with 9 targets, Square with 5,000
  queries), ``run_standard_evaluation(x, y, bs=N)`` timed; its robust accuracy is the
  model's accuracy on the returned examples. ``seed=0`` (AutoAttack's default draws its
  seed from the clock) makes a rerun reproducible.

ℓ2: Gauntlet's ε is per input value (root-mean-square), so ``l2-0.005`` is AutoAttack's
``eps = 0.005·√784 = 0.14``.

Targets asserted: Gauntlet's wall time ≤ 0.5 × AutoAttack's, and Gauntlet's robust
accuracy ≤ AutoAttack's + 1/N.

Shims (in this file, AutoAttack's code unchanged):

* The thermometer encoding's forward is a hard threshold (``x > k/l``): the logits have
  no autograd path to the input, and AutoAttack's gradient attacks (``autograd.grad`` in
  APGD, ``backward`` in FAB) raise "element 0 of tensors does not require grad". The
  wrapper adds a zero-gradient path (``+ 0·Σx``), so those attacks run and see the true
  gradient, zero almost everywhere (shattered gradients, Athalye et al. 2018), as they
  would on a TF graph whose threshold op has no gradient; logits and Square (no
  gradients) are unchanged. AutoAttack is not given Gauntlet's BPDA view: "standard"
  means the model as it is.
* pyproject turns warnings into errors for our code; warnings raised inside AutoAttack's
  run are recorded and printed, not raised (its own checks print through its logger).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from gauntlet.benchmark.datasets import get_dataset
from gauntlet.benchmark.flags import worst_case_accuracy
from gauntlet.benchmark.registry import build_defense, load_submission
from gauntlet.benchmark.runner import RunConfig, run
from gauntlet.benchmark.threats import get_threat

ROOT = Path(__file__).resolve().parents[2]
SUBMISSIONS = ROOT / "submissions"
DATASET = "mnist-embedded"
MODELS = ("standard-cnn-mnist", "madry2018-pgd-at", "buckman2018-thermometer-at")
THREATS = ("linf-0.031", "linf-0.1", "linf-0.3", "l2-0.005")
EXAMPLES = int(os.environ.get("BENCH_EXAMPLES", "100"))
#: Target: Gauntlet's wall time at most this fraction of AutoAttack's.
TIME_RATIO = 0.5
#: Slack when checking AutoAttack's examples are in the ball (float32 ℓ2 projection).
BALL_TOL = 1e-5


@pytest.fixture
def autoattack_cls(monkeypatch):
    folder = os.environ.get("AUTOATTACK_DIR")
    if not folder or not (Path(folder) / "autoattack" / "autoattack.py").is_file():
        pytest.skip("set AUTOATTACK_DIR to a checkout of fra31/auto-attack (the folder holding autoattack/)")
    monkeypatch.syspath_prepend(folder)
    from autoattack import AutoAttack

    return AutoAttack


@pytest.fixture(scope="module")
def examples() -> tuple[torch.Tensor, torch.Tensor]:
    """The first EXAMPLES of the fixed evaluation order (what ``SubmissionRun`` scores)."""
    ds = get_dataset(DATASET)
    x, y = ds.split("test")
    idx = ds.eval_indices(EXAMPLES)
    return x[idx], y[idx]


@pytest.fixture(scope="module")
def table():
    """Rows of the comparison, printed together when the module ends (``-s``)."""
    rows: list[dict] = []
    yield rows
    if rows:
        print("\n" + _format(rows))


class _Logits(nn.Module):
    """The defense's exact forward (plain logits, (N, 10)), with a zero-gradient path to
    the input where it has none (the thermometer's threshold; see the module docstring)."""

    def __init__(self, defense: nn.Module) -> None:
        super().__init__()
        self.defense = defense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.defense(x)
        if x.requires_grad and torch.is_grad_enabled() and not out.requires_grad:
            out = out + 0.0 * x.sum()
        return out


def _gauntlet(sub_id: str, threat_id: str, n: int, results: Path) -> tuple[object, float]:
    cfg = RunConfig(submissions_dir=SUBMISSIONS, defenses=(sub_id,), threats=(threat_id,), n_examples=n,
                    device="cpu", sweep=False, certify=False, isolate=False, workers=1, results_dir=results)
    t0 = time.perf_counter()
    summary = run(cfg, progress=False)
    return summary, time.perf_counter() - t0


def _gauntlet_worst_case(results: Path, sub_id: str, threat_id: str) -> tuple[float, list[str], int]:
    """(robust accuracy, attack ids, examples): the per-example worst case over the threat's
    attack files (:func:`gauntlet.benchmark.flags.worst_case_accuracy`, nulls skipped). Only the
    threat's own folder is read, so ``linf-inf`` is left out."""
    records: dict[str, dict] = {}
    for path in sorted((results / DATASET / sub_id / threat_id).glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("kind") == "attack":
            records[path.stem] = record  # <threat>/<attack>.json
    assert records, f"no attack results under {results / DATASET / sub_id / threat_id}"
    n = len(next(iter(records.values()))["per_example"]["robust_correct"])
    return worst_case_accuracy(list(records.values())), sorted(records), n


def _autoattack(autoattack_cls, model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                eps: float) -> tuple[torch.Tensor, float, list[str]]:
    adversary = autoattack_cls(model, norm=norm, eps=eps, version="standard", seed=0, verbose=False,
                               device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        x_adv = adversary.run_standard_evaluation(x, y, bs=len(x))
        seconds = time.perf_counter() - t0
    return x_adv, seconds, sorted({f"{w.category.__name__}: {w.message}" for w in caught})


def _autoattack_accuracy(model: nn.Module, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                         norm: str, eps: float) -> tuple[float, int]:
    """(robust accuracy, invalid examples): the model's accuracy on AutoAttack's examples; a
    returned example outside the box or the ball (counted and printed) is no adversarial
    example, so it counts as robust if the clean point is correctly classified."""
    with torch.no_grad():
        correct = model(x_adv).argmax(1) == y
        clean = model(x).argmax(1) == y
    flat = (x_adv - x).double().reshape(len(x), -1)
    dist = flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)
    valid = (torch.isfinite(x_adv.reshape(len(x), -1)).all(1) & (dist <= eps + BALL_TOL)
             & (x_adv.reshape(len(x), -1).amin(1) >= -1e-6) & (x_adv.reshape(len(x), -1).amax(1) <= 1 + 1e-6))
    robust = torch.where(valid, correct, clean)
    return robust.float().mean().item(), int((~valid).sum())


def _format(rows: list[dict]) -> str:
    head = (f"{'model':28s} {'threat':10s} {'raw ε':>6s} {'Gauntlet s':>10s} {'AutoAttack s':>12s} "
            f"{'ratio':>6s} {'Gauntlet acc':>12s} {'AutoAttack acc':>14s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:28s} {r['threat']:10s} {r['eps']:6.3g} {r['gauntlet_seconds']:10.1f} "
                     f"{r['autoattack_seconds']:12.1f} {r['ratio']:6.2f} {r['gauntlet_accuracy']:12.2f} "
                     f"{r['autoattack_accuracy']:14.2f}")
    return "\n".join(lines)


@pytest.mark.parametrize("threat_id", THREATS)
@pytest.mark.parametrize("sub_id", MODELS)
def test_bench_gauntlet_versus_autoattack(benchmark, autoattack_cls, examples, table, tmp_path, sub_id,
                                          threat_id):
    x, y = examples
    n = len(x)
    threat = get_threat(threat_id)
    eps = threat.radius(x[0].numel())
    norm = {"linf": "Linf", "l2": "L2"}[threat.norm]
    results = tmp_path / "results"

    summary, gauntlet_s = benchmark.pedantic(_gauntlet, args=(sub_id, threat_id, n, results),
                                             rounds=1, iterations=1)
    assert not summary.errors, summary.errors
    gauntlet_acc, attacks, scored = _gauntlet_worst_case(results, sub_id, threat_id)
    assert scored == n

    model = _Logits(build_defense(load_submission(SUBMISSIONS / sub_id / "manifest.yaml"), torch.device("cpu")))
    model.eval()
    with torch.no_grad():
        assert model(x[:2]).shape == (2, 10)
    x_adv, autoattack_s, caught = _autoattack(autoattack_cls, model, x, y, norm, eps)
    autoattack_acc, invalid = _autoattack_accuracy(model, x_adv, x, y, norm, eps)

    row = {"model": sub_id, "threat": threat_id, "eps": eps, "gauntlet_seconds": gauntlet_s,
           "autoattack_seconds": autoattack_s, "ratio": gauntlet_s / autoattack_s,
           "gauntlet_accuracy": gauntlet_acc, "autoattack_accuracy": autoattack_acc}
    table.append(row)
    benchmark.extra_info.update({**row, "examples": n, "gauntlet_attacks": attacks,
                                 "autoattack_invalid_examples": invalid, "autoattack_warnings": caught,
                                 "threads": torch.get_num_threads(),
                                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")})
    print(f"\n{_format([row]).splitlines()[-1]}  [{n} examples, {torch.get_num_threads()} threads; "
          f"Gauntlet attacks: {', '.join(attacks)}]")
    for line in caught:
        print(f"  AutoAttack warning: {line}")
    if invalid:
        print(f"  AutoAttack returned {invalid} example(s) outside the threat model (counted as not broken)")

    assert gauntlet_s <= TIME_RATIO * autoattack_s, (
        f"Gauntlet {gauntlet_s:.1f}s > {TIME_RATIO} × AutoAttack {autoattack_s:.1f}s")
    # One example of slack: both sides draw their random starts and proposals differently,
    # so on a point at the edge either may find or miss the adversarial example.
    assert gauntlet_acc <= autoattack_acc + 1 / n + 1e-9, (
        f"Gauntlet robust accuracy {gauntlet_acc:.3f} > AutoAttack {autoattack_acc:.3f} + 1/{n}")
