"""The Ray executor: a run's jobs on a Ray cluster (``gauntlet run --executor ray``).

Each lane (one submission) gets a Ray actor, :class:`LaneHost`, that declares its
resources (one CPU, or one GPU for a CUDA run, and the job memory limit) and hosts a
:class:`~gauntlet.benchmark.isolation.JobRunner` on its node, so a job there has the same
wall-clock and memory limits as on one machine, and the lane's jobs share the built
defense. Results come back to the driver as data; the orchestrator writes them
(:mod:`gauntlet.benchmark.runner`), so resuming and merging work exactly as on one machine.

An actor that dies (its process killed, the node's OOM killer, a lost node) fails its
task with a :class:`ray.exceptions.RayError`; the lane gets a fresh actor and the task
is retried (:data:`gauntlet.benchmark.lanes.RETRIES`), then recorded as a ``crash``.

Needs ``pip install -e ".[ray]"``; every node needs the same checkout (submissions
included) and data folder at the same paths (docs/scale-out.md).
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from gauntlet.benchmark.lanes import ENTRY, LaneExecutor, Task
from gauntlet.benchmark.isolation import JobOutcome, JobRunner

if TYPE_CHECKING:
    from gauntlet.benchmark.config import RunConfig

#: Environment variables the driver passes to every Ray worker.
FORWARDED_ENV = ("GAUNTLET_DATA", "GAUNTLET_CACHE", "OMP_WAIT_POLICY", "MPLBACKEND")


class LaneHost:
    """The Ray actor of one lane: a job runner (a child process with limits) on its node."""

    def __init__(self, timeout_s: float, memory_mb: int, device: str, threads: int | None) -> None:
        self.runner = JobRunner(timeout_s, memory_mb, device, preload=("gauntlet.benchmark.jobs",), threads=threads,
                                start_method="forkserver")

    def run(self, fn: str, args: tuple) -> JobOutcome:
        return self.runner.run(fn, args)

    def pids(self) -> tuple[int, int | None]:
        """(this actor's pid, its job worker's pid)."""
        return os.getpid(), self.runner.worker_pid


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError('--executor ray: the ray package is not installed; pip install -e ".[ray]"') from None
    return ray


def lane_slots(nodes: list[dict], unit: str, memory: int, memory_mb: int) -> int:
    """Lanes the cluster holds at once: per live node, as many actors as both its units
    (CPUs or GPUs) and its Ray memory allow.

    Raises:
        ValueError: no node can hold one lane (an actor would wait forever).
    """
    per_node = [min(int(n["Resources"].get(unit, 0)), int(n["Resources"].get("memory", 0) // memory))
                for n in nodes if n.get("Alive")]
    if sum(per_node) < 1:
        largest = max((n["Resources"].get("memory", 0) for n in nodes if n.get("Alive")), default=0) / 2**20
        raise ValueError(f"--job-memory: no live Ray node has one {unit} and {memory_mb} MiB of Ray memory "
                         f"(largest: {largest:.0f} MiB); lower --job-memory or add nodes (an autoscaling "
                         f"cluster must be scaled up first: docs/scale-out.md)")
    return sum(per_node)


class RayExecutor(LaneExecutor):
    """Lanes as Ray actors; as many at once as the live nodes' CPUs (GPUs for CUDA) and
    memory hold (:func:`lane_slots`, counted when the run starts).

    Args:
        cfg: the run's configuration (``ray_address``: the cluster; None starts a local
            one in this process, stopped on :meth:`close`).
        timeout_s, memory_mb: the per-job limits, enforced on the node.
        device: the run's device; ``auto`` uses GPUs when the cluster has any.
    """

    def __init__(self, cfg: RunConfig, timeout_s: float, memory_mb: int, device: str) -> None:
        ray = self.ray = _ray()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            ray.init(address=cfg.ray_address, runtime_env={"env_vars": env}, include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
        gpu = device.startswith("cuda") or (device == "auto" and resources.get("GPU", 0) >= 1)
        self.device = ("cuda" if device == "auto" else device) if gpu else ("cpu" if device == "auto" else device)
        need = {"num_cpus": 1, "num_gpus": 1 if gpu else 0, "memory": int(memory_mb) * 2**20}
        super().__init__(lane_slots(ray.nodes(), "GPU" if gpu else "CPU", need["memory"], memory_mb),
                         timeout_s, memory_mb)
        threads = None if gpu else 1
        self._host = ray.remote(LaneHost).options(**need, max_restarts=0, max_concurrency=2)
        self._args = (float(timeout_s), int(memory_mb), self.device, threads)
        self._refs: dict[Any, tuple[Task, float]] = {}

    def _new_host(self) -> Any:
        return self._host.remote(*self._args)

    def _acquire(self, lane: str) -> Any | None:
        return self._new_host() if len(self._active) < self.slots else None

    def _release(self, lane: str, slot: Any) -> None:
        self.ray.kill(slot)

    def _replace(self, lane: str) -> None:
        old = self._active.get(lane)
        if old is not None:
            self.ray.kill(old)
            self._active[lane] = self._new_host()

    def _start(self, slot: Any, task: Task) -> None:
        self._refs[slot.run.remote(ENTRY, task.args)] = (task, time.monotonic())

    def _collect(self) -> tuple[Task, JobOutcome]:
        ready, _ = self.ray.wait(list(self._refs), num_returns=1)
        ref = ready[0]
        task, start = self._refs.pop(ref)
        try:
            return task, self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            first = (str(e).strip().splitlines() or [""])[0][:300]
            return task, JobOutcome(False, None, f"Ray worker died: {type(e).__name__}: {first}", "crash",
                                    round(time.monotonic() - start, 3))

    def close(self) -> None:
        super().close()
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
