"""Jobs in a child process with a wall-clock limit and a memory limit.

A :class:`JobRunner` owns one persistent *worker* process, started with the
``spawn`` method (never a plain ``fork`` of a process whose torch thread pools are
running). The worker imports torch once, keeps the last built defense (per
submission, see :func:`gauntlet.benchmark.worker.submission_run`) and receives one job at a time through
a pipe: a ``"module:function"`` name and picklable arguments. The parent watches the
job and kills the worker, with every process it started, when

* the job has not answered within ``timeout_s`` seconds (kind ``"timeout"``);
* the memory the worker and its descendants (its sandboxes included) hold of their own
  exceeds ``memory_mb`` MiB (kind ``"memory"``; :func:`private_mb`: anonymous pages, a
  forked server counted beyond its zygote);

and records a worker that dies (``os._exit``, a signal such as SIGSEGV, the kernel's
OOM killer) as kind ``"crash"`` and a raised exception as kind ``"exception"`` (or
``"memory"`` for ``MemoryError`` and allocator failures). A killed worker is replaced
lazily by the next :meth:`JobRunner.call`; the run goes on. On CPU the worker also
sets ``RLIMIT_AS`` (its address space at start plus twice the memory limit) as a
second guard against an allocation too fast for the parent to see; never on CUDA,
where reserving device memory needs a large address space.

The benchmark's jobs that run *in* the worker enter through :mod:`gauntlet.benchmark.worker`;
the executors (:mod:`gauntlet.benchmark.executors`) own the runners.

This module imports no torch at import time, so a worker that only runs light jobs
(the tests) starts in a fraction of a second.
"""
from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Outcome kinds, in :attr:`JobOutcome.kind`.
OUTCOME_KINDS = ("ok", "timeout", "memory", "crash", "exception")


@dataclass(frozen=True)
class JobOutcome:
    """What became of one job."""

    #: True when the job returned a value.
    ok: bool
    #: The job's return value (None unless ``ok``).
    value: Any
    #: One line saying what went wrong (None when ``ok``).
    error: str | None
    #: "ok", "timeout", "memory", "crash" or "exception".
    kind: str
    #: Wall-clock seconds from sending the job to its end (worker start-up excluded).
    seconds: float
    #: The worker's traceback for kind "exception" (and memory exceptions), else None.
    traceback: str | None = None
    #: Tries it took (an executor retries a job whose worker died).
    attempts: int = 1


class WorkerStartError(RuntimeError):
    """The worker process could not start (a harness problem, not a job's)."""


