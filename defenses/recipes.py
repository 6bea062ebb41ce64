"""Training recipes named in manifests' ``train`` blocks.

Each recipe is ``recipe(job, **args) -> model`` (see :mod:`benchmark.training`), seeded
through ``job.generator`` so that the same arguments give the same weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches of one epoch."""
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def cross_entropy_epochs(opt: torch.optim.Optimizer, module: nn.Module, forward, x: torch.Tensor,
                         y: torch.Tensor, epochs: int, batch_size: int, generator: torch.Generator) -> None:
    """``epochs`` passes of plain cross-entropy on ``forward(x[batch])``, stepping ``opt``.

    Args:
        module: put in training mode at each epoch (the caller sets eval mode after).
        forward: inputs → logits (the classifier, or the defense around it).
    """
    for _ in range(epochs):
        module.train()
        for idx in batches(len(x), batch_size, generator):
            loss = F.cross_entropy(forward(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def standard(job, epochs: int = 8, lr: float = 1e-3, batch_size: int = 64,
             noise_sigma: float = 0.0, weight_decay: float = 0.0) -> nn.Module:
    """Cross-entropy training with Adam through the defense's preprocessing.

    Args:
        epochs: passes over the training split.
        lr: Adam learning rate.
        batch_size: examples per step.
        noise_sigma: Gaussian noise N(0, σ²) added to inputs in [0,1] space before the
            preprocessing (Cohen et al. 2019's noise augmentation); 0 disables it.
        weight_decay: Adam weight decay.
    """
    model, defense = job.model, job.defense
    x, y = job.x_train.to(job.device), job.y_train.to(job.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    def forward(xb: torch.Tensor) -> torch.Tensor:
        if noise_sigma > 0:
            xb = xb + noise_sigma * torch.randn(xb.shape, generator=job.generator).to(xb)
        return defense(xb)

    cross_entropy_epochs(opt, model, forward, x, y, epochs, batch_size, job.generator)
    model.eval()
    return model
