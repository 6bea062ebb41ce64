"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based
random search that never reads a gradient.

Each query proposes a change of a random square window of the current best point and
keeps it if the margin loss z_y − max_{j≠y} z_j decreases (Algorithm 1). Defaults and
schedules are those of the reference implementation (fra31/auto-attack,
``autoattack/square.py``, ``SquareAttack``; facts read there, the code here is ours):

* 5,000 queries, p_init = 0.8, margin loss, one run.
* p schedule: the iteration i is rescaled to i·10000/n_queries, and p = p_init halves
  after rescaled iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000.
* ℓ∞: start from vertical stripes x + ε·s with s ∈ {±1} per (channel, column); each
  query adds ±2ε (one sign per channel) on an s×s window, s = max(round(√(p·d/C)), 1),
  then projects onto the ball and [0, 1].
* ℓ2: start from a grid of windows of side ⌊H/5⌋ each holding the "η" pattern (two
  nested-rectangle blocks of opposite sign, weights 1/(k+1)² at Chebyshev distance ≥ k
  from the centre, Sec. 3.3 of the paper) with a random sign per channel, rescaled to
  norm ε; each query (window side s ≥ 3, odd) moves the perturbation mass of a second
  window into the first, mixing in a fresh η pattern, then renormalizes to norm ε.

