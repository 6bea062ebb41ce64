"""SPSA: gradient estimation for defenses whose gradients are masked.

Uesato, O'Donoghue, van den Oord & Kohli (ICML 2018), "Adversarial Risk and the Dangers
of Evaluating Against Weak Attacks": minimize the margin loss with
Adam, feeding it the Simultaneous Perturbation Stochastic Approximation gradient estimate
of Spall (1992) instead of the true gradient. With n Rademacher directions v_k ∈ {±1}^d
and a probe size δ, the estimate at the current point x_t is

    ĝ = (1/n) Σ_k [f(x_t + δ·v_k) − f(x_t − δ·v_k)] / (2δ) · v_k

(1/v_k,i = v_k,i for ±1 entries): unbiased for a linear f (E[v·vᵀ] = I), accurate to
O(δ²) for a smooth one, and built from forward passes only, so it reads a
non-differentiable or gradient-masking defense wherever a probe changes its output.
Each iteration takes one Adam step on the perturbation and projects onto the
threat's ball ∩ [0, 1] (:meth:`ThreatModel.project`).

Defaults, and where they come from (facts read there, the code here is ours):

* δ = 0.01, learning rate 0.01, 128 evaluated points per estimate (64 ± pairs), one
  estimate per step: cleverhans' ``SPSA`` attack (``cleverhans/attacks/spsa.py``,
  ``DEFAULT_DELTA``, ``DEFAULT_LEARNING_RATE``, ``DEFAULT_SPSA_SAMPLES``,
  ``DEFAULT_SPSA_ITERS``; the same values are the defaults of its PyTorch port
  ``cleverhans/torch/attacks/spsa.py``); the TensorFlow attack was implemented by the
  paper's first author (cleverhans issue #1087).
* 80 iterations and early stopping at margin < 0: cleverhans'
  ``scripts/make_confidence_report_spsa.py`` (``NB_ITER = 80``,
  ``early_stop_loss_threshold=0``; its comment explains that without early stopping the
  attack can "bounce off" the success region). The ``SPSA`` class itself has no
  iteration default.
* Adam β₁ = 0.9, β₂ = 0.999 (cleverhans ``TensorAdam``; Kingma & Ba 2015); ε_Adam = 1e-8
  (``torch.optim.Adam``, used by the PyTorch port).
* A uniform random start in the ball (``projected_optimization`` and the PyTorch port
  both start from a uniform draw in the ℓ∞ ball; ℓ2 here: uniform in the ℓ2 ball).

Differences from the reference, none of which changes what is optimized:

* The estimate is divided by δ as in the paper (cleverhans issue #1087: the TensorFlow
  code multiplied the loss by δ·v, scaling ĝ by δ; Adam is scale-invariant up to its ε,
  so the step is the same). The PyTorch port passes ``x`` where its loss expects a
  perturbation, so it probes around 2x, not the current point (cleverhans issue #1249,
  open); we probe around the current iterate, as SPSA prescribes (Spall 1992).
* All examples run at once: every active example's 128 points form one batch, split into
  passes of at most ``max_rows`` rows, the two points of a pair always in the same pass.
* Probe points are clipped to [0, 1]: a defense is only specified on the box (a codec
  may refuse values outside). On a box face the finite difference then spans δ instead
  of 2δ: in expectation that coordinate's estimate is halved, its sign kept.
* The lowest-margin point seen is returned (:class:`BestTracker`), and an example leaves
  the batch once its margin is negative (the reference's threshold-0 early stop), so a
  success is never lost.

Threat models. The paper and cleverhans attack ℓ∞ balls; ℓ2 works the same here, since
only the projection depends on the norm: Adam's step is taken on the perturbation and
:meth:`ThreatModel.project` maps it back onto the ℓ2 ball ∩ [0, 1]. The learning rate and
δ are per input value for both norms. Adam moves every coordinate by about the learning
rate per step, so for ℓ2 the rate is rescaled by ε_rms / 0.031 (:data:`L2_LR_REFERENCE_EPS`):
the step keeps the ratio to the per-value radius that the reference's 0.01 has at the
leaderboard's ℓ∞ ε = 0.031 (unscaled, one step at ℓ2 0.005 would be twice the ball's
radius; on the masked linear model of tests/test_spsa.py the robust examples then reach 79%
of the optimal margin decrease instead of 87%). ε = ∞ uses the box (ℓ2: ε_rms = 1).

Deterministic defenses only (``deterministic_only``), as Square: against a randomized
defense each query sees one draw, the finite differences are dominated by the draw noise
and the search becomes a random walk; EOT attacks cover those defenses (AutoAttack's
``version="rand"`` leaves score-based search out for the same reason). It runs only where
gradients are masked (``needs_masked_gradients``): a declared non-differentiable step or
zero raw gradients observed by the runner. Where gradients are informative, PGD/APGD use
them at a fraction of SPSA's ~10,000 queries per example.
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

#: Adam's moment decay rates (Kingma & Ba 2015; cleverhans ``TensorAdam``).
ADAM_BETAS = (0.9, 0.999)
#: Adam's denominator guard (``torch.optim.Adam``'s default).
ADAM_EPS = 1e-8
#: The ℓ∞ radius at which the reference learning rate is used as is; for ℓ2 the rate is
#: scaled by ε_rms / this value, so the step keeps the same ratio to the per-value radius.
L2_LR_REFERENCE_EPS = 0.031


def spsa_gradient(view: AdaptiveView, x: torch.Tensor, y: torch.Tensor, *, pairs: int,
                  delta: float, max_rows: int, generator: Draws) -> torch.Tensor:
    """The SPSA estimate of ∂margin/∂x at each row of ``x`` (Spall 1992; Uesato et al. 2018).

    Args:
        view: the defense's exact forward pass (no gradients are read).
        x: current points (N, ...) in [0, 1].
        y: their labels.
        pairs: Rademacher directions per example; 2·pairs forward rows each.
        delta: probe size δ per input value.
        max_rows: rows built and evaluated per batch (memory); pairs are never split.
        generator: per-example streams (one row per row of ``x``) or a CPU generator.

    Returns:
        (N, ...) gradient estimates of the (rejection-folded) margin.
    """
    n, shape = len(x), tuple(x.shape[1:])
    per_batch = max(1, max_rows // (2 * pairs))  # whole examples, so whole pairs
    out = torch.empty_like(x)
    for s in range(0, n, per_batch):
        xs, ys = x[s:s + per_batch], y[s:s + per_batch]
        e = len(xs)
        dv = streams.signs(streams.rows(generator, range(s, s + e)), (e, pairs * math.prod(shape)))  # a row per example
        dv = dv.view(e, pairs, *shape).to(x).mul_(delta)  # δ·v
        # rows (example, pair, ±) interleaved: x + δv and x − δv of a pair are adjacent, so
        # the evaluator's passes (an even number of rows) always hold both points of a pair
        probe = torch.empty((e, pairs, 2, *shape), dtype=x.dtype, device=x.device)
        torch.add(xs.unsqueeze(1), dv, out=probe[:, :, 0])
        torch.sub(xs.unsqueeze(1), dv, out=probe[:, :, 1])
        probe = probe.clamp_(0.0, 1.0).view(e * pairs * 2, *shape)
        m = evaluate(view, probe, ys.repeat_interleave(2 * pairs), "margin", grad=False).margin
        m = m.view(e, pairs, 2)
        # slope_k = [f(x + δv_k) − f(x − δv_k)] / (2δ), the derivative along v_k; ĝ = mean_k
        # slope_k·v_k, computed as one batched product with δv_k (hence the extra 1/δ)
        slope = (m[..., 0] - m[..., 1]) / (2 * delta * delta * pairs)
        grad = torch.bmm(slope.unsqueeze(1), dv.view(e, pairs, -1)).squeeze(1)
        out[s:s + e] = grad.view(e, *shape)
    return out


def spsa(defense: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
         iterations: int = 80, samples: int = 128, delta: float = 0.01,
         learning_rate: float = 0.01, max_rows: int = 4096,
         generator: Draws) -> tuple[torch.Tensor, dict]:
    """Run SPSA with Adam and return the lowest-margin point found per example.

    Args:
        defense: the defense, queried through its exact forward pass only.
        x: clean inputs (N, ...) in [0, 1].
        y: true labels.
        threat: ℓ∞ or ℓ2 threat model.
        iterations: Adam steps per example at most.
        samples: forward rows per gradient estimate (samples/2 ± pairs); even.
        delta: probe size δ per input value.
        learning_rate: Adam step size per input value at the reference ℓ∞ radius (the ℓ2
            rate is rescaled, see the module docstring).
        max_rows: rows built and evaluated at once (memory bound of one batch).
        generator: every random draw's source: per-example streams (one row per example:
            :class:`gauntlet.benchmark.streams.RowStreams`) or a seeded CPU generator.

    Returns:
        (x_best, info): ``info["queries"]`` per example (forward rows, the starting point
        and the point after every step included), their mean and median,
        ``iterations_run`` (steps of the longest-running example), ``broken_fraction``,
        and ``flat_estimate_fraction``: the share of gradient estimates that were exactly
        zero (no probe changed the output: the defense is flat at scale δ).

    Raises:
        ValueError: a parameter is out of range, or x and y disagree in length.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if samples < 2 or samples % 2:
        raise ValueError(f"samples must be even and >= 2 (± pairs), got {samples}")
    if not (delta > 0 and learning_rate > 0):
        raise ValueError(f"delta and learning_rate must be > 0, got {delta} and {learning_rate}")
    if max_rows < 2:
        raise ValueError(f"max_rows must be >= 2, got {max_rows}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    n = len(x)
    queries = torch.zeros(n, dtype=torch.long)
    best = BestTracker(x)
    r = threat.radius(x[0].numel()) if n else 0.0
    if n == 0 or r == 0:  # nothing to search: the clean point is the only feasible one
        return best.x, _info(queries, best, 0, 0, 0)
    lr = learning_rate
    if threat.norm == "l2":
        eps_rms = 1.0 if math.isinf(threat.eps) else threat.eps
        lr = learning_rate * eps_rms / L2_LR_REFERENCE_EPS
    b1, b2 = ADAM_BETAS
    view = AdaptiveView(defense, bpda=False, eot=1)  # exact forward, no gradient read
    cur = threat.random_start(x, generator)
    mom = torch.zeros_like(x)
    sq = torch.zeros_like(x)
    flat = estimates = run = 0
    with torch.no_grad():
        best.update(cur, evaluate(view, cur, y, "margin", grad=False).margin)
        queries += 1
        for t in range(1, iterations + 1):
            active = (best.margin >= 0).nonzero().flatten()
            if len(active) == 0:
                break
            run = t
            g = spsa_gradient(view, cur[active], y[active], pairs=samples // 2, delta=delta,
                              max_rows=max_rows, generator=streams.rows(generator, active))
            flat += int((g.reshape(len(g), -1).abs().amax(1) == 0).sum())
            estimates += len(g)
            # Adam (Kingma & Ba 2015, Alg. 1) descending the margin; every active example
            # has taken exactly t − 1 steps, so one bias correction serves all.
            mom[active] = b1 * mom[active] + (1 - b1) * g
            sq[active] = b2 * sq[active] + (1 - b2) * g * g
            step = lr * (mom[active] / (1 - b1 ** t)) / ((sq[active] / (1 - b2 ** t)).sqrt() + ADAM_EPS)
            new = threat.project(cur[active] - step, x[active])
            cur[active] = new
            best.update(new, evaluate(view, new, y[active], "margin", grad=False).margin, active)
            queries[active.cpu()] += samples + 1
    return best.x, _info(queries, best, run, flat, estimates)


def _info(queries: torch.Tensor, best: BestTracker, run: int, flat: int, estimates: int) -> dict:
    q = queries.float()
    return {
        "queries": queries.tolist(),
        "queries_mean": float(q.mean()) if len(q) else 0.0,
        "queries_median": float(q.median()) if len(q) else 0.0,
        "iterations_run": run,
        "broken_fraction": float((best.margin < 0).float().mean()) if len(q) else 0.0,
        "flat_estimate_fraction": flat / estimates if estimates else 0.0,
    }


@ATTACKS.register
class SPSA(Attack):
    """SPSA gradient estimation with Adam on the margin loss (Uesato et al. 2018)."""

    id = "spsa"
    summary = "SPSA gradient estimation + Adam, 80 steps of 128 queries"
    gradient_free = True
    deterministic_only = True
    needs_masked_gradients = True
    #: 10 iterations: 1/(1 − β₁) with Adam's β₁ = 0.9, the horizon of its first-moment
    #: average (fewer steps never average a full window of estimates); 32 rows per
    #: estimate (16 ± pairs): a quarter of cleverhans' ``DEFAULT_SPSA_SAMPLES``.
    FLOORS = {"iterations": 10, "samples": 32}

    @dataclass(frozen=True)
    class Params:
        """SPSA parameters (defaults of cleverhans' ``SPSA`` and its SPSA report script)."""

        #: Adam steps per example at most (cleverhans ``make_confidence_report_spsa.py``).
        iterations: int = 80
        #: Forward rows per gradient estimate, i.e. samples/2 ± pairs (``DEFAULT_SPSA_SAMPLES``).
        samples: int = 128
        #: Probe size δ per input value (``DEFAULT_DELTA``).
        delta: float = 0.01
        #: Adam learning rate per input value (``DEFAULT_LEARNING_RATE``; ℓ2 rescaled).
        learning_rate: float = 0.01
        #: Rows built and evaluated at once (memory only: the random draws do not depend on it).
        max_rows: int = 4096

    def budget(self) -> float:
        return float(self.params.iterations * self.params.samples)

    def run(self, defense: nn.Module, x: torch.Tensor, y: torch.Tensor,
            threat: ThreatModel, ctx: AttackContext) -> AttackResult:
        p = self.params
        x_adv, info = spsa(defense, x, y, threat, iterations=p.iterations, samples=p.samples,
                           delta=p.delta, learning_rate=p.learning_rate, max_rows=p.max_rows,
                           generator=ctx.generator)
        return AttackResult(x_adv, info)
