"""Attack throughput: our PGD and EOT-PGD beside torchattacks' ``PGD`` and ``EOTPGD``.

What is compared (same process, same model, same examples, same ε, α and steps):

* **PGD**: :func:`gauntlet.attacks.pgd.pgd` on the plain view of ``SmallCNN`` (the committed
  ``standard-cnn-mnist`` weights, or a seeded random init when they are absent; speed
  does not depend on the weights) against ``torchattacks.PGD``, ℓ∞ ε = 0.031, early
  stopping off so both run the same number of forward/backward passes per step.
* **EOT**: a randomized defense (``RandomCropRescale`` in front of the same CNN); ours
  averages k draws in one batched pass of N·k rows, ``torchattacks.EOTPGD`` loops k
  separate passes. The same loop written with our own code (:class:`LoopEOTView`) gives
  the speed-up of batching alone.

Throughput is example·steps per second, counted identically for every contender
(N examples × steps; our extra clean-point query and final scoring pass count against
us). The CPU is shared, so each contender runs ``rounds`` times, interleaved, and the
reported ratio is the median of the per-round ratios.

Run ``python tests/benchmarks/test_bench_attacks.py`` (``--help`` for sizes) for a table,
or ``OMP_WAIT_POLICY=PASSIVE pytest tests/benchmarks/test_bench_attacks.py
--benchmark-enable -s`` (ratios in each benchmark's ``extra_info``; ``--benchmark-json
out.json`` keeps them). With the default ``--benchmark-disable`` every benchmark runs once
on a tiny batch, as a smoke test.

``OMP_WAIT_POLICY=PASSIVE`` (script mode sets it unless already set; it must be set before
torch starts): on a CPU shared with other busy processes, OpenMP's default spin-waiting at
the end of every parallel op makes 2 threads up to ~50× slower than 1 thread on small
batches, which swamps every other effect. It applies to all contenders alike.
torchattacks is an optional peer (``pip install gauntlet[peers]``); without it the
comparisons are skipped and our own numbers are still measured.
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # before torch starts OpenMP (see the module docstring)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import hashlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

import gauntlet.attacks.adaptive as adaptive
from gauntlet.attacks.adaptive import AdaptiveView
from gauntlet.attacks.pgd import pgd
from gauntlet.benchmark.datasets import get_dataset
from gauntlet.benchmark.registry import load_submission
from gauntlet.benchmark.sandbox import Sandbox, SandboxUnavailable, check_bwrap, open_defense
from gauntlet.benchmark.threats import ThreatModel
from gauntlet.defenses.models import SmallCNN
from gauntlet.defenses.pipeline import Defense
from gauntlet.defenses.randomized import RandomCropRescale

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "submissions" / "standard-cnn-mnist" / "weights.pt"
THREAT = ThreatModel("linf", 0.031)
#: α as a fraction of ε (Madry et al.'s 2.5/steps rule at 40 steps); torchattacks gets the raw α.
STEP_FRACTION = 2.5 / 40
HAS_PEER = importlib.util.find_spec("torchattacks") is not None
PEER_REASON = "torchattacks not installed (optional peer: pip install 'gauntlet[peers]')"

#: Full-size settings (``--benchmark-enable`` / script) and the smoke settings (disabled mode).
FULL = {"pgd": dict(n=256, steps=20, rounds=5), "eot": dict(n=32, k=10, steps=10, rounds=5)}
SMOKE = {"pgd": dict(n=4, steps=1, rounds=1, sandbox=False), "eot": dict(n=2, k=2, steps=1, rounds=1, sandbox=False)}


def load_model(width: int = 16, hidden: int = 128) -> nn.Module:
    """SmallCNN with the committed standard-cnn-mnist weights, or a seeded random init.

    Other sizes (``width``, ``hidden``) are always a seeded random init: e.g. width 32,
    hidden 1024 is the MNIST CNN of Madry et al., about 4× the FLOPs of ours.
    """
    torch.manual_seed(0)
    model = SmallCNN(width=width, hidden=hidden)
    if (width, hidden) == (16, 128) and WEIGHTS.is_file():
        manifest = (WEIGHTS.parent / "manifest.yaml").read_text()
        digest = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
        if digest in manifest:  # only the weights the manifest vouches for
            model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


def examples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` mnist-embedded test examples in evaluation order."""
    ds = get_dataset("mnist-embedded")
    x, y = ds.split("test")
    idx = ds.eval_indices(n)
    return x[idx], y[idx]


