"""Certification entry point: the ``certify`` record body of a submission (docs/results.md).

The runner calls :func:`certify_submission` for a submission whose manifest declares a
certificate and wraps the returned ``{method, params, per_example, summary, info}`` with
the common fields (run id, config hash, timing, environment). After the attacks, the
flags job checks every pair with :func:`consistency_violations` (flag
``certificate-violated``): certified accuracy is a lower bound and empirical accuracy an
upper bound, so an example certified at a threat and broken by an attack is a bug
somewhere (or, for smoothing, an α-probability event).

* ``randomized-smoothing``: CERTIFY (Cohen et al. 2019) over all examples at once
  (:mod:`gauntlet.benchmark.certification.smoothing`), or, with ``sequential=True``, the staged
  test of :mod:`gauntlet.benchmark.certification.sequential`, which stops sampling an example
  once every threat's radius is decided.
* ``lipschitz``: radius = margin / (√2·L) with the model's guaranteed bound L
  (:mod:`gauntlet.defenses.lipschitz`).

An example is certified at a threat when it is correct and its radius is at least the
threat's ℓ2 radius (ε·√d; for ℓ∞ the ℓ2 ball of radius ε·√d contains the ℓ∞ ball).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from gauntlet.benchmark.certification.sequential import DEFAULT_STAGES, certify_sequential
from gauntlet.benchmark.certification.smoothing import certify, finite, max_radius
from gauntlet.benchmark.intervals import LEVEL, METHOD, accuracy_interval, rounded
from gauntlet.benchmark.threats import ThreatModel

#: Points of the certified-accuracy-versus-radius curve (besides the threats' radii).
CURVE_POINTS = 41


def certified_curve(radius: Sequence[float], correct: Sequence[int],
                    radii: Sequence[float] | None = None) -> dict[str, list[float]]:
    """Certified accuracy versus ℓ2 radius: fraction correct with radius ≥ r, for each r.

    Args:
        radius: per-example certified radius.
        correct: per-example 0/1 correctness of the certified prediction.
        radii: where to evaluate; default 41 points from 0 to the largest radius.

    Returns:
        ``{"radius": [...], "accuracy": [...]}``.
    """
    rad = np.asarray(radius, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if radii is None:
        top = float(rad.max()) if rad.size else 0.0
        radii = np.linspace(0.0, top, CURVE_POINTS).tolist()
    acc = [float(np.mean(ok & (rad >= r))) if rad.size else 0.0 for r in radii]
    return {"radius": [float(r) for r in radii], "accuracy": acc}


def consistency_violations(cert_per_example: Mapping[str, Sequence], robust_correct_by_attack:
                           Mapping[str, Mapping[str, Any]], *, radii: Mapping[str, float],
                           indices: Sequence[int]) -> dict[str, list[int]]:
    """Examples certified at a threat but broken there by some attack.

    Broken means the defense predicted a wrong *class* at the attack's final point in at
    least half of its scoring draws: the survival score (label or abstain; per_example
    ``adv_survives``, or ``robust_correct`` in schema-1 records) is at most 0.5. A certificate guarantees the smoothed classifier's class in
    the ball, so an abstention there is PREDICT's finite-sample caution, not a violation,
    while a wrong class in most draws is (a violation that can fire on a smoothed model:
    requiring every draw to be wrong, as before, never could). When the attack's
    per-example record is given, examples whose ``clean_correct`` is at most 0.5 are
    skipped: the attack did not break an example the defense already got wrong.

    Args:
        cert_per_example: the certify record's ``per_example`` (``radius``, ``correct``).
        robust_correct_by_attack: threat id → attack id → either the attack record's
            ``per_example`` dict or its ``robust_correct`` list (aligned with ``indices``).
        radii: threat id → ℓ2 radius (``ThreatModel.l2_radius(d)``).
        indices: the dataset indices the arrays are aligned with.

    Returns:
        threat id → sorted dataset indices of violations (every threat in ``radii``).

    Raises:
        ValueError: arrays of different lengths.
    """
    rad = np.asarray(cert_per_example["radius"], dtype=np.float64)
    ok = np.asarray(cert_per_example["correct"], dtype=bool)
    if len(rad) != len(indices) or len(ok) != len(indices):
        raise ValueError("certify arrays and indices differ in length")
    out: dict[str, list[int]] = {}
    for threat_id, r in radii.items():
        certified = ok & (rad >= r)
        broken = np.zeros(len(indices), dtype=bool)
        for attack_id, rec in robust_correct_by_attack.get(threat_id, {}).items():
            if isinstance(rec, Mapping):
                key = "adv_survives" if "adv_survives" in rec else "robust_correct"
                survived = rec[key]
            else:
                survived = rec
            robust = np.asarray(survived, dtype=np.float64)
            if len(robust) != len(indices):
                raise ValueError(f"{threat_id}/{attack_id}: robust_correct has {len(robust)} "
                                 f"entries, expected {len(indices)}")
            hit = robust <= 0.5
            if isinstance(rec, Mapping) and "clean_correct" in rec:
                hit &= np.asarray(rec["clean_correct"], dtype=np.float64) > 0.5
            broken |= hit
        out[threat_id] = sorted(int(indices[i]) for i in np.flatnonzero(certified & broken))
    return out


def _smoothed_function(defense: nn.Module) -> nn.Module:
    """What is smoothed: a SmoothedDefense's base f ∘ preprocessing, else the defense."""
    return getattr(defense, "base_logits", defense)


