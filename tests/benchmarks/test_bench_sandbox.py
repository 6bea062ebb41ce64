"""What the trust boundary costs: PGD and EOT-PGD on a sandboxed defense against the same
defense built in this process (issue 15: at most 10% on the SmallCNN at batch 128).

Both contenders run :func:`gauntlet.attacks.pgd.pgd` on :class:`gauntlet.attacks.adaptive.AdaptiveView` of
the same submission, same examples, same steps; the sandboxed one reaches its defense
through :mod:`gauntlet.benchmark.remote` (a forward and a VJP per step over shared memory, the
server in bubblewrap). The CPU is shared, so the contenders alternate for ``rounds``
rounds and the ratio is the median of the per-round ratios. Start-up (the sandbox's
~4 s torch import) is not part of a step and is excluded; the run's figure for it is in
docs/security.md.

``python tests/benchmarks/test_bench_sandbox.py`` prints the table; under pytest with
``--benchmark-enable`` the ratio is asserted (≤ 1.10) and kept in ``extra_info``.
"""
from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import statistics
import time
from pathlib import Path

import pytest
import torch

from gauntlet.attacks.adaptive import AdaptiveView
from gauntlet.attacks.pgd import pgd
from gauntlet.benchmark.datasets import get_dataset
from gauntlet.benchmark.registry import build_defense, load_submission
from gauntlet.benchmark.sandbox import Sandbox, SandboxUnavailable, check_bwrap, open_defense
from gauntlet.benchmark.threats import ThreatModel

ROOT = Path(__file__).resolve().parents[2]


def _examples(n: int):
    x, y = get_dataset("mnist-embedded").split("test")
    return x[:n], y[:n]


def _attack(defense, x, y, steps: int, eot: int) -> float:
    torch.manual_seed(0)
    threat = ThreatModel("linf", 0.031)
    t0 = time.perf_counter()
    pgd(AdaptiveView(defense, bpda=True, eot=eot), x, y, threat, steps=steps, step_size=0.25, restarts=1,
        random_start=True, loss="ce", generator=torch.Generator().manual_seed(0), early_stop=False)
    return time.perf_counter() - t0


def measure(sub_id: str, n: int = 128, steps: int = 10, eot: int = 1, rounds: int = 5) -> dict:
    check_bwrap()
    sub = load_submission(ROOT / "submissions" / sub_id / "manifest.yaml")
    local = build_defense(sub, "cpu")
    sandbox = Sandbox(sub.folder)
    remote = open_defense(sub, "cpu", torch.get_num_threads(), sandbox)
    x, y = _examples(n)
    try:
        _attack(local, x, y, 1, eot), _attack(remote, x, y, 1, eot)  # warm-up
        ratios, times = [], {"in-process": [], "sandbox": []}
        for _ in range(rounds):
            a = _attack(local, x, y, steps, eot)
            b = _attack(remote, x, y, steps, eot)
            times["in-process"].append(a)
            times["sandbox"].append(b)
            ratios.append(b / a)
    finally:
        remote.close()
        sandbox.close()
    return {"submission": sub_id, "n": n, "steps": steps, "eot": eot,
            "in_process_s": statistics.median(times["in-process"]), "sandbox_s": statistics.median(times["sandbox"]),
            "overhead": statistics.median(ratios) - 1.0}


CASES = [("standard-cnn-mnist", 1), ("xie2018-randomization", 4)]


@pytest.mark.parametrize("sub_id,eot", CASES)
def test_bench_sandbox_overhead(benchmark, sub_id, eot):
    try:
        check_bwrap()
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    enabled = not benchmark.disabled
    kw = {"n": 128, "steps": 10, "rounds": 5} if enabled else {"n": 8, "steps": 1, "rounds": 1}
    result = benchmark.pedantic(measure, args=(sub_id,), kwargs={**kw, "eot": eot}, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    if enabled and sub_id == "standard-cnn-mnist":
        assert result["overhead"] <= 0.10, result


if __name__ == "__main__":
    for sub_id, eot in CASES:
        r = measure(sub_id, eot=eot)
        print(f"{sub_id:24s} eot={eot}  in-process {r['in_process_s']:.3f} s  sandbox {r['sandbox_s']:.3f} s  "
              f"overhead {100 * r['overhead']:+.1f}%")
