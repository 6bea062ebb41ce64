"""Threat models: the constraint sets attacks search in, and their verification.

This module is the one owner of projection, random starts, steepest-ascent steps and
verification. Inputs live in [0, 1]; so must every adversarial example.

Two threat models are fixed (the leaderboard's columns, DESIGN.md):

* ``linf-0.031``: ‖δ‖∞ ≤ 0.031.
* ``l2-0.005``: ‖δ‖₂ / √d ≤ 0.005, i.e. a root-mean-square bound per input value;
  the raw radius is 0.005·√d (0.14 on MNIST, 0.277 on CIFAR-10).

Further threat models (the ε sweeps, ε = ∞) are built with :func:`get_threat`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gauntlet.benchmark import streams
from gauntlet.benchmark.streams import Draws

#: Slack allowed when verifying a final adversarial example (DESIGN.md).
VERIFY_TOL = 1e-6

FIXED_THREATS = ("linf-0.031", "l2-0.005")

#: ε sweeps for accuracy-versus-distortion curves (Athalye et al. 2018, Figure 1).
SWEEPS: dict[str, tuple[float, ...]] = {
    "linf": (0.0, 0.01, 0.031, 0.05, 0.1, 0.2, 0.3),
    "l2": (0.0, 0.0025, 0.005, 0.01, 0.02, 0.05),
}


class ThreatViolation(ValueError):
    """An adversarial example lies outside its threat model."""


def _flat_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


@dataclass(frozen=True)
class ThreatModel:
    """A norm ball intersected with the unit box.

    Attributes:
        norm: ``"linf"`` or ``"l2"``.
        eps: the bound; for ``l2`` it is per input value (RMS), so the raw radius is
            ``eps * sqrt(d)``. ``math.inf`` means unbounded (box only).
    """

    norm: str
    eps: float

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"unknown norm {self.norm!r}; expected 'linf' or 'l2'")
        if not (self.eps >= 0):
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")

    @property
    def id(self) -> str:
        """Canonical id, e.g. ``linf-0.031``, ``l2-0.005`` or ``linf-inf``."""
        eps = "inf" if math.isinf(self.eps) else format(self.eps, "g")
        return f"{self.norm}-{eps}"

    def radius(self, d: int) -> float:
        """Raw radius of the ball in input space of dimension ``d``."""
        if self.norm == "linf" or math.isinf(self.eps):
            return self.eps
        return self.eps * math.sqrt(d)

    def l2_radius(self, d: int) -> float:
        """Radius of the smallest ℓ2 ball containing this threat's ball (certification)."""
        return self.eps * math.sqrt(d)

    def describe(self, d: int) -> dict:
        """JSON-ready description recorded in every result file."""
        return {"id": self.id, "norm": self.norm, "eps": _json_float(self.eps),
                "raw_radius": _json_float(self.radius(d)), "dim": d}

    # -- geometry -------------------------------------------------------------------

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example raw norm of ``x_adv - x`` in this threat's norm."""
        return _flat_norm(x_adv - x, self.norm)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Euclidean projection onto the ball around ``x`` intersected with [0, 1].

        For ℓ∞ the two sets are boxes, so clipping is the exact projection. For ℓ2 the
        ball is projected first and the box second, as PGD implementations do
        (Madry et al. 2018); the result is feasible, which is what verification needs.
        """
        delta = x_adv - x
        if not math.isinf(self.eps):
            r = self.radius(x[0].numel())
            if self.norm == "linf":
                delta = delta.clamp(-r, r)
            else:
                n = _flat_norm(delta, "l2").clamp_min(1e-12)
                factor = (r / n).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
                delta = delta * factor
        return (x + delta).clamp(0.0, 1.0)

    def step(self, grad: torch.Tensor, size: float) -> torch.Tensor:
        """Steepest-ascent step of raw length ``size`` along ``grad`` in this norm."""
        if self.norm == "linf":
            return size * grad.sign()
        n = _flat_norm(grad, "l2").clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        return size * grad / n

    def random_start(self, x: torch.Tensor, generator: Draws = None) -> torch.Tensor:
        """A point drawn uniformly from the ball (then clipped to [0, 1]).

        ``generator``: per-example streams (:class:`gauntlet.benchmark.streams.RowStreams`, one row
        per example of ``x``), a ``torch.Generator``, or None (the global generator)."""
        return self.project(x + self.uniform_delta(x, generator), x)

    def uniform_delta(self, x: torch.Tensor, generator: Draws = None) -> torch.Tensor:
        """δ uniform in the ball of this threat model (ℓ2: uniform in volume)."""
        d = x[0].numel()
        r = self.radius(d)
        if math.isinf(r):
            return streams.rand(generator, x.shape).to(x) - x
        if self.norm == "linf":
            u = streams.rand(generator, x.shape).to(x)
            return (2 * u - 1) * r
        g = streams.randn(generator, x.shape).to(x)
        g = g / _flat_norm(g, "l2").clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        u = streams.rand(generator, (x.shape[0], 1)).view(-1).to(x)
        scale = r * u.pow(1.0 / d)
        return g * scale.view(-1, *([1] * (x.dim() - 1)))

    def step_size(self, d: int, fraction: float) -> float:
        """A step length as a fraction of the raw radius (∞ → fraction of the box)."""
        r = self.radius(d)
        if math.isinf(r):
            r = 1.0 if self.norm == "linf" else math.sqrt(d)
        return fraction * r

    # -- verification ---------------------------------------------------------------

    def verify(self, x_adv: torch.Tensor, x: torch.Tensor) -> None:
        """Raise :class:`ThreatViolation` unless every row is finite, in [0,1] and in the ball.

        Raises:
            ThreatViolation: naming the offending example indices.
        """
        if x_adv.shape != x.shape:
            raise ThreatViolation(f"shape {tuple(x_adv.shape)} != input shape {tuple(x.shape)}")
        flat = x_adv.reshape(x_adv.shape[0], -1)
        bad = ~torch.isfinite(flat).all(dim=1)
        if bad.any():
            raise ThreatViolation(f"non-finite values at examples {_idx(bad)}")
        out = (flat < -VERIFY_TOL).any(dim=1) | (flat > 1 + VERIFY_TOL).any(dim=1)
        if out.any():
            raise ThreatViolation(f"values outside [0, 1] at examples {_idx(out)}")
        if not math.isinf(self.eps):
            dist = self.distance(x_adv.double(), x.double())
            over = dist > self.radius(x[0].numel()) + VERIFY_TOL
            if over.any():
                worst = float(dist.max())
                raise ThreatViolation(
                    f"{self.id}: norm {worst:.6g} exceeds radius "
                    f"{self.radius(x[0].numel()):.6g} at examples {_idx(over)}")


def _idx(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()[:10]


def _json_float(v: float) -> float | str:
    return "inf" if math.isinf(v) else float(v)


def get_threat(threat_id: str) -> ThreatModel:
    """Parse a threat id such as ``linf-0.031``, ``l2-0.005`` or ``linf-inf``.

    ε is a finite number ≥ 0, or exactly ``inf`` for the unbounded threat (box only, the
    one naive PGD runs at). Any other spelling that parses to ∞ or NaN (``1e999``,
    ``Infinity``, ``nan``) is refused: it is almost certainly a typo, and a silent ∞ would
    attack without a bound.

    Raises:
        ValueError: with the reason when the id is malformed.
    """
    if not isinstance(threat_id, str):
        raise ValueError(f"threat {threat_id!r}: expected a string such as 'linf-0.031'")
    norm, sep, eps = threat_id.partition("-")
    if not sep or norm not in ("linf", "l2"):
        raise ValueError(f"threat {threat_id!r}: expected '<linf|l2>-<eps>', e.g. 'linf-0.031'")
    if eps == "inf":
        return ThreatModel(norm, math.inf)
    try:
        value = float(eps)
    except ValueError:
        raise ValueError(f"threat {threat_id!r}: eps {eps!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"threat {threat_id!r}: eps {eps!r} is not a finite number "
                         f"(write '{norm}-inf' for the unbounded threat)")
    if value < 0:
        raise ValueError(f"threat {threat_id!r}: eps must be >= 0, got {eps}")
    return ThreatModel(norm, value)


def sweep_threats(threats: list[ThreatModel], sweep_eps: dict[str, tuple[float, ...]] | None) -> list[ThreatModel]:
    """The threats a run attacks: the requested ones, then every ε > 0 of the sweeps (a
    sweep point is a threat model like the fixed ones: every applicable attack runs there)."""
    out = list(threats)
    for norm in ("linf", "l2"):
        for eps in (sweep_eps or {}).get(norm, ()):
            t = ThreatModel(norm, eps)
            if eps > 0 and t.id not in {u.id for u in out}:
                out.append(t)
    return out