class LoopEOTView(AdaptiveView):
    """The EOT view computed the slow way: k separate passes of N rows, concatenated.

    Same values and gradient estimate as :class:`AdaptiveView` (k independent draws,
    loss averaged over them), used only to measure what batching the draws buys.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, self.eot = self.eot, 1
        try:
            return torch.cat([super(LoopEOTView, self).forward(x) for _ in range(k)])
        finally:
            self.eot = k


def _ours(view: AdaptiveView, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x_adv, _ = pgd(view, x, y, THREAT, steps=steps, step_size=STEP_FRACTION, restarts=1,
                   random_start=True, loss="ce", generator=gen, early_stop=False)
    return x_adv


def _alpha() -> float:
    return THREAT.step_size(784, STEP_FRACTION)


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, ``rounds`` times, alternating (after one warm-up)."""
    for fn in contenders.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def summarize(seconds: dict[str, list[float]], work: int, reference: str) -> dict[str, float]:
    """Median example·steps/s of each contender and median per-round speed-ups over others.

    ``speedup_<reference>_over_<other>`` = time(other) / time(reference) per round, median.
    """
    out = {f"{name}_example_steps_per_s": work / statistics.median(s) for name, s in seconds.items()}
    for name, s in seconds.items():
        if name != reference:
            ratios = [b / a for a, b in zip(seconds[reference], s)]
            out[f"speedup_{reference}_over_{name}"] = statistics.median(ratios)
    return out


def _plain_layout(view: AdaptiveView, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """Ours without the CPU layout tricks (NCHW classifier input, one pass per batch)."""
    view.channels_last, rows = False, adaptive.CPU_ROWS_PER_PASS
    adaptive.CPU_ROWS_PER_PASS = None
    try:
        return _ours(view, x, y, steps)
    finally:
        adaptive.CPU_ROWS_PER_PASS = rows


def _has_sandbox() -> bool:
    try:
        check_bwrap()
    except SandboxUnavailable:
        return False
    return True


@contextlib.contextmanager
def sandboxed(sub_id: str):
    """The reference submission ``sub_id`` served from its bubblewrap sandbox, as a run
    reaches it (:mod:`gauntlet.benchmark.remote`): attacks here, the defense there."""
    sub = load_submission(ROOT / "submissions" / sub_id / "manifest.yaml")
    sandbox = Sandbox(sub.folder)
    try:
        defense = open_defense(sub, "cpu", torch.get_num_threads(), sandbox)
        yield defense
        defense.close()
    finally:
        sandbox.close()


def _with_sandbox(contenders: dict, result_of: Callable[[dict], dict[str, float]], sub_id: str,
                  make: Callable[[object], Callable[[], object]], peer: bool) -> dict[str, float]:
    """``result_of(contenders)`` with ``ours_sandbox`` (``make(defense)``) among them, and its
    speed-up over torchattacks (the boundary's cost beside the peer) when ``peer``."""
    with sandboxed(sub_id) as defense:
        contenders["ours_sandbox"] = make(defense)
        result = result_of(contenders)
    result["sandbox_overhead"] = 1.0 / result["speedup_ours_over_ours_sandbox"] - 1.0
    if peer:
        result["speedup_ours_sandbox_over_torchattacks"] = (result["speedup_ours_over_torchattacks"]
                                                            / result["speedup_ours_over_ours_sandbox"])
    return result


def measure_pgd(n: int, steps: int, rounds: int, peer: bool = HAS_PEER,
                ablation: bool = False, model: nn.Module | None = None,
                sandbox: bool | None = None) -> dict[str, float]:
    """Our PGD (and torchattacks' when ``peer``) on SmallCNN (or ``model``), ℓ∞ 0.031, no
    early stop; ``ablation`` adds ours without channels-last and pass splitting (``ours_plain``);
    ``sandbox`` (default: when bubblewrap works here) adds ours on the sandboxed
    ``standard-cnn-mnist`` (``ours_sandbox``, the same SmallCNN)."""
    sandbox = (_has_sandbox() and model is None) if sandbox is None else sandbox
    model = load_model() if model is None else model
    x, y = examples(n)
    view = AdaptiveView(Defense(model))
    contenders: dict[str, Callable[[], object]] = {"ours": lambda: _ours(view, x, y, steps)}
    if ablation:
        plain = AdaptiveView(Defense(model))
        contenders["ours_plain"] = lambda: _plain_layout(plain, x, y, steps)
    if peer:
        import torchattacks

        atk = torchattacks.PGD(model, eps=THREAT.eps, alpha=_alpha(), steps=steps, random_start=True)
        contenders["torchattacks"] = lambda: atk(x, y)

    def result_of(c: dict) -> dict[str, float]:
        return summarize(interleaved(c, rounds), n * steps, "ours")

    if sandbox:
        result = _with_sandbox(contenders, result_of, "standard-cnn-mnist",
                               lambda d: (lambda v=AdaptiveView(d): _ours(v, x, y, steps)), peer)
    else:
        result = result_of(contenders)
    return {**result, "n": n, "steps": steps, "rounds": rounds, **_environment()}


def measure_eot(n: int, k: int, steps: int, rounds: int, peer: bool = HAS_PEER,
                sandbox: bool | None = None) -> dict[str, float]:
    """EOT-PGD with k draws per gradient on RandomCropRescale + SmallCNN, ℓ∞ 0.031;
    ``sandbox`` adds ours on the sandboxed ``guo2018-crop-rescale`` (the same steps and
    architecture, its own weights: speed does not depend on them)."""
    sandbox = _has_sandbox() if sandbox is None else sandbox
    defense = Defense(load_model(), steps=[RandomCropRescale(24)]).eval()
    x, y = examples(n)
    batched, looped = AdaptiveView(defense, eot=k), LoopEOTView(defense, eot=k)
    contenders: dict[str, Callable[[], object]] = {
        "ours": lambda: _ours(batched, x, y, steps),
        "ours_loop": lambda: _ours(looped, x, y, steps),
    }
    if peer:
        import torchattacks

        atk = torchattacks.EOTPGD(defense, eps=THREAT.eps, alpha=_alpha(), steps=steps, eot_iter=k,
                                  random_start=True)
        contenders["torchattacks"] = lambda: atk(x, y)

    def result_of(c: dict) -> dict[str, float]:
        return summarize(interleaved(c, rounds), n * steps, "ours")

    if sandbox:
        result = _with_sandbox(contenders, result_of, "guo2018-crop-rescale",
                               lambda d: (lambda v=AdaptiveView(d, eot=k): _ours(v, x, y, steps)), peer)
    else:
        result = result_of(contenders)
    return {**result, "n": n, "k": k, "steps": steps, "rounds": rounds, **_environment()}


def _environment() -> dict[str, object]:
    return {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}


def _settings(benchmark, kind: str) -> dict:
    return SMOKE[kind] if benchmark.disabled else FULL[kind]


def _record(benchmark, result: dict[str, float]) -> None:
    benchmark.extra_info.update(result)
    if not benchmark.disabled:
        print("\n" + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in result.items()))