# -- the worker ------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent(owner: int) -> None:
    """Kill this worker, with its process group, when its owner (the process that asked
    for it) or its parent dies, even by SIGKILL: a job must not outlive an interrupted run.

    ``PR_SET_PDEATHSIG`` covers the parent, but a fork-server worker's parent is the fork
    server, which outlives the owner for a while; so a watchdog thread also watches the
    owner's pid.
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    def gone() -> bool:
        return os.getppid() != parent or not _alive(owner)

    def die() -> None:
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # this worker and anything it started
        finally:
            os._exit(1)

    if gone():
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.25)
            if gone():
                die()

    threading.Thread(target=watch, name="gauntlet-parent-watch", daemon=True).start()


def _vm_size_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _kind_of(e: BaseException) -> str | None:
    """The outcome kind an exception stands for, beyond "exception": "memory" for memory
    errors; an exception's own ``outcome_kind`` (a sandboxed defense whose process died is
    a "crash": its worker is replaced, with fresh sandboxes, and the job retried)."""
    kind = getattr(e, "outcome_kind", None)
    if kind in OUTCOME_KINDS:
        return kind
    return "memory" if _is_memory_error(e) else None


def _is_memory_error(e: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError and the CPU allocator's RuntimeError."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _resolve(name: str) -> Any:
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"job function must be 'module:function', got {name!r}")
    return getattr(importlib.import_module(module), attr)


def _worker_main(conn: Any, preload: tuple[str, ...], threads: int | None,
                 address_space_mb: int | None, owner: int) -> None:
    """The worker's loop: one ``(fn, args, kwargs)`` message in, one reply out."""
    os.setpgrp()  # its own process group: killed as one; the terminal's Ctrl-C goes to the parent
    _die_with_parent(owner)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in preload:
        importlib.import_module(module)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if address_space_mb is not None:
        import resource

        base = _vm_size_bytes()
        if base is not None:
            cap = base + address_space_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, args, kwargs = message
        try:
            reply: tuple = ("ok", _resolve(fn)(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - SystemExit from a defense is a job error too
            message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            reply = ("exception", message, traceback.format_exc(), _kind_of(e))
        try:
            conn.send(reply)
        except Exception as e:  # noqa: BLE001 - an unpicklable return value
            conn.send(("exception", f"job result could not be sent: {type(e).__name__}: {e}", None, None))


# -- the parent --------------------------------------------------------------------------

def _proc_table() -> dict[int, list[int]]:
    """Parent pid → child pids, from ``/proc/*/stat``."""
    table: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 1:
            table.setdefault(int(fields[1]), []).append(int(entry.name))
    return table


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, …); empty without /proc."""
    if not Path("/proc").is_dir():
        return []
    table, out, todo = _proc_table(), [], [pid]
    while todo:
        for child in table.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _status(pid: int) -> dict[bytes, int]:
    """The kB fields and the parent pid (``PPid``) of ``/proc/<pid>/status``; {} when gone."""
    out: dict[bytes, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                key, _, rest = line.partition(b":")
                if key in (b"RssAnon", b"RssShmem", b"PPid"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def private_mb(pids: list[int]) -> float:
    """The memory a group of processes holds of its own, in MiB: anonymous and shared-memory
    pages (``RssAnon`` + ``RssShmem``), not the file-backed pages of the libraries every
    torch process maps. A process forked from another of the group without a new program
    (a sandbox's defense server, forked from its zygote) shares its parent's pages until it
    writes them, so it counts only what it holds beyond its parent."""
    info = {}
    for pid in pids:
        st = _status(pid)
        if st:
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                exe = None
            info[pid] = (st.get(b"RssAnon", 0) + st.get(b"RssShmem", 0), st.get(b"PPid"), exe)
    total = 0
    for anon, ppid, exe in info.values():
        parent = info.get(ppid)
        if parent is not None and exe is not None and parent[2] == exe:
            anon = max(0, anon - parent[0])
        total += anon
    return total / 1024


def _signal_name(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


class JobRunner:
    """Run ``"module:function"`` jobs one at a time in a persistent, replaceable worker.

    Args:
        timeout_s: wall-clock limit per job, in seconds (worker start-up not counted).
        memory_mb: limit on the resident memory of the worker and its descendants, MiB,
            in total (torch itself takes about 0.6 GiB of it on CPU).
        device: the run's resolved device ("cpu", "cuda", "cuda:1"); ``RLIMIT_AS`` is
            set in the worker only for "cpu".
        preload: modules the worker imports before its first job (paid once per worker).
        threads: ``torch.set_num_threads`` in the worker (None: torch's default).
        start_method: "spawn" (default) or "forkserver" (the fork server imports
            ``preload`` once and every worker is forked from it: cheap replacement);
            never plain "fork".
        poll_s: how often the parent checks time and memory.
        startup_timeout_s: limit on starting a worker (imports included).

    Raises:
        ValueError: a non-positive limit or the "fork" start method.

    Use as a context manager, or call :meth:`close`. Not thread-safe: one job at a time.
    """

    def __init__(self, timeout_s: float, memory_mb: int, device: str = "cpu", *,
                 preload: tuple[str, ...] = ("torch",), threads: int | None = None,
                 start_method: str = "spawn", poll_s: float = 0.1,
                 startup_timeout_s: float = 300.0) -> None:
        if not timeout_s > 0 or not memory_mb > 0 or not poll_s > 0:
            raise ValueError(f"limits must be positive: timeout_s={timeout_s}, memory_mb={memory_mb}, "
                             f"poll_s={poll_s}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        self.timeout_s, self.memory_mb, self.device = float(timeout_s), int(memory_mb), device
        self.preload, self.threads, self.poll_s = tuple(preload), threads, float(poll_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The fork server imports these once; each worker is a fork of it, so replacing a
            # killed worker costs a fork, not a torch import. Process-wide: the first
            # JobRunner to start a worker decides the list.
            self._ctx.set_forkserver_preload(list(self.preload))
        self._address_space_mb = 2 * self.memory_mb if str(device).startswith("cpu") else None
        self._proc: Any = None
        self._conn: Any = None
        self._closed = False
        #: Workers started so far (1 + replacements).
        self.workers_started = 0

    # -- lifecycle

    @property
    def worker_pid(self) -> int | None:
        """The live worker's pid, or None when none is running."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def _start(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, name="gauntlet-worker", daemon=True,
                                 args=(child_conn, self.preload, self.threads, self._address_space_mb, os.getpid()))
        proc.start()
        child_conn.close()
        self._proc, self._conn = proc, parent_conn
        self.workers_started += 1
        try:
            ready = parent_conn.poll(self.startup_timeout_s)
            message = parent_conn.recv() if ready else None
        except (EOFError, OSError):
            message = None
        if not (isinstance(message, tuple) and message[:1] == ("ready",)):
            proc.join(1)
            code = proc.exitcode
            self._kill()
            if code is not None:
                raise WorkerStartError(f"worker died while starting ({_signal_name(code)}); "
                                       f"preload={list(self.preload)}")
            raise WorkerStartError(f"worker did not start within {self.startup_timeout_s:g} s")

    def _kill(self) -> None:
        """SIGKILL the worker, its process group and every descendant; reap it."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        pids = descendants(proc.pid) if proc.is_alive() else []
        for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), lambda: proc.kill()):
            try:
                kill()
            except (ProcessLookupError, PermissionError, OSError):
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.join(10)
        conn.close()

    def close(self) -> None:
        """Stop the worker (politely, then by force). Idempotent."""
        self._closed = True
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(2)
            except (OSError, ValueError):
                pass
        self._kill()

    def __enter__(self) -> JobRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs

    def _memory_mb(self, pids: list[int]) -> float:
        return private_mb(pids)

    def call(self, fn: str, *args: Any, **kwargs: Any) -> JobOutcome:
        """Run ``fn`` ("module:function") with picklable arguments in the worker, within the
        runner's limits. Same as ``run(fn, args, kwargs)``."""
        return self.run(fn, args, kwargs)

    def run(self, fn: str, args: tuple = (), kwargs: dict[str, Any] | None = None, *,
            timeout_s: float | None = None) -> JobOutcome:
        """Run ``fn`` ("module:function") with picklable arguments in the worker.

        Args:
            fn: the job function, importable in the worker.
            args: its positional arguments.
            kwargs: its keyword arguments.
            timeout_s: this job's wall-clock limit (default: the runner's).

        Returns:
            The outcome; never raises for anything the job does.

        Raises:
            RuntimeError: the runner is closed.
            WorkerStartError: a worker could not be started.
            pickle.PicklingError, TypeError, AttributeError: arguments that cannot be pickled.
        """
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        if self._closed:
            raise RuntimeError("JobRunner is closed")
        if self._proc is None or not self._proc.is_alive():
            self._kill()
            self._start()
        proc, conn = self._proc, self._conn
        start = time.monotonic()
        try:
            conn.send((fn, tuple(args), dict(kwargs or {})))
        except (BrokenPipeError, ConnectionResetError):
            return self._failed("crash", f"worker died before the job started ({_signal_name(proc.exitcode)})",
                                start)
        family, last_scan = [proc.pid], 0.0
        while True:
            now = time.monotonic()
            remaining = limit - (now - start)
            if remaining <= 0:
                return self._failed("timeout", f"no result within the wall-clock limit of {limit:g} s",
                                    start)
            try:
                answered = conn.poll(min(self.poll_s, remaining))
                reply = conn.recv() if answered else None
            except (EOFError, OSError):
                proc.join(5)
                return self._failed("crash", f"worker process died: {_signal_name(proc.exitcode)}", start)
            if answered:
                return self._reply(reply, start)
            if now - last_scan >= 1.0:  # descendants change rarely; /proc scans are not free
                family, last_scan = [proc.pid, *descendants(proc.pid)], now
            rss = self._memory_mb(family)
            if rss > self.memory_mb:
                return self._failed("memory", f"resident memory {rss:.0f} MiB exceeded the limit of "
                                              f"{self.memory_mb} MiB", start)

    def _failed(self, kind: str, message: str, start: float, tb: str | None = None) -> JobOutcome:
        seconds = time.monotonic() - start
        self._kill()
        return JobOutcome(False, None, message, kind, round(seconds, 3), tb)

    def _reply(self, reply: tuple, start: float) -> JobOutcome:
        seconds = round(time.monotonic() - start, 3)
        if reply[0] == "ok":
            return JobOutcome(True, reply[1], None, "ok", seconds)
        _, message, tb, kind = reply
        if kind in ("memory", "crash"):  # a fresh worker gets its memory back, or new sandboxes
            return self._failed(kind, message, start, tb)
        return JobOutcome(False, None, message, "exception", seconds, tb)


class InProcessRunner:
    """The :class:`JobRunner` interface without a child process (``--no-isolation``):
    for debugging and fast tests. Exceptions become outcomes; there is no time or
    memory limit, so a hanging defense hangs the run."""

    def __init__(self, timeout_s: float, memory_mb: int) -> None:
        self.timeout_s, self.memory_mb = float(timeout_s), int(memory_mb)

    def __enter__(self) -> InProcessRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, fn: str, args: tuple = (), kwargs: dict[str, Any] | None = None, *,
            timeout_s: float | None = None) -> JobOutcome:
        """Call ``fn`` ("module:function") here; an exception becomes an outcome."""
        start = time.monotonic()
        try:
            value = _resolve(fn)(*args, **(kwargs or {}))
        except Exception as e:  # noqa: BLE001 - the same contract as the worker's
            kind = _kind_of(e) or "exception"
            return JobOutcome(False, None, f"{type(e).__name__}: {e}", kind,
                              round(time.monotonic() - start, 3), traceback.format_exc())
        return JobOutcome(True, value, None, "ok", round(time.monotonic() - start, 3))

