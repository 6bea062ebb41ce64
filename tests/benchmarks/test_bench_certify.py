"""Certification throughput: our batched CERTIFY, and Cohen et al.'s reference beside it.

Run with ``pytest tests/benchmarks/test_bench_certify.py --benchmark-enable -s``
(``CERTIFY_BENCH_ROUNDS``: interleaved rounds of the comparison, medians reported).
The comparison with the reference ``Smooth.certify`` (github locuslab/smoothing,
``code/core.py``) runs when ``COHEN_SMOOTHING_DIR`` points at a checkout of its ``code/``
folder (never vendored here). Both run back to back in one process on the same base
model, examples, n0, n, α and batch, since the CPU may be shared. Two shims let the
reference run on today's stack without changing what it computes: SciPy ≥ 1.12 dropped
``scipy.stats.binom_test`` (imported, used only by ``predict``), and ``_sample_noise``
hard-codes ``device='cuda'`` in ``torch.randn_like``, which is redirected to the input's
device when CUDA is absent.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gauntlet.benchmark.certification.smoothing import certify
from gauntlet.benchmark.datasets import get_dataset
from gauntlet.defenses.models import SmallCNN

ROOT = Path(__file__).resolve().parents[2]
SUBMISSION = ROOT / "submissions" / "cohen2019-smoothing-s025" / "manifest.yaml"
SIGMA, N0, N, ALPHA, BATCH = 0.25, 100, 1000, 0.001, 1000
EXAMPLES = 8


@pytest.fixture(scope="module")
def base_and_examples():
    if SUBMISSION.is_file():
        from gauntlet.benchmark.registry import build_classifier, load_submission

        model = build_classifier(load_submission(SUBMISSION))
    else:
        torch.manual_seed(0)
        model = SmallCNN()
    model.eval()
    x, y = get_dataset("mnist-embedded").split("test")
    return model, x[:EXAMPLES], y[:EXAMPLES]


def _ours(model, x):
    gen = torch.Generator().manual_seed(0)
    return certify(model, x, sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, batch=BATCH, generator=gen)


def test_bench_our_noise_samples_per_second(benchmark, base_and_examples):
    model, x, _ = base_and_examples
    cert = benchmark.pedantic(_ours, args=(model, x), rounds=1, iterations=1)
    assert len(cert.radius) == EXAMPLES
    if benchmark.stats is not None:
        seconds = benchmark.stats.stats.mean
        benchmark.extra_info["samples_per_second"] = EXAMPLES * (N0 + N) / seconds


class _TorchOnInputDevice:
    """``torch`` for the reference module, with ``randn_like(..., device='cuda')`` kept on
    the input's device (the reference hard-codes CUDA)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def randn_like(t, device=None, **kwargs):
        return torch.randn_like(t, **kwargs)


def _load_reference(code_dir: Path):
    pytest.importorskip("statsmodels")
    import scipy.stats

    if not hasattr(scipy.stats, "binom_test"):
        scipy.stats.binom_test = lambda k, n, p: scipy.stats.binomtest(int(k), int(n), p).pvalue
    spec = importlib.util.spec_from_file_location("cohen_smoothing_core", code_dir / "core.py")
    core = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = core
    spec.loader.exec_module(core)
    if not torch.cuda.is_available():
        core.torch = _TorchOnInputDevice()
    return core


def test_bench_ours_versus_cohen_reference(benchmark, base_and_examples):
    code_dir = os.environ.get("COHEN_SMOOTHING_DIR")
    if not code_dir or not (Path(code_dir) / "core.py").is_file():
        pytest.skip("set COHEN_SMOOTHING_DIR to a checkout of locuslab/smoothing's code/ folder")
    core = _load_reference(Path(code_dir))
    model, x, _ = base_and_examples
    smooth = core.Smooth(model, num_classes=10, sigma=SIGMA)
    rounds = int(os.environ.get("CERTIFY_BENCH_ROUNDS", "3"))

    def theirs():
        torch.manual_seed(0)
        out = [smooth.certify(x[i], N0, N, ALPHA, BATCH) for i in range(len(x))]
        return np.array([p for p, _ in out]), np.array([r for _, r in out])

    def interleaved():
        """Ours and theirs alternately (the order swapped every round), ``rounds`` each."""
        times = {"ours": [], "theirs": []}
        for r in range(rounds):
            for name in (("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")):
                t0 = time.perf_counter()
                out = _ours(model, x) if name == "ours" else theirs()
                times[name].append(time.perf_counter() - t0)
                if name == "ours":
                    ours = out
                else:
                    ref = out
        return ours, ref, float(np.median(times["ours"])), float(np.median(times["theirs"]))

    ours, (ref_pred, ref_radius), ours_s, ref_s = benchmark.pedantic(interleaved, rounds=1, iterations=1)
    samples = EXAMPLES * (N0 + N)
    benchmark.extra_info.update({"ours_seconds": ours_s, "reference_seconds": ref_s,
                                 "ours_samples_per_second": samples / ours_s,
                                 "reference_samples_per_second": samples / ref_s,
                                 "speedup": ref_s / ours_s, "rounds": rounds,
                                 "examples": EXAMPLES, "n0": N0, "n": N})
    print(f"\nCERTIFY on {EXAMPLES} examples, n0={N0}, n={N}, batch={BATCH}, medians of {rounds} "
          f"interleaved rounds: ours {ours_s:.2f}s ({samples / ours_s:,.0f} samples/s), reference "
          f"{ref_s:.2f}s ({samples / ref_s:,.0f} samples/s), ratio {ref_s / ours_s:.2f}x")
    # the same algorithm on the same model: the answers agree up to Monte-Carlo noise
    assert np.mean(ours.prediction.numpy() == ref_pred) >= 0.75
    assert np.abs(ours.radius - ref_radius).mean() < 0.1


def test_bench_sequential_mode_saving(benchmark, base_and_examples):
    """Samples the staged test of "radius ≥ r?" (at the l2-0.005 radius on MNIST, 0.14)
    saves against full CERTIFY on the same examples, n and α."""
    from gauntlet.benchmark.certification.sequential import certify_sequential

    model, x, _ = base_and_examples

    def staged():
        gen = torch.Generator().manual_seed(0)
        return certify_sequential(model, x, radii=[0.14], sigma=SIGMA, n0=N0, n=N, alpha=ALPHA,
                                  batch=BATCH, generator=gen)

    cert = benchmark.pedantic(staged, rounds=1, iterations=1)
    used, full = int(np.sum(cert.samples)), EXAMPLES * (N0 + N)
    assert 0 < used <= full
    benchmark.extra_info.update(samples_used=used, samples_full=full, saved_fraction=1 - used / full)
    print(f"sequential mode: {used} of {full} samples ({1 - used / full:.0%} saved)")
