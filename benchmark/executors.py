"""The executors for one machine, and the choice among all of them (:func:`make_executor`).

* :class:`InProcessExecutor`: in this process and thread (debugging, ``--no-isolation``).
* :class:`LocalExecutor`: worker processes with time and memory limits
  (:class:`~gauntlet.benchmark.isolation.JobRunner`), one per slot.
* :class:`gauntlet.benchmark.ray_executor.RayExecutor`: a Ray actor per lane, each hosting a
  :class:`~gauntlet.benchmark.isolation.JobRunner` on its node.

What they share (lanes, slots, retries, the protocol) is in :mod:`gauntlet.benchmark.lanes`.
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from gauntlet.benchmark.isolation import InProcessRunner, JobOutcome, JobRunner
from gauntlet.benchmark.lanes import ENTRY, LaneExecutor, Task

if TYPE_CHECKING:
    from gauntlet.benchmark.config import RunConfig
    from gauntlet.benchmark.profiles import Profile

EXECUTORS = ("local", "in-process", "ray")


class InProcessExecutor(LaneExecutor):
    """Every job in this process and thread, in order: no limits, a hang hangs the run;
    for debugging (a breakpoint in a defense works) and fast tests."""

    def __init__(self, timeout_s: float, memory_mb: int) -> None:
        super().__init__(1, timeout_s, memory_mb, retries=0)
        self._runner = InProcessRunner(timeout_s, memory_mb)
        self._started: deque[Task] = deque()

    def _acquire(self, lane: str) -> Any | None:
        return None if self._active else lane

    def _release(self, lane: str, slot: Any) -> None:
        from gauntlet.benchmark.worker import release

        release()  # the lane's submission is done: stop its sandboxes now

    def _start(self, slot: Any, task: Task) -> None:
        self._started.append(task)

    def _collect(self) -> tuple[Task, JobOutcome]:
        task = self._started.popleft()
        return task, self._runner.run(ENTRY, task.args)


class _Slot:
    """A thread that owns one :class:`JobRunner` and runs its tasks one at a time."""

    def __init__(self, make_runner: Any, done: queue.Queue, index: int) -> None:
        self.inbox: queue.Queue = queue.Queue()
        self._make_runner, self._done = make_runner, done
        self.thread = threading.Thread(target=self._loop, name=f"gauntlet-slot-{index}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        with self._make_runner() as runner:
            while (task := self.inbox.get()) is not None:
                try:
                    outcome = runner.run(ENTRY, task.args)
                except BaseException as e:  # noqa: BLE001 - a harness failure still answers
                    outcome = JobOutcome(False, None, f"{type(e).__name__}: {e}", "crash", 0.0)
                self._done.put((task, outcome))


class LocalExecutor(LaneExecutor):
    """Jobs in worker processes on this machine, ``slots`` lanes at once, each job within
    the wall-clock and memory limits (:class:`~gauntlet.benchmark.isolation.JobRunner`)."""

    def __init__(self, slots: int, timeout_s: float, memory_mb: int, device: str = "cpu",
                 threads: int | None = None, preload: tuple[str, ...] = ("gauntlet.benchmark.jobs",)) -> None:
        super().__init__(slots, timeout_s, memory_mb)
        self._done: queue.Queue = queue.Queue()

        def make_runner() -> JobRunner:
            return JobRunner(timeout_s, memory_mb, device, preload=preload, threads=threads,
                             start_method="forkserver")

        self._free = [_Slot(make_runner, self._done, i) for i in range(slots)]
        self._all = list(self._free)

    def _acquire(self, lane: str) -> Any | None:
        return self._free.pop(0) if self._free else None

    def _release(self, lane: str, slot: Any) -> None:
        self._free.append(slot)

    def _start(self, slot: Any, task: Task) -> None:
        slot.inbox.put(task)

    def _collect(self) -> tuple[Task, JobOutcome]:
        return self._done.get()

    def close(self) -> None:
        super().close()
        for slot in self._all:
            slot.inbox.put(None)
        for slot in self._all:
            slot.thread.join(15)


def worker_plan(cfg: RunConfig, device_type: str, n_lanes: int) -> tuple[int, int | None]:
    """(lanes at once, torch threads per worker) on one machine.

    On CPU, small-batch attacks use two threads poorly, so one single-threaded worker
    per core does more work than one worker using every core. In-process runs stay
    sequential: jobs seed the process-wide RNG. One GPU gets one worker.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not cfg.isolate or cfg.executor == "in-process":
        workers = 1
    elif cfg.workers is not None:
        workers = cfg.workers
    else:
        workers = cores if device_type == "cpu" else 1
    workers = max(1, min(workers, n_lanes))
    threads = max(1, cores // workers) if workers > 1 and device_type == "cpu" else None
    return workers, threads


def make_executor(cfg: RunConfig, device: str, profile: Profile, n_lanes: int) -> LaneExecutor:
    """The executor ``cfg.executor`` names, with the profile's limits (or ``cfg``'s)."""
    timeout = cfg.job_timeout_s or profile.job_timeout_s
    memory = cfg.job_memory_mb or profile.job_memory_mb
    kind = "in-process" if not cfg.isolate else cfg.executor
    if kind == "in-process":
        return InProcessExecutor(timeout, memory)
    if kind == "ray":
        from gauntlet.benchmark.ray_executor import RayExecutor

        return RayExecutor(cfg, timeout, memory, device)
    if kind != "local":
        raise ValueError(f"--executor: unknown executor {kind!r}; known: {', '.join(EXECUTORS)}")
    slots, threads = worker_plan(cfg, device.split(":")[0], n_lanes)
    return LocalExecutor(slots, timeout, memory, device, threads)
