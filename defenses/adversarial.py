"""Adversarial-training recipes (training code; see :mod:`gauntlet.benchmark.training`).

:func:`pgd_at` is PGD adversarial training (Madry et al., ICLR 2018, Eq. 2.1): each
minibatch is replaced by PGD adversarial examples against the current model, found in
the ℓ∞ ball of radius ε from a uniform random start, and the model takes a gradient step
on them. The examples are crafted on the *adaptive view* of the whole defense
(:class:`gauntlet.attacks.adaptive.AdaptiveView` with BPDA), so a model behind a
non-differentiable step (a thermometer encoding) is trained against attacks that see
through it: BPDA with the step's declared approximation. Buckman et al. (2018) trained
their thermometer models against LS-PGA, a PGD over the relaxed one-hot encoding; PGD
with BPDA through the ramp is the attack that broke that defense (Athalye et al. 2018,
§5.2.1), so it is the stronger inner maximizer here.

Attack code is imported inside the recipe: a recipe is training code, and the defense
modules used at inference never import an attack (DESIGN.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gauntlet.defenses.recipes import batches

if TYPE_CHECKING:
    from gauntlet.benchmark.training import TrainingJob


def pgd_at(job: TrainingJob, eps: float = 0.1, steps: int = 10, step_size: float | None = None, epochs: int = 10,
           lr: float = 1e-3, batch_size: int = 64, clean_fraction: float = 0.0, warmup_epochs: int = 1,
           eot: int = 1) -> nn.Module:
    """PGD adversarial training (Madry et al. 2018) with Adam, through ``job.defense``.

    Args:
        eps: ℓ∞ radius of the training attack (inputs in [0, 1]).
        steps: PGD iterations per minibatch.
        step_size: α as a fraction of ε; default 2.5/steps (the evaluation PGD's rule).
        epochs: passes over the training split.
        lr: Adam learning rate.
        batch_size: examples per step.
        clean_fraction: share of each batch left clean (0 = Madry et al.'s pure
            adversarial objective).
        warmup_epochs: ε grows linearly from 0 to ``eps`` over these first epochs
            (stabilizes training of a freshly initialized small model).
        eot: draws averaged per PGD gradient for a randomized defense.

    Returns:
        The trained classifier, in eval mode.

    Raises:
        ValueError: parameters out of range.
    """
    from gauntlet.attacks.adaptive import AdaptiveView, evaluate
    from gauntlet.benchmark.threats import ThreatModel

    if eps < 0 or steps < 1 or epochs < 1 or not 0.0 <= clean_fraction < 1.0 or warmup_epochs < 0:
        raise ValueError("pgd_at: need eps >= 0, steps >= 1, epochs >= 1, 0 <= clean_fraction < 1, "
                         "warmup_epochs >= 0")
    if step_size is None:
        step_size = 2.5 / steps
    model, defense = job.model, job.defense
    x, y = job.x_train.to(job.device), job.y_train.to(job.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    view = AdaptiveView(defense, bpda=True, eot=eot)
    n_batches = (len(x) + batch_size - 1) // batch_size
    total_warmup = warmup_epochs * n_batches
    it = 0
    for _ in range(epochs):
        for idx in batches(len(x), batch_size, job.generator):
            xb, yb = x[idx], y[idx]
            scale = min(1.0, (it + 1) / total_warmup) if total_warmup else 1.0
            threat = ThreatModel("linf", eps * scale)
            n_adv = len(xb) - int(clean_fraction * len(xb))
            # the inner maximization runs with the model in eval mode and frozen parameters
            model.eval()
            xa = pgd_last_iterate(view, evaluate, xb[:n_adv], yb[:n_adv], threat, steps, step_size, job.generator)
            model.train()
            inputs = torch.cat([xa, xb[n_adv:]])
            loss = F.cross_entropy(defense(inputs), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
    model.eval()
    return model


def pgd_last_iterate(view, evaluate, x: torch.Tensor, y: torch.Tensor, threat, steps: int, step_size: float,
         generator: torch.Generator) -> torch.Tensor:
    """The last PGD iterate from a uniform random start (Madry et al. 2018, Eq. 2)."""
    if threat.eps == 0 or len(x) == 0:
        return x
    alpha = threat.step_size(x[0].numel(), step_size)
    xa = threat.random_start(x, generator)
    for _ in range(steps):
        g = evaluate(view, xa, y, "ce").grad
        xa = threat.project(xa + threat.step(torch.nan_to_num(g), alpha), x)
    return xa.detach()


def fast_at(job: TrainingJob, eps: float = 8 / 255, steps: int = 1, step_size: float | None = None,
            epochs: int = 10, lr: float = 0.2, batch_size: int = 256, weight_decay: float = 5e-4,
            warmup_epochs: int = 1, eot: int = 1, log: bool = True, checkpoint: bool = True) -> nn.Module:
    """Fast adversarial training for CIFAR-10-sized models: with ``steps=1``, FGSM from a
    uniform random start with α = 1.25·ε (Wong, Rice & Kolter, ICLR 2020, "Fast is better
    than free"); with more steps, PGD adversarial training (Madry et al. 2018) with
    α = 2.5·ε/steps. SGD on the one-cycle schedule with random crops and flips
    (:func:`gauntlet.defenses.recipes.sgd_augmented`'s), the examples crafted on the adaptive view
    of the whole defense as in :func:`pgd_at`; resumable per epoch.

    Args:
        eps: ℓ∞ radius of the training attack (inputs in [0, 1]).
        steps: attack iterations per minibatch (1: FGSM with random start).
        step_size: α as a fraction of ε (default 1.25 for one step, 2.5/steps otherwise).
        epochs: passes over the training split.
        lr: peak learning rate.
        batch_size: examples per step.
        weight_decay: SGD weight decay.
        warmup_epochs: ε grows linearly from 0 over these first epochs.
        eot: draws averaged per attack gradient for a randomized defense.
        log: one line per epoch on stderr.
        checkpoint: write a checkpoint into the submission folder after each epoch.
    """
    from gauntlet.attacks.adaptive import AdaptiveView, evaluate
    from gauntlet.benchmark.threats import ThreatModel
    from gauntlet.defenses.recipes import Checkpoint, EpochStats, OneCycle, augment

    if eps < 0 or steps < 1 or epochs < 1 or lr <= 0 or warmup_epochs < 0:
        raise ValueError("fast_at: need eps >= 0, steps >= 1, epochs >= 1, lr > 0, warmup_epochs >= 0")
    if step_size is None:
        step_size = 1.25 if steps == 1 else 2.5 / steps
    model, defense = job.model, job.defense
    x, y = job.x_train.to(job.device), job.y_train.to(job.device)
    n_batches = -(-len(x) // batch_size)
    schedule = OneCycle(model.parameters(), lr, epochs * n_batches, weight_decay=weight_decay)
    ckpt = Checkpoint(job, "fast_at", dict(eps=eps, steps=steps, step_size=step_size, epochs=epochs, lr=lr,
                                           batch_size=batch_size, weight_decay=weight_decay,
                                           warmup_epochs=warmup_epochs, eot=eot), checkpoint)
    view = AdaptiveView(defense, bpda=True, eot=eot)
    for epoch in range(ckpt.resume(schedule), epochs):
        stats = EpochStats(epoch, epochs)
        for idx in batches(len(x), batch_size, job.generator):
            xb, yb = augment(x[idx], job.generator), y[idx]
            scale = min(1.0, (schedule.t + 1) / (warmup_epochs * n_batches)) if warmup_epochs else 1.0
            model.eval()
            xa = pgd_last_iterate(view, evaluate, xb, yb, ThreatModel("linf", eps * scale), steps, step_size,
                                  job.generator)
            model.train()
            logits = defense(xa)
            loss = F.cross_entropy(logits, yb)
            schedule.step(loss)
            stats.add(loss, logits, yb)
        ckpt.end_epoch(schedule, epoch, stats if log else None)
    return ckpt.finish(model)
