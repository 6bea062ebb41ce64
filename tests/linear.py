"""Linear models whose minimal adversarial perturbations are known in closed form."""
from __future__ import annotations

import math

import torch
from torch import nn

from gauntlet.defenses.models import LinearClassifier


def linear_problem(n: int, *, num_classes: int = 2, side: int = 8, seed: int = 0):
    """A random linear model and ``n`` inputs in [0.3, 0.7] labelled by the model itself."""
    g = torch.Generator().manual_seed(seed)
    model = LinearClassifier(side * side, num_classes)
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn(num_classes, side * side, generator=g))
        model.linear.bias.zero_()
    x = 0.3 + 0.4 * torch.rand(n, 1, side, side, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def exact_distance(model: LinearClassifier, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """Minimal raw distance to misclassification, box ignored:
    min_{j≠y} (z_y − z_j) / ‖w_y − w_j‖_q with q the dual norm (ℓ1 for ℓ∞, ℓ2 for ℓ2)."""
    w, b = model.linear.weight.detach().double(), model.linear.bias.detach().double()
    z = x.flatten(1).double() @ w.t() + b
    q = 1 if norm == "linf" else 2
    out = torch.full((len(x),), math.inf, dtype=torch.float64)
    for j in range(w.shape[0]):
        dist = (z.gather(1, y[:, None]).squeeze(1) - z[:, j]) / (w[y] - w[j]).norm(p=q, dim=1)
        out = torch.minimum(out, torch.where(y == j, math.inf, dist))
    return out


def still_correct(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example: the model still predicts the label at ``x_adv``."""
    with torch.no_grad():
        return model(x_adv).argmax(1) == y
