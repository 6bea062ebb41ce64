"""Lanes, slots and retries: what every executor shares (:class:`LaneExecutor`), the
:class:`Executor` protocol the orchestrator uses, and the :class:`Task` it hands out.

An executor takes :class:`Task` objects (a :class:`~gauntlet.benchmark.plan.JobSpec` with the
inputs the orchestrator resolved) and hands back, one at a time, each finished task with
its :class:`~gauntlet.benchmark.isolation.JobOutcome`. It writes nothing; the orchestrator
(:mod:`gauntlet.benchmark.runner`) does.

Jobs are grouped in *lanes*, one per submission: a lane's jobs run one at a time in the
same worker, which keeps the built defense between them, and a lane holds its worker
until the orchestrator says it is finished (:meth:`Executor.finish_lane`). At most
``slots`` lanes run at once. A task whose worker died (kind ``"crash"``: killed, or out
of memory by the kernel's hand) is retried up to :data:`RETRIES` more times in a fresh
worker; then its outcome is final. Timeouts, memory-limit kills and exceptions are not
retried: under the same limits they would happen again.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from gauntlet.benchmark.isolation import JobOutcome

if TYPE_CHECKING:
    from gauntlet.benchmark.config import RunConfig
    from gauntlet.benchmark.plan import JobSpec
    from gauntlet.benchmark.worker import JobInputs

#: The worker-side entry point every task calls.
ENTRY = "gauntlet.benchmark.worker:execute"
#: Extra attempts for a task whose worker died.
RETRIES = 2


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