Differences from the reference, all per example: windows, signs and the η orientation
are drawn per example (as the authors' original code does) instead of once per batch;
window corners are uniform over every position that fits; the budget counts the
starting point, so an example uses at most ``n_queries`` forward passes in all.

An example stops as soon as its margin is negative. A randomized defense is queried as
is, one draw of its randomness per query (no EOT: a score-based attacker sees single
draws); ``info["single_draw_queries"]`` records that. The margin is taken on the folded
logits of a rejecting defense. ε = ∞ uses the box scale (1 for ℓ∞, √d for ℓ2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gauntlet.attacks.adaptive import AdaptiveView, BestTracker, evaluate
from gauntlet.attacks.base import ATTACKS, Attack, AttackContext, AttackResult
from gauntlet.benchmark import streams
from gauntlet.benchmark.streams import Draws
from gauntlet.benchmark.threats import ThreatModel

#: Rescaled iterations after which p halves (reference ``p_selection``).
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(it: int, n_queries: int, p_init: float) -> float:
    """Fraction p of pixels a square covers at iteration ``it``.

    Args:
        it: 0-based iteration after the starting point.
        n_queries: the query budget (the schedule is rescaled to 10,000 iterations).
        p_init: p at the start.

    Returns:
        p_init halved once per threshold of :data:`P_HALVINGS` the rescaled ``it`` exceeds.
    """
    rescaled = int(it / n_queries * 10000)
    return p_init / 2 ** sum(rescaled > t for t in P_HALVINGS)


def rect_pattern(a: int, b: int) -> torch.Tensor:
    """Nested rectangles on an a×b grid (Andriushchenko et al. 2020, Sec. 3.3).

    Args:
        a: rows.
        b: columns.

    Returns:
        (a, b) tensor of unit ℓ2 norm whose cell at Chebyshev distance K from the centre
        (a//2, b//2) weighs Σ_{k ≥ K} 1/(k+1)² (k up to max(a//2, b//2)).
    """
    if a == 0 or b == 0:
        return torch.zeros(a, b)
    m = max(a // 2, b // 2) + 1
    tail = (1.0 / torch.arange(1, m + 1, dtype=torch.float64) ** 2).flip(0).cumsum(0).flip(0)
    rows = (torch.arange(a) - a // 2).abs().view(-1, 1)
    dist = torch.maximum(rows, (torch.arange(b) - b // 2).abs().view(1, -1))
    out = torch.where(dist < m, tail[dist.clamp(max=m - 1)], torch.zeros((), dtype=torch.float64))
    return (out / out.norm()).float()


def eta_pattern(s: int) -> torch.Tensor:
    """The ℓ2 window pattern η of side ``s``.

    Args:
        s: window side.

    Returns:
        (s, s) tensor of unit norm: +rectangles on the top s//2 rows, −rectangles below.
    """
    top = rect_pattern(s // 2, s)
    out = torch.cat([top, -rect_pattern(s - s // 2, s)], 0)
    return out / out.norm().clamp_min(1e-12)


def _etas(s: int, n: int, generator: Draws) -> torch.Tensor:
    """n copies of η(s), each transposed with probability 1/2: shape (n, s, s)."""
    e = eta_pattern(s)
    flip = streams.rand(generator, (n, 1)).view(-1) > 0.5
    return torch.where(flip.view(-1, 1, 1), e.t().expand(n, s, s), e.expand(n, s, s))


def _signs(shape: tuple[int, ...], generator: Draws) -> torch.Tensor:
    return streams.randint(generator, 0, 2, shape).float() * 2 - 1


def _window_index(n: int, h: int, w: int, s: int, generator: Draws, device):
    """Row and column indices (n, s) of one random s×s window per example."""
    vh = streams.randint(generator, 0, h - s + 1, (n, 1)).view(-1)
    vw = streams.randint(generator, 0, w - s + 1, (n, 1)).view(-1)
    ar = torch.arange(s)
    return (vh.view(-1, 1) + ar).to(device), (vw.view(-1, 1) + ar).to(device)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(len(t), -1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _linf_init(x: torch.Tensor, r: float, generator: Draws) -> torch.Tensor:
    n, c, _, w = x.shape
    return x + r * _signs((n, c, 1, w), generator).to(x)


def _l2_init(x: torch.Tensor, r: float, generator: Draws) -> torch.Tensor:
    n, c, h, w = x.shape
    s = max(h // 5, 1)
    delta = torch.zeros(n, c, h, w)
    for vh in range((h - 5 * s) // 2, h - s + 1, s):
        for vw in range((w - 5 * s) // 2, w - s + 1, s):
            pat = _etas(s, n, generator).unsqueeze(1) * _signs((n, c, 1, 1), generator)
            delta[:, :, vh:vh + s, vw:vw + s] += pat
    delta = delta.to(x)
    return x + r * delta / (_l2(delta) + 1e-12)


def _linf_proposal(xb: torch.Tensor, r: float, s: int, generator: Draws) -> torch.Tensor:
    n, c, h, w = xb.shape
    rows, cols = _window_index(n, h, w, s, generator, xb.device)
    mask = torch.zeros(n, h, w, device=xb.device, dtype=torch.bool)
    ar = torch.arange(n, device=xb.device).view(-1, 1, 1)
    mask[ar, rows.unsqueeze(2), cols.unsqueeze(1)] = True
    return xb + mask.unsqueeze(1) * (2 * r) * _signs((n, c, 1, 1), generator).to(xb)


def _l2_proposal(xb: torch.Tensor, x0: torch.Tensor, r: float, s: int,
                 generator: Draws) -> torch.Tensor:
    """The reference's ℓ2 update: window 1 receives η plus its old content, window 2 is
    emptied, and the freed budget (ε² − ‖δ‖²)/C plus both windows' mass goes to window 1."""
    n, c, h, w = xb.shape
    delta = (xb - x0).permute(0, 2, 3, 1).clone()  # (n, H, W, C)
    ar = torch.arange(n, device=xb.device).view(-1, 1, 1)
    r1, c1 = _window_index(n, h, w, s, generator, xb.device)
    r2, c2 = _window_index(n, h, w, s, generator, xb.device)
    idx1 = (ar, r1.unsqueeze(2), c1.unsqueeze(1))
    idx2 = (ar, r2.unsqueeze(2), c2.unsqueeze(1))
    win1 = delta[idx1]  # (n, s, s, C)
    mask = torch.zeros(n, h, w, 1, device=xb.device)
    mask[idx1] = 1.0
    mask[idx2] = 1.0
    norm_windows = (delta * mask).reshape(n, -1).norm(dim=1).view(-1, 1, 1, 1)
    norm_image = delta.reshape(n, -1).norm(dim=1).view(-1, 1, 1, 1)
    norm_win1 = win1.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()  # per channel
    new = (_etas(s, n, generator).unsqueeze(-1) * _signs((n, 1, 1, c), generator)).to(xb)
    new = new + win1 / (norm_win1 + 1e-12)
    new = new / (new.pow(2).sum(dim=(1, 2), keepdim=True).sqrt() + 1e-12)
    new = new * ((r ** 2 - norm_image ** 2).clamp_min(0) / c + norm_windows ** 2).sqrt()
    delta[idx2] = 0.0
    delta[idx1] = new
    delta = delta.permute(0, 3, 1, 2)
    return x0 + r * delta / (_l2(delta) + 1e-12)


def square(defense: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
           n_queries: int = 5000, p_init: float = 0.8,
           generator: Draws) -> tuple[torch.Tensor, dict]:
    """Run the Square Attack and return the lowest-margin point found per example.

    Args:
        defense: the defense, queried through its exact forward pass only.
        x: clean images (N, C, H, W) in [0, 1].
        y: true labels.
        threat: ℓ∞ or ℓ2 threat model.
        n_queries: forward passes per example, the starting point included.
        p_init: initial fraction of pixels a square covers.
        generator: every random draw's source: per-example streams (one row per example:
            :class:`gauntlet.benchmark.streams.RowStreams`) or a seeded CPU generator.

    Returns:
        (x_best, info): ``info["queries"]`` per example (int list), their mean and median,
        and ``single_draw_queries`` (True when the defense is randomized).

    Raises:
        ValueError: inputs are not image tensors, or the budget is below one query.
    """
    if x.dim() != 4:
        raise ValueError(f"square works on image tensors (N, C, H, W), got shape {tuple(x.shape)}")
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries}")
    n, c, h, w = x.shape
    d = c * h * w
    r = threat.step_size(d, 1.0)  # raw radius, or the box scale when ε = ∞
    view = AdaptiveView(defense, bpda=False, eot=1)  # exact forward, one draw per call
    best = BestTracker(x)
    if threat.norm == "linf":
        start = _linf_init(x, r, generator)
    else:
        start = _l2_init(x, r, generator)
    start = threat.project(start, x)
    with torch.no_grad():
        best.update(start, evaluate(view, start, y, "margin", grad=False).margin)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        for it in range(1, n_queries):
            active = (best.margin >= 0).nonzero().flatten()
            if len(active) == 0:
                break
            p = p_schedule(it - 1, n_queries, p_init)
            x0, xb = x[active], best.x[active]
            if threat.norm == "linf":
                s = min(max(int(round(math.sqrt(p * d / c))), 1), h, w)
                cand = _linf_proposal(xb, r, s, streams.rows(generator, active))
            else:
                s = max(int(round(math.sqrt(p * d / c))), 3)
                s = min(s + (s % 2 == 0), h, w)
                cand = _l2_proposal(xb, x0, r, s, streams.rows(generator, active))
            cand = threat.project(cand, x0)
            best.update(cand, evaluate(view, cand, y[active], "margin", grad=False).margin, active)
            queries[active] += 1
    q = queries.cpu()
    info = {
        "queries": q.tolist(),
        "queries_mean": float(q.float().mean()),
        "queries_median": float(q.float().median()),
        "single_draw_queries": bool(getattr(defense, "randomized", False)),
    }
    return best.x, info


@ATTACKS.register
class Square(Attack):
    """Square Attack: score-based random search on the margin loss."""

    id = "square"
    summary = "Square Attack, score based, 5000 queries"
    gradient_free = True
    deterministic_only = True
    #: 250 queries: from there on every phase of the p schedule spans at least one query
    #: (it is rescaled to 10,000 iterations, and its shortest phase after the first,
    #: rescaled iterations 10-50, is 1/250 of it; :func:`p_schedule`), so every square
    #: size the reference schedule uses is tried.
    FLOORS = {"n_queries": 250}

    @dataclass(frozen=True)
    class Params:
        """Square Attack parameters (defaults of fra31/auto-attack ``SquareAttack``)."""

        #: Forward passes per example, starting point included.
        n_queries: int = 5000
        #: Initial fraction of pixels covered by a square (halved on the schedule).
        p_init: float = 0.8

    def budget(self) -> float:
        return float(self.params.n_queries)

    def run(self, defense: nn.Module, x: torch.Tensor, y: torch.Tensor,
            threat: ThreatModel, ctx: AttackContext) -> AttackResult:
        p = self.params
        x_adv, info = square(defense, x, y, threat, n_queries=p.n_queries, p_init=p.p_init,
                             generator=ctx.generator)
        return AttackResult(x_adv, info)