def _certify_smoothing(cert, defense: nn.Module, x: torch.Tensor, radii: list[float], *,
                       device: torch.device, seed: int, profile_n: int | None,
                       sequential: bool, autocast: bool):
    n = min(cert.n, profile_n) if profile_n else cert.n
    params = {"sigma": cert.sigma, "n0": cert.n0, "n": n, "alpha": cert.alpha, "batch": cert.batch,
              "n_manifest": cert.n, "mode": "sequential" if sequential else "full",
              "autocast": bool(autocast and device.type == "cuda")}
    gen = torch.Generator(device=device).manual_seed(seed)
    common = dict(sigma=cert.sigma, n0=cert.n0, n=n, alpha=cert.alpha, batch=cert.batch,
                  generator=gen, autocast=autocast)
    model = _smoothed_function(defense)
    if sequential:
        params["stages"] = list(DEFAULT_STAGES)
        result = certify_sequential(model, x, radii=sorted(set(radii)) or [0.0], **common)
    else:
        result = certify(model, x, **common)
    full = len(x) * (cert.n0 + n)
    used = int(result.samples.sum())
    info = {"samples_used": used, "samples_full": full, "samples_saved": full - used,
            "abstained": int((result.prediction < 0).sum()),
            "max_radius": max_radius(n, cert.alpha, cert.sigma)}
    return params, result.prediction, result.radius, info


def _certify_lipschitz(defense: nn.Module, x: torch.Tensor, batch: int = 500):
    from gauntlet.defenses.lipschitz import margin_certificate

    if len(getattr(defense, "steps", ())) > 0:
        raise ValueError("lipschitz certificate: the defense has preprocessing steps, whose "
                         "Lipschitz constants are unknown; certify a bare classifier")
    classifier = getattr(defense, "classifier", defense)
    if not hasattr(classifier, "lipschitz_bound"):
        raise ValueError(f"lipschitz certificate: {type(classifier).__name__} has no lipschitz_bound()")
    lip = float(classifier.lipschitz_bound())
    if not (math.isfinite(lip) and lip > 0):
        raise ValueError(f"lipschitz certificate: bound {lip!r} is not a positive number")
    preds, rads = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            p, r = margin_certificate(defense(x[i:i + batch]), lip)
            preds.append(p.cpu())
            rads.append(r.double().cpu())
    info = {"lipschitz_constant": lip}
    return {}, torch.cat(preds), torch.cat(rads).numpy(), info


def certify_submission(sub, defense: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       indices: Sequence[int], threats: Sequence[ThreatModel],
                       device: str | torch.device, seed: int, profile_n: int | None = None,
                       sequential: bool = False, autocast: bool = False) -> dict[str, Any]:
    """Certify a submission's defense on the given examples.

    Args:
        sub: the :class:`gauntlet.benchmark.registry.Submission` (its manifest's ``certify`` block).
        defense: its built defense (``build_defense``), on ``device``.
        x: the examples (N, C, H, W) in [0, 1], in evaluation order.
        y: their labels.
        indices: their test-split indices (only checked for length here).
        threats: threat models whose certified accuracy is reported.
        device: where to run.
        seed: seeds the noise (smoothing).
        profile_n: cap on smoothing's n for a quick run (recorded in ``params``).
        sequential: smoothing only: the staged early-stopping test at the threats' radii.
        autocast: smoothing only: CUDA fp16 autocast for the base model (off on the CPU).

    Returns:
        ``{"method", "params", "per_example", "summary", "info"}`` per docs/results.md.

    Raises:
        ValueError: no certificate in the manifest, or inputs of mismatched length.
    """
    cert = sub.manifest.certify
    if cert is None:
        raise ValueError(f"{sub.path}: certify: the manifest declares no certificate")
    if not (len(x) == len(y) == len(indices)):
        raise ValueError(f"x, y and indices differ in length: {len(x)}, {len(y)}, {len(indices)}")
    dev = torch.device(device)
    x = x.to(dev)
    d = int(x[0].numel()) if len(x) else 0
    radii = {t.id: float(t.l2_radius(d)) for t in threats}
    if cert.method == "randomized-smoothing":
        params, pred, radius, info = _certify_smoothing(
            cert, defense, x, list(radii.values()), device=dev, seed=seed, profile_n=profile_n,
            sequential=sequential, autocast=autocast)
    else:
        params, pred, radius, info = _certify_lipschitz(defense, x)
    correct = (pred == y.cpu()).numpy().astype(bool)
    radius_list = finite(radius)
    grid = sorted(set(certified_curve(radius, correct)["radius"]) | set(radii.values()))
    certified_at = {tid: correct & (np.asarray(radius) >= r) for tid, r in radii.items()}
    summary = {
        "n": len(indices),
        "interval": {"level": LEVEL, "method": METHOD},
        "clean_accuracy": float(correct.mean()) if len(correct) else 0.0,
        "clean_accuracy_ci": rounded(accuracy_interval(correct.astype(float).tolist())),
        "certified_accuracy": {tid: float(np.mean(c)) if len(correct) else 0.0 for tid, c in certified_at.items()},
        "certified_accuracy_ci": {tid: rounded(accuracy_interval(c.astype(float).tolist()))
                                  for tid, c in certified_at.items()},
        "curve": certified_curve(radius, correct, grid),
    }
    per_example = {"prediction": [int(p) for p in pred], "radius": radius_list,
                   "correct": [int(c) for c in correct]}
    return {"method": cert.method, "params": params, "per_example": per_example,
            "summary": summary, "info": info}
