"""The Ray executor's overhead per job, beside the local executor's, measured side by side.

What is compared: one trivial job (``tests.fixtures.hostile.jobs:add``, no torch) sent
to a :class:`~gauntlet.benchmark.isolation.JobRunner` worker directly (the local executor's
path: a pipe round trip) and through a Ray actor that hosts the same kind of runner
(:class:`gauntlet.benchmark.ray_executor.LaneHost`: a Ray task round trip, then the same pipe).
The difference is what Ray adds to every job; Ray's start-up and each lane's actor
start-up (the actor's own fork server imports torch once) are reported separately.

Run ``pytest tests/benchmarks/test_bench_executors.py -m slow -s`` (figures printed and
in the benchmark's ``extra_info``), or ``python tests/benchmarks/test_bench_executors.py``.
"""
from __future__ import annotations

import os
import statistics
import time

import pytest

JOB = "tests.fixtures.hostile.jobs:add"


def _per_job(call, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        call(i)
    return (time.perf_counter() - start) / n


def measure(n: int = 200, rounds: int = 3) -> dict[str, float]:
    """Seconds per job (medians over interleaved rounds) and the start-up costs."""
    ray = pytest.importorskip("ray")
    from gauntlet.benchmark.isolation import JobRunner
    from gauntlet.benchmark.ray_executor import LaneHost

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throw-away local cluster
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, num_cpus=2)
    out["ray_init_s"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        host = ray.remote(LaneHost).options(num_cpus=1, max_concurrency=2).remote(60.0, 2000, "cpu", 1)
        assert ray.get(host.run.remote(JOB, (1,))).ok
        out["lane_start_s"] = time.perf_counter() - t0
        with JobRunner(60, 2000, "cpu", preload=()) as local:
            assert local.call(JOB, 1).ok
            pairs = [(_per_job(lambda i: local.call(JOB, i), n),
                      _per_job(lambda i: ray.get(host.run.remote(JOB, (i,))), n)) for _ in range(rounds)]
        out["local_s"] = statistics.median(p[0] for p in pairs)
        out["ray_s"] = statistics.median(p[1] for p in pairs)
        out["overhead_s"] = statistics.median(p[1] - p[0] for p in pairs)
        ray.kill(host)
    finally:
        ray.shutdown()
    return out


@pytest.mark.slow
def test_ray_adds_little_per_job(benchmark):
    """Ray's per-job overhead is a few milliseconds: under 1% of a 2-second job (the
    quick profile's attack jobs take seconds to minutes, docs/speed.md)."""
    if os.environ.get("RAY_ADDRESS"):
        pytest.skip("measures a local cluster")
    figures = benchmark.pedantic(measure, kwargs={"n": 100}, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print({k: round(v * 1e3, 2) if k.endswith("_s") and v < 1 else round(v, 2) for k, v in figures.items()})
    assert figures["overhead_s"] < 0.02, figures


if __name__ == "__main__":
    f = measure()
    print(f"per job: local {f['local_s'] * 1e3:.2f} ms, Ray {f['ray_s'] * 1e3:.2f} ms, "
          f"overhead {f['overhead_s'] * 1e3:.2f} ms; ray.init {f['ray_init_s']:.1f} s, "
          f"lane (actor + fork server + first job) {f['lane_start_s']:.1f} s")
