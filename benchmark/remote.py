"""The harness's side of a sandboxed defense: a proxy the attacks use like any defense.

:class:`RemoteDefense` stands where a built defense stood. Calling it, its
``classifier``, ``base_logits`` or ``reparameterization`` sends the batch to the defense
server in the sandbox (:mod:`gauntlet.benchmark.defense_server`) and returns its output; under
autograd the output's backward is the server's vector–Jacobian product, so every attack
runs unchanged and no attack code runs where the defense does. The adaptive view
(BPDA, EOT with k draws) is computed in the sandbox too (:meth:`RemoteDefense.served_view`,
which :class:`gauntlet.attacks.adaptive.AdaptiveView` delegates to): one call per k draws.

Labels, attacks, scores and result files stay here; what crosses is inputs, cotangents,
outputs and gradients (:mod:`gauntlet.benchmark.channel`).
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from gauntlet.benchmark.channel import Channel, ChannelClosed, ProtocolError


class DefenseError(RuntimeError):
    """The defense failed in its sandbox (its own exception, or its process died)."""


class DefenseCrashed(DefenseError):
    """The defense's process died in its sandbox: the worker is replaced (new sandboxes)."""

    outcome_kind = "crash"


class DefenseMemoryError(DefenseError, MemoryError):
    """The defense ran out of memory in its sandbox."""


class Client:
    """Requests over one channel to one defense server."""

    def __init__(self, channel: Channel) -> None:
        self.ch = channel
        self.release: list[int] = []
        self.closed = False
        weakref.finalize(self, channel.close)  # a client dropped unclosed frees its channel

    def request(self, header: dict[str, Any], tensors: tuple = ()) -> tuple[dict[str, Any], list[torch.Tensor]]:
        if self.closed:
            raise DefenseError("the defense's sandbox is closed")
        if self.release:
            header = {**header, "release": self.release}
            self.release = []
        try:
            self.ch.send(header, tensors)
            reply, out = self.ch.recv()
        except ChannelClosed:
            self.closed = True
            raise DefenseCrashed("the defense's process exited in its sandbox") from None
        except ProtocolError as e:
            raise DefenseError(f"the defense's sandbox broke the protocol: {e}") from None
        if reply.get("ok") is not True:
            error = DefenseMemoryError if reply.get("kind") == "memory" else DefenseError
            raise error(str(reply.get("error") or "the defense failed")[:2000])
        return reply, out

    def call(self, fn: str, x: torch.Tensor, keep: bool, extra: dict[str, Any]) -> tuple[torch.Tensor, int | None]:
        reply, out = self.request({"op": "call", "fn": fn, "keep": keep, **extra}, (x,))
        if len(out) != 1 or not out[0].is_floating_point():
            raise DefenseError(f"{fn}: the sandbox returned no floating-point output")
        handle = reply.get("handle")
        if handle is not None and (not isinstance(handle, int) or isinstance(handle, bool)):
            raise DefenseError(f"{fn}: bad graph handle")
        return out[0].to(x.device), handle

    def vjp(self, handle: int, v: torch.Tensor, shape: torch.Size, device: torch.device) -> torch.Tensor:
        _, out = self.request({"op": "vjp", "handle": handle}, (v,))
        if len(out) != 1 or tuple(out[0].shape) != tuple(shape) or not out[0].is_floating_point():
            raise DefenseError("vjp: the sandbox returned a gradient of the wrong shape")
        return out[0].to(device)

    def close(self) -> None:
        if not self.closed:
            try:
                self.request({"op": "close"})
            except DefenseError:
                pass
            self.closed = True
        self.ch.close()


class _Graph:
    """A graph kept in the sandbox; freed there when this object is."""

    def __init__(self, client: Client, handle: int) -> None:
        self.client, self.handle = client, handle
        weakref.finalize(self, client.release.append, handle)


class _Call(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: RemoteFunction) -> torch.Tensor:  # noqa: D102
        out, handle = fn.client.call(fn.name, x, True, fn.extra)
        ctx.graph = _Graph(fn.client, handle) if handle is not None else None
        ctx.shape, ctx.device = x.shape, x.device
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: D102
        if ctx.graph is None:  # the output does not depend on the input
            return torch.zeros(ctx.shape, dtype=g.dtype, device=g.device), None
        graph, ctx.graph = ctx.graph, None
        return graph.client.vjp(graph.handle, g.contiguous(), ctx.shape, ctx.device), None


class RemoteFunction(nn.Module):
    """One function of the defense server, differentiable through its VJP."""

    def __init__(self, client: Client, name: str, **extra: Any) -> None:
        super().__init__()
        self.client, self.name, self.extra = client, name, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _Call.apply(x, self)
        return self.client.call(self.name, x, False, self.extra)[0]


class RemoteLipschitzClassifier(RemoteFunction):
    """The classifier of a defense that declares a Lipschitz bound (computed in the sandbox)."""

    def lipschitz_bound(self) -> float:
        reply, _ = self.client.request({"op": "lipschitz_bound"})
        value = reply.get("value")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DefenseError("lipschitz_bound: not a number")
        return float(value)


class RemoteReparameterization:
    def __init__(self, client: Client) -> None:
        self.encode = RemoteFunction(client, "reparam.encode")
        self.generate = RemoteFunction(client, "reparam.generate")


class RemoteDefense:
    """A sandboxed defense, with the facts it declared when built.

    ``randomized`` may be set by the harness (observed randomness) and is forwarded;
    ``zero_gradients`` is the harness's own observation and stays here.
    """

    def __init__(self, client: Client, facts: dict[str, Any]) -> None:
        self.client = client
        self._randomized = bool(facts.get("randomized"))
        self.differentiable = bool(facts.get("differentiable", True))
        self.rejects = bool(facts.get("rejects"))
        self.abstains = bool(facts.get("abstains"))
        self.zero_gradients = False
        n_steps = facts.get("n_steps", 0)
        self.steps = tuple(f"step {i}" for i in range(n_steps if isinstance(n_steps, int) else 0))
        functions = set(facts.get("functions") or ())
        self._exact = RemoteFunction(client, "defense")
        cls = RemoteLipschitzClassifier if facts.get("lipschitz_bound") else RemoteFunction
        self.classifier = cls(client, "classifier") if "classifier" in functions else self._exact
        if "base_logits" in functions:
            self.base_logits = RemoteFunction(client, "base_logits")
        self.reparameterization = RemoteReparameterization(client) if facts.get("reparameterization") else None

    @property
    def randomized(self) -> bool:
        return self._randomized

    @randomized.setter
    def randomized(self, value: bool) -> None:
        self.client.request({"op": "set", "name": "randomized", "value": bool(value)})
        self._randomized = bool(value)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._exact(x)

    def served_view(self, bpda: bool, eot: int) -> RemoteFunction:
        """The adaptive view, computed where the defense lives (logits of shape (k, N, C))."""
        return RemoteFunction(self.client, "view", bpda=bool(bpda), eot=int(eot))

    def manual_seed(self, seed: int) -> None:
        """Seed the defense's own draws in its sandbox (the harness seeds its own)."""
        self.client.request({"op": "seed", "seed": int(seed)})

    def close(self) -> None:
        self.client.close()
