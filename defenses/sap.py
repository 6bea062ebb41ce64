"""Stochastic activation pruning (Dhillon et al., ICLR 2018, Algorithm 1).

For one layer's activation vector h (per example, all units of the layer), SAP draws r
indices *with replacement* from the multinomial p_j = |h_j| / Σ_k |h_k|, zeroes every
activation never drawn and rescales each survivor by 1 / (1 − (1 − p_j)^r), the inverse
of its probability of being drawn at least once. Then E[SAP(h)_j] = h_j: the layer is
unbiased in expectation (Dhillon et al., §3). r is set per layer as a fraction of the
layer's size (``frac``; Dhillon et al. sweep it and use 100% of the activations in their
headline runs).

``sampling="exact"`` draws exactly r indices (inverse-CDF search; ~10 s per 1,000
MNIST rows of a 12,544-unit layer on one CPU core). ``sampling="poisson"`` draws a
Poisson(r) number of indices instead, which makes the draw counts of the units
independent Poisson(r·p_j): unit j survives with probability 1 − e^(−r·p_j) and is
rescaled by its inverse, so the layer stays exactly unbiased; for the small p_j of a
large layer (1 − p_j)^r ≈ e^(−r·p_j) and the two schemes are nearly indistinguishable,
at ~1/20 of the cost.

SAP is randomness *inside* the classifier: the model declares ``randomized = True`` and
attacks average gradients over draws (EOT, Athalye, Carlini & Wagner 2018, §5.3.1).
"""
from __future__ import annotations

import torch
from torch import nn

from gauntlet.defenses.models import ResNet9, SmallCNN


def sap(h: torch.Tensor, frac: float = 1.0, sampling: str = "exact") -> torch.Tensor:
    """Apply stochastic activation pruning to each row of ``h`` independently.

    Args:
        h: (N, ...) activations; each row is one example's whole layer.
        frac: samples r per row as a fraction of the units per row (r = round(frac·n), ≥ 1).
        sampling: ``"exact"`` (r draws with replacement, Dhillon et al.'s Algorithm 1) or
            ``"poisson"`` (Poisson(r) draws; independent survivals, see the module doc).

    Returns:
        Pruned and rescaled activations, same shape; rows of all zeros stay zero.

    Raises:
        ValueError: unknown ``sampling``.
    """
    if sampling not in ("exact", "poisson"):
        raise ValueError(f"sampling must be 'exact' or 'poisson', got {sampling!r}")
    n_rows = h.shape[0]
    flat = h.reshape(n_rows, -1)
    units = flat.shape[1]
    r = max(1, int(round(frac * units)))
    tiny = torch.finfo(flat.dtype).tiny
    with torch.no_grad():
        mag = flat.detach().abs()
        p = mag / mag.sum(1, keepdim=True).clamp_min(tiny)
        if sampling == "poisson":
            prob = -torch.expm1(-r * p)  # P(Poisson(r·p_j) ≥ 1)
            kept = torch.rand(flat.shape).to(flat) < prob
        else:
            # r draws with replacement by inverse-CDF sampling (batched multinomial)
            cdf = p.cumsum(1)
            cdf = cdf / cdf[:, -1:].clamp_min(tiny)
            u = torch.rand(n_rows, r).to(flat)
            idx = torch.searchsorted(cdf, u, right=True).clamp_max(units - 1)
            kept = torch.zeros_like(flat, dtype=torch.bool)
            kept.scatter_(1, idx, True)
            # P(drawn at least once) = 1 − (1 − p)^r, computed as −expm1(r·log1p(−p))
            prob = -torch.expm1(r * torch.log1p(-p.clamp_max(1.0 - 1e-7)))
        kept &= mag > 0
        scale = torch.where(kept, 1.0 / prob.clamp_min(tiny), torch.zeros_like(prob))
    return (flat * scale).view_as(h)


class SAP(nn.Module):
    """Stochastic activation pruning as a layer (samples on every call).

    Args:
        frac: samples per example as a fraction of the layer's units.
        sampling: ``"exact"`` or ``"poisson"`` (see :func:`sap`).

    Raises:
        ValueError: ``frac`` <= 0 or unknown ``sampling``.
    """

    randomized = True

    def __init__(self, frac: float = 1.0, sampling: str = "exact") -> None:
        super().__init__()
        if frac <= 0:
            raise ValueError(f"frac must be > 0, got {frac}")
        if sampling not in ("exact", "poisson"):
            raise ValueError(f"sampling must be 'exact' or 'poisson', got {sampling!r}")
        self.frac = frac
        self.sampling = sampling

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Prune and rescale each row of ``h``."""
        return sap(h, self.frac, self.sampling)


def prune_after_relus(model: nn.Module, frac: float, sampling: str) -> None:
    """Put SAP after every ReLU of ``model`` at inference (in place): Dhillon et al. apply
    SAP post hoc to a conventionally trained network, so training mode runs the plain
    network and eval mode prunes. Parameters and state-dict keys are unchanged."""
    pruning = SAP(frac, sampling)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _PrunedReLU(pruning))


class _PrunedReLU(nn.Module):
    """ReLU, then SAP when the module is in eval mode (the plain ReLU in training)."""

    def __init__(self, sap: SAP) -> None:
        super().__init__()
        self.sap = sap

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = torch.relu(h)
        return h if self.training else self.sap(h)


class SAPSmallCNN(SmallCNN):
    """:class:`~gauntlet.defenses.models.SmallCNN` with SAP after every ReLU at
    inference (:func:`prune_after_relus`; SmallCNN's parameters and state-dict keys).

    Args:
        frac: SAP samples per layer as a fraction of its units.
        sampling: ``"exact"`` or ``"poisson"`` (see :func:`sap`).
        **kwargs: :class:`~gauntlet.defenses.models.SmallCNN` arguments.
    """

    randomized = True

    def __init__(self, frac: float = 1.0, sampling: str = "exact", **kwargs) -> None:
        super().__init__(**kwargs)
        prune_after_relus(self, frac, sampling)


class SAPResNet9(ResNet9):
    """:class:`~gauntlet.defenses.models.ResNet9` with SAP after every ReLU at inference
    (:func:`prune_after_relus`), so a conventionally trained ResNet9's weights load as they are.

    Args:
        frac, sampling: as :class:`SAPSmallCNN`'s.
        **kwargs: :class:`~gauntlet.defenses.models.ResNet9` arguments.
    """

    randomized = True

    def __init__(self, frac: float = 1.0, sampling: str = "exact", **kwargs) -> None:
        super().__init__(**kwargs)
        prune_after_relus(self, frac, sampling)
