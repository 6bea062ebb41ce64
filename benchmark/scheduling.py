"""Where and in what order a run's jobs execute: the job runner of each worker, how many
workers and threads, the submissions' scheduling order, and the worker threads.

The runner (:mod:`benchmark.runner`) decides *what* runs; this module decides *where*.
Results never depend on it: every job seeds itself from its run id.
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Callable

import torch

from benchmark.profiles import Profile

if TYPE_CHECKING:
    from benchmark.registry import Submission
    from benchmark.config import RunConfig


def worker_plan(cfg: RunConfig, device: torch.device, n_submissions: int) -> tuple[int, int | None]:
    """(parallel workers, torch threads per worker).

    On CPU, small-batch attacks use two threads poorly, so one single-threaded worker
    per core does more work than one worker using every core. In-process runs stay
    sequential: jobs seed the process-wide RNG. One GPU gets one worker.

    Raises:
        ValueError: a non-positive ``cfg.workers``.
    """
    if cfg.workers is not None and cfg.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {cfg.workers}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not cfg.isolate:
        workers = 1
    elif cfg.workers is not None:
        workers = cfg.workers
    else:
        workers = cores if device.type == "cpu" else 1
    workers = max(1, min(workers, n_submissions))
    threads = max(1, cores // workers) if workers > 1 and device.type == "cpu" else None
    return workers, threads


def job_runner(cfg: RunConfig, device: torch.device, profile: Profile, threads: int | None = None) -> Any:
    """Where jobs run: a child process with the profile's limits, or in-process."""
    from benchmark.isolation import InProcessRunner, JobRunner

    timeout = cfg.job_timeout_s or profile.job_timeout_s
    memory = cfg.job_memory_mb or profile.job_memory_mb
    if not cfg.isolate:
        return InProcessRunner(timeout, memory)
    return JobRunner(timeout, memory, str(device), preload=("benchmark.runner",), threads=threads,
                     start_method="forkserver")


def cost_rank(sub: Submission) -> int:
    """Scheduling order, so that parallel workers finish together: first the defenses that
    declare themselves expensive (an example limit), then randomized or rejecting ones
    (EOT attacks, R scoring draws, detectors), then the rest."""
    m = sub.manifest
    if m.example_limits:
        return 0
    return 1 if m.properties.randomized or m.properties.rejects else 2


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Run each target in a daemon thread; re-raise the first exception in this thread.

    Daemon threads, not an executor: on Ctrl-C the main thread leaves at once, and the
    worker processes die with their parent (nothing half-written is kept: result files
    are written atomically).
    """
    failures: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as e:  # re-raised in the main thread below
            failures.append(e)

    threads = [threading.Thread(target=guarded, args=(t,), name=f"gauntlet-worker-{i}", daemon=True)
               for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    if failures:
        raise failures[0]