def test_bench_pgd_ours(benchmark):
    result = benchmark.pedantic(measure_pgd, kwargs={**_settings(benchmark, "pgd"), "peer": False},
                                rounds=1, iterations=1)
    _record(benchmark, result)
    assert result["ours_example_steps_per_s"] > 0


@pytest.mark.skipif(not HAS_PEER, reason=PEER_REASON)
def test_bench_pgd_vs_torchattacks(benchmark):
    result = benchmark.pedantic(measure_pgd, kwargs={**_settings(benchmark, "pgd"), "peer": True},
                                rounds=1, iterations=1)
    _record(benchmark, result)
    assert result["speedup_ours_over_torchattacks"] > 0


def test_bench_eot_batched_vs_loop(benchmark):
    result = benchmark.pedantic(measure_eot, kwargs={**_settings(benchmark, "eot"), "peer": False},
                                rounds=1, iterations=1)
    _record(benchmark, result)
    assert result["speedup_ours_over_ours_loop"] > 0


@pytest.mark.skipif(not HAS_PEER, reason=PEER_REASON)
def test_bench_eot_vs_torchattacks(benchmark):
    result = benchmark.pedantic(measure_eot, kwargs={**_settings(benchmark, "eot"), "peer": True},
                                rounds=1, iterations=1)
    _record(benchmark, result)
    assert result["speedup_ours_over_torchattacks"] > 0


def main(argv: list[str] | None = None) -> None:
    """Print both comparisons as a table (script mode)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=FULL["pgd"]["n"], help="PGD examples")
    parser.add_argument("--steps", type=int, default=FULL["pgd"]["steps"], help="PGD steps")
    parser.add_argument("--eot-n", type=int, default=FULL["eot"]["n"], help="EOT examples")
    parser.add_argument("--k", type=int, default=FULL["eot"]["k"], help="EOT draws per gradient")
    parser.add_argument("--eot-steps", type=int, default=FULL["eot"]["steps"], help="EOT steps")
    parser.add_argument("--rounds", type=int, default=FULL["pgd"]["rounds"], help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--only", choices=("pgd", "eot"), help="run one comparison")
    parser.add_argument("--ablation", action="store_true", help="also time ours without layout tricks")
    parser.add_argument("--width", type=int, default=16,
                        help="PGD model: SmallCNN conv width (32 with --hidden 1024: Madry et al.'s CNN)")
    parser.add_argument("--hidden", type=int, default=128, help="PGD model: SmallCNN hidden units")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not HAS_PEER:
        print(f"note: {PEER_REASON}; measuring ours only")
    runs = []
    if args.only in (None, "pgd"):
        model = load_model(args.width, args.hidden)
        runs.append((f"PGD (SmallCNN width {args.width}, hidden {args.hidden})",
                     measure_pgd(args.n, args.steps, args.rounds, ablation=args.ablation, model=model)))
    if args.only in (None, "eot"):
        runs.append((f"EOT k={args.k}", measure_eot(args.eot_n, args.k, args.eot_steps, args.rounds)))
    for title, result in runs:
        print(f"== {title}")
        for key, value in result.items():
            print(f"  {key:40s} {value:.3g}" if isinstance(value, float) else f"  {key:40s} {value}")


if __name__ == "__main__":
    sys.exit(main())
