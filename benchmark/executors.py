"""Where jobs run: the :class:`Executor` protocol and its implementations for one machine.

An executor takes :class:`Task` objects (a :class:`~benchmark.plan.JobSpec` with the
inputs the orchestrator resolved) and hands back, one at a time, each finished task with
its :class:`~benchmark.isolation.JobOutcome`. It writes nothing; the orchestrator
(:mod:`benchmark.runner`) does.

Jobs are grouped in *lanes*, one per submission: a lane's jobs run one at a time in the
same worker, which keeps the built defense between them, and a lane holds its worker
until the orchestrator says it is finished (:meth:`Executor.finish_lane`). At most
``slots`` lanes run at once. A task whose worker died (kind ``"crash"``: killed, or out
of memory by the kernel's hand) is retried up to :data:`RETRIES` more times in a fresh
worker; then its outcome is final. Timeouts, memory-limit kills and exceptions are not
retried: under the same limits they would happen again.

* :class:`InProcessExecutor`: in this process and thread (debugging, ``--no-isolation``).
* :class:`LocalExecutor`: worker processes with time and memory limits
  (:class:`~benchmark.isolation.JobRunner`), one per slot.
* :class:`benchmark.ray_executor.RayExecutor`: a Ray actor per lane, each hosting a
  :class:`~benchmark.isolation.JobRunner` on its node.
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from benchmark.isolation import InProcessRunner, JobOutcome, JobRunner

if TYPE_CHECKING:
    from benchmark.config import RunConfig
    from benchmark.plan import JobSpec
    from benchmark.profiles import Profile
    from benchmark.worker import JobInputs

#: The worker-side entry point every task calls.
ENTRY = "benchmark.worker:execute"
#: Extra attempts for a task whose worker died.
RETRIES = 2
EXECUTORS = ("local", "in-process", "ray")


@dataclass(frozen=True)
class Task:
    """One job handed to an executor."""

    spec: JobSpec
    cfg: RunConfig
    inputs: JobInputs
    #: 1 for the first try.
    attempt: int = 1

    @property
    def lane(self) -> str:
        return self.spec.submission

    @property
    def args(self) -> tuple:
        return (self.cfg, self.spec, self.inputs)


class Executor(Protocol):
    """What the orchestrator needs of an executor."""

    timeout_s: float
    memory_mb: int

    def submit(self, task: Task) -> None: ...

    def wait(self) -> tuple[Task, JobOutcome]: ...

    def pending(self) -> int: ...

    def finish_lane(self, lane: str) -> None: ...

    def close(self) -> None: ...


class LaneExecutor:
    """Lanes, slots and retries; subclasses say how a slot starts, runs and frees a task."""

    def __init__(self, slots: int, timeout_s: float, memory_mb: int, retries: int = RETRIES) -> None:
        if slots < 1:
            raise ValueError(f"an executor needs at least one slot, got {slots}")
        self.slots, self.timeout_s, self.memory_mb, self.retries = slots, float(timeout_s), int(memory_mb), retries
        self._queued: dict[str, deque[Task]] = {}
        self._active: dict[str, Any] = {}
        self._running: set[str] = set()

    # -- the protocol

    def submit(self, task: Task) -> None:
        self._queued.setdefault(task.lane, deque()).append(task)
        self._dispatch()

    def pending(self) -> int:
        return len(self._running) + sum(len(q) for q in self._queued.values())

    def wait(self) -> tuple[Task, JobOutcome]:
        """The next finished task (blocks); a crashed one is first retried."""
        while True:
            task, outcome = self._collect()
            self._running.discard(task.lane)
            if not outcome.ok and outcome.kind == "crash" and task.attempt <= self.retries:
                self._replace(task.lane)
                self._queued.setdefault(task.lane, deque()).appendleft(replace(task, attempt=task.attempt + 1))
                self._dispatch()
                continue
            self._dispatch()
            return task, replace(outcome, attempts=task.attempt)

    def finish_lane(self, lane: str) -> None:
        """The orchestrator will send no more tasks of ``lane``: free its slot."""
        if lane in self._running or self._queued.get(lane):
            raise RuntimeError(f"lane {lane} finished with tasks still running or queued")
        self._queued.pop(lane, None)
        if lane in self._active:
            self._release(lane, self._active.pop(lane))
        self._dispatch()

    def close(self) -> None:
        for lane in list(self._active):
            self._release(lane, self._active.pop(lane))

    def __enter__(self) -> LaneExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scheduling

    def _dispatch(self) -> None:
        for lane, todo in self._queued.items():  # insertion order: the plan's lane order
            if not todo or lane in self._running:
                continue
            if lane not in self._active:
                slot = self._acquire(lane)
                if slot is None:
                    continue
                self._active[lane] = slot
            self._running.add(lane)
            self._start(self._active[lane], todo.popleft())

    # -- what a subclass provides

    def _acquire(self, lane: str) -> Any | None:
        """A free slot for ``lane``, or None when every slot is taken."""
        raise NotImplementedError

    def _release(self, lane: str, slot: Any) -> None:
        raise NotImplementedError

    def _start(self, slot: Any, task: Task) -> None:
        raise NotImplementedError

    def _collect(self) -> tuple[Task, JobOutcome]:
        """Block until a started task finishes."""
        raise NotImplementedError

    def _replace(self, lane: str) -> None:
        """The lane's worker died: the next task must get a fresh one (default: the
        slot's runner replaces a dead worker by itself)."""


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
        return None

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
    the wall-clock and memory limits (:class:`~benchmark.isolation.JobRunner`)."""

    def __init__(self, slots: int, timeout_s: float, memory_mb: int, device: str = "cpu",
                 threads: int | None = None, preload: tuple[str, ...] = ("benchmark.jobs",)) -> None:
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
        from benchmark.ray_executor import RayExecutor

        return RayExecutor(cfg, timeout, memory, device)
    if kind != "local":
        raise ValueError(f"--executor: unknown executor {kind!r}; known: {', '.join(EXECUTORS)}")
    slots, threads = worker_plan(cfg, device.split(":")[0], n_lanes)
    return LocalExecutor(slots, timeout, memory, device, threads)
