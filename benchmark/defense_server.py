"""The sandbox's side: a zygote that forks defense servers, each answering logits and VJPs.

``python -I -m gauntlet.benchmark.defense_server FD`` runs inside bubblewrap
(:mod:`gauntlet.benchmark.sandbox`). It imports torch and the harness's defense-building code,
never a submission's, then waits on the control channel ``FD``:

* ``spawn`` (with a channel descriptor attached): fork a **server**, which builds the
  submission's defense and answers on that channel until it is closed. With
  ``"wipe": true`` the zygote first kills every other process of the sandbox and empties
  its writable places (``/tmp``, ``/dev/shm``, System V IPC), so that a server starts
  with no trace of the ones before it: the scoring sandbox's servers each see the
  adversarial points of one attack, and nothing of another's.

A server's operations (:mod:`gauntlet.benchmark.remote` is the other side):

* ``call`` ``fn`` on a batch → its output. Every call runs the same way, with autograd
  on and the input requiring a gradient, whether or not the harness will ask for the
  VJP: the defense cannot tell an attack's query from the final scoring (``keep``
  decides only whether the graph is kept for a later ``vjp``);
* ``vjp`` of a kept call with a cotangent → the input gradient (zeros where the output
  does not depend on the input); ``release`` (piggybacked on any request) frees graphs;
* ``set`` ``randomized`` (observed by the harness), ``seed`` (the job's seed, for the
  defense's own draws), ``lipschitz_bound``, ``close``.

Functions: ``defense`` (the exact forward), ``view`` (the adaptive view with ``bpda`` and
``eot``, :class:`gauntlet.attacks.adaptive.AdaptiveView`), ``classifier``, ``base_logits`` (a
smoothed defense's base), ``reparam.encode`` and ``reparam.generate``.

No label, result file or other submission is ever sent here or visible here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import socket
import sys
import traceback
from typing import Any, Callable

import torch

from gauntlet.benchmark.channel import Channel, ChannelClosed, ProtocolError

#: Kept graphs per server; the oldest is dropped past this (a harness bug, not a defense's).
MAX_KEPT = 256


class Server:
    """One built defense answering one channel."""

    def __init__(self, channel: Channel) -> None:
        self.ch = channel
        self.defense: Any = None
        self.functions: dict[str, Callable] = {}
        self.views: dict[tuple[bool, int], Any] = {}
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.next_handle = 1

    def open(self, header: dict[str, Any]) -> dict[str, Any]:
        from gauntlet.benchmark.registry import build_defense, load_submission

        torch.set_num_threads(int(header.get("threads") or torch.get_num_threads()))
        sub = load_submission(Path(header["manifest"]))
        device = torch.device(header.get("device", "cpu"))
        self.device = device
        d = self.defense = build_defense(sub, device)
        self.functions["defense"] = d
        classifier = getattr(d, "classifier", None)
        if classifier is not None:
            self.functions["classifier"] = classifier
        base = getattr(d, "base_logits", None)
        if base is not None:
            self.functions["base_logits"] = base
        rep = getattr(d, "reparameterization", None)
        if rep is not None:
            self.functions["reparam.encode"] = rep.encode
            self.functions["reparam.generate"] = rep.generate
        return {"randomized": bool(getattr(d, "randomized", False)),
                "differentiable": bool(getattr(d, "differentiable", True)),
                "rejects": bool(getattr(d, "rejects", False)),
                "abstains": bool(getattr(d, "abstains", False)),
                "reparameterization": rep is not None,
                "n_steps": len(getattr(d, "steps", ()) or ()),
                "lipschitz_bound": hasattr(classifier, "lipschitz_bound"),
                "functions": sorted(self.functions)}

    def function(self, header: dict[str, Any]) -> Callable:
        name = header.get("fn")
        if name == "view":
            from gauntlet.attacks.adaptive import AdaptiveView

            key = (bool(header.get("bpda")), int(header.get("eot", 1)))
            if key not in self.views:
                self.views[key] = AdaptiveView(self.defense, bpda=key[0], eot=key[1])
            return self.views[key]
        if name not in self.functions:
            raise ProtocolError(f"no function {name!r}")
        return self.functions[name]

    def serve(self) -> None:
        while True:
            try:
                header, tensors = self.ch.recv()
            except ChannelClosed:
                return
            for h in header.get("release", ()):
                self.kept.pop(h, None)
            op = header.get("op")
            try:
                if op == "close":
                    self.ch.send({"ok": True})
                    return
                reply, out = self.handle(op, header, tensors)
            except Exception as e:  # the defense's own failure: reported, the server lives on
                from gauntlet.benchmark.isolation import _is_memory_error

                line = f"{type(e).__name__}: {e}".splitlines()[0][:2000] if str(e) else type(e).__name__
                self.ch.send({"ok": False, "error": line, "kind": "memory" if _is_memory_error(e) else None,
                              "traceback": traceback.format_exc()[-8000:]})
                continue
            self.ch.send({"ok": True, **reply}, out)

    def handle(self, op: str, header: dict[str, Any], tensors: list[torch.Tensor]):
        if op == "open":
            return {"facts": self.open(header)}, []
        if op == "call":
            fn = self.function(header)
            x = tensors[0].to(self.device).requires_grad_(tensors[0].is_floating_point())
            with torch.enable_grad():
                out = fn(x)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"{header.get('fn')} returned {type(out).__name__}, not a tensor")
            handle = None
            if header.get("keep") and out.requires_grad:
                handle = self.next_handle
                self.next_handle += 1
                self.kept[handle] = (x, out)
                while len(self.kept) > MAX_KEPT:
                    self.kept.pop(next(iter(self.kept)))
            return {"handle": handle}, [out.detach()]
        if op == "vjp":
            x, out = self.kept.pop(int(header["handle"]))
            v = tensors[0].to(out.device, out.dtype)
            (g,) = torch.autograd.grad(out, x, v, allow_unused=True)
            return {}, [torch.zeros_like(x) if g is None else g]
        if op == "set":
            if header.get("name") != "randomized":
                raise ProtocolError(f"cannot set {header.get('name')!r}")
            self.defense.randomized = bool(header.get("value"))
            self.views.clear()
            return {}, []
        if op == "seed":
            torch.manual_seed(int(header["seed"]))
            return {}, []
        if op == "lipschitz_bound":
            return {"value": float(self.defense.classifier.lipschitz_bound())}, []
        raise ProtocolError(f"unknown operation {op!r}")


# -- the zygote -------------------------------------------------------------------------

def _wipe() -> None:
    """Kill every other process of the sandbox (we are not its init: ``kill(-1)`` spares
    init and ourselves) and empty its writable places."""
    import shutil

    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(block=True)
    for root in ("/tmp", "/dev/shm"):
        if os.path.isdir(root):
            for name in os.listdir(root):
                p = os.path.join(root, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    try:
                        os.unlink(p)
                    except OSError:
                        pass
    _remove_sysv_ipc()


def _remove_sysv_ipc() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ipc_rmid = 0
    for kind, remove in (("shm", lambda i: libc.shmctl(i, ipc_rmid, None)),
                         ("msg", lambda i: libc.msgctl(i, ipc_rmid, None)),
                         ("sem", lambda i: libc.semctl(i, 0, ipc_rmid))):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 1:
                remove(int(fields[1]))


def _reap(block: bool = False) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def zygote(fd: int) -> None:
    control = Channel(socket.socket(fileno=fd))
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control.sock, 4096, 1)
        except OSError:
            return
        if not data:
            return
        _reap()
        try:
            request = json.loads(data)
        except ValueError:
            request = {}
        if request.get("wipe") and os.environ.get("GAUNTLET_SANDBOX") == "1":
            _wipe()  # only inside bubblewrap's PID namespace, where kill(-1) means "the sandbox"
        if len(fds) != 1:
            control.sock.send(b'{"ok": false, "error": "spawn needs one descriptor"}')
            continue
        pid = os.fork()
        if pid == 0:
            try:
                control.sock.close()
                os.setsid()
                Server(Channel(socket.socket(fileno=fds[0]))).serve()
            finally:
                os._exit(0)
        os.close(fds[0])
        control.sock.send(f'{{"ok": true, "pid": {pid}}}'.encode())


def main(argv: list[str]) -> None:
    # Nothing the defense prints may reach the harness's channel or its stdout.
    os.dup2(2, 1)
    import gauntlet.attacks.adaptive  # noqa: F401  - imported before forking, once per sandbox
    import gauntlet.benchmark.registry  # noqa: F401
    import gauntlet.defenses.pipeline  # noqa: F401
    zygote(int(argv[1]))


if __name__ == "__main__":
    main(sys.argv)
