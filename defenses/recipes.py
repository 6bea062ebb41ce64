"""Training recipes named in manifests' ``train`` blocks.

Each recipe is ``recipe(job, **args) -> model`` (see :mod:`gauntlet.benchmark.training`), seeded
through ``job.generator`` so that the same arguments give the same weights.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

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


def _source_submission(submissions_dir: Path, source: str, dataset: str):
    """The committed submission ``source`` of ``submissions_dir``, on ``dataset``.

    Raises:
        ValueError: ``source`` is not a submission folder of ``submissions_dir`` or is on
            another dataset.
    """
    from gauntlet.benchmark.registry import MANIFEST_NAME, load_submission

    base = Path(submissions_dir).resolve()
    folder = (base / source).resolve()
    if folder.parent != base or not (folder / MANIFEST_NAME).is_file():
        raise ValueError(f"source {source!r} is not a submission folder of {base}")
    sub = load_submission(folder / MANIFEST_NAME)
    if sub.manifest.dataset != dataset:
        raise ValueError(f"source {source!r} is on {sub.manifest.dataset!r}, not {dataset!r}")
    return sub


def load_source(submissions_dir: Path, source: str, dataset: str, device: torch.device) -> nn.Module:
    """A committed submission's defense, built by the registry (sha256-checked weights):
    cascade training's network A.

    Raises:
        ValueError: as :func:`_source_submission`.
    """
    from gauntlet.benchmark.registry import build_defense

    return build_defense(_source_submission(submissions_dir, source, dataset), device)


def copy_classifier(job, source: str, into: nn.Module) -> None:
    """Load the classifier weights (sha256-checked) of the committed submission ``source``,
    on the job's dataset, into ``into`` (same architecture): the classifier a detector or a
    purifier is fitted to. Only the classifier is built, not the source's defense.

    Raises:
        ValueError: as :func:`_source_submission`; a state dict that does not fit ``into``.
    """
    from gauntlet.benchmark.registry import build_classifier

    sub = _source_submission(job.submissions_dir, source, job.submission.manifest.dataset)
    into.load_state_dict(build_classifier(sub).state_dict())


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The standard CIFAR-10 augmentation: a random crop of the reflect-padded image
    (shifts of up to ``pad`` pixels) and a horizontal flip with probability ½, drawn
    per example from ``generator``."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, out.flip(3), out)


class OneCycle:
    """SGD with Nesterov momentum whose learning rate rises linearly from 0 to ``lr`` over
    the first ``warmup`` share of the steps and falls linearly to 0 by the last (the
    triangular schedule of Page's DAWNBench entry and of Wong et al. 2020's fast AT)."""

    def __init__(self, params, lr: float, total_steps: int, warmup: float = 0.2,
                 momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        self.opt = torch.optim.SGD(params, lr=0.0, momentum=momentum, nesterov=True,
                                   weight_decay=weight_decay)
        self.peak, self.total, self.rise = lr, max(1, total_steps), max(1, int(warmup * total_steps))
        self.t = 0

    def step(self, loss: torch.Tensor) -> None:
        t = self.t
        scale = t / self.rise if t < self.rise else max(0.0, (self.total - t) / max(1, self.total - self.rise))
        for group in self.opt.param_groups:
            group["lr"] = self.peak * scale
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.t += 1


class Checkpoint:
    """Resume a long recipe after an interruption: the model, optimizer, schedule and
    generator state after each finished epoch, in ``<submission>/.checkpoint-<recipe>.pt``
    (removed when the recipe returns). A checkpoint written with other arguments is
    ignored, so a resumed run gives the weights an uninterrupted one would."""

    def __init__(self, job, name: str, args: dict, enabled: bool = True) -> None:
        self.path = job.submission.folder / f".checkpoint-{name}.pt"
        self.job, self.args, self.enabled = job, {k: repr(v) for k, v in sorted(args.items())}, enabled

    def resume(self, schedule: OneCycle) -> int:
        """Load the last finished epoch's state; the number of epochs done (0: none)."""
        if not self.enabled or not self.path.is_file():
            return 0
        state = torch.load(self.path, map_location=self.job.device, weights_only=True)
        if state.get("args") != self.args:
            return 0
        self.job.model.load_state_dict(state["model"])
        schedule.opt.load_state_dict(state["opt"])
        schedule.t = int(state["t"])
        self.job.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch"])
        return int(state["epoch"])

    def save(self, schedule: OneCycle, epoch: int) -> None:
        if not self.enabled:
            return
        tmp = self.path.with_suffix(".tmp")
        torch.save({"args": self.args, "model": self.job.model.state_dict(), "opt": schedule.opt.state_dict(),
                    "t": schedule.t, "generator": self.job.generator.get_state(),
                    "torch": torch.get_rng_state(), "epoch": epoch}, tmp)
        tmp.replace(self.path)

    def end_epoch(self, schedule: OneCycle, epoch: int, stats: EpochStats | None) -> None:
        """Checkpoint after epoch ``epoch`` (0-based) and print its line (``stats``, if given)."""
        self.save(schedule, epoch + 1)
        if stats is not None:
            stats.print()

    def finish(self, model: nn.Module) -> nn.Module:
        """Remove the checkpoint; the trained model in eval mode."""
        self.path.unlink(missing_ok=True)
        model.eval()
        return model


def sgd_augmented(job, epochs: int = 10, lr: float = 0.2, batch_size: int = 256, weight_decay: float = 5e-4,
                  noise_sigma: float = 0.0, label_smoothing: float = 0.0, log: bool = True,
                  checkpoint: bool = True) -> nn.Module:
    """Cross-entropy training for CIFAR-10-sized models: SGD with Nesterov momentum on the
    one-cycle schedule (:class:`OneCycle`), random crops and flips (:func:`augment`),
    through the defense's preprocessing; resumable per epoch (:class:`Checkpoint`).

    Args:
        epochs: passes over the training split.
        lr: peak learning rate.
        batch_size: examples per step.
        weight_decay: SGD weight decay.
        noise_sigma: Gaussian noise N(0, σ²) added after augmentation, in [0,1] space
            (Cohen et al. 2019's noise augmentation); 0 disables it.
        label_smoothing: cross-entropy label smoothing.
        log: one line per epoch on stderr (loss, training accuracy, seconds).
        checkpoint: write a checkpoint into the submission folder after each epoch.
    """
    if epochs < 1 or lr <= 0 or batch_size < 1 or noise_sigma < 0 or not 0 <= label_smoothing < 1:
        raise ValueError("sgd_augmented: need epochs >= 1, lr > 0, batch_size >= 1, noise_sigma >= 0, "
                         "0 <= label_smoothing < 1")
    model, defense = job.model, job.defense
    x, y = job.x_train.to(job.device), job.y_train.to(job.device)
    schedule = OneCycle(model.parameters(), lr, epochs * -(-len(x) // batch_size), weight_decay=weight_decay)
    ckpt = Checkpoint(job, "sgd_augmented", dict(epochs=epochs, lr=lr, batch_size=batch_size,
                                                 weight_decay=weight_decay, noise_sigma=noise_sigma,
                                                 label_smoothing=label_smoothing), checkpoint)
    for epoch in range(ckpt.resume(schedule), epochs):
        model.train()
        stats = EpochStats(epoch, epochs)
        for idx in batches(len(x), batch_size, job.generator):
            xb = augment(x[idx], job.generator)
            if noise_sigma > 0:
                xb = xb + noise_sigma * torch.randn(xb.shape, generator=job.generator).to(xb)
            logits = defense(xb)
            loss = F.cross_entropy(logits, y[idx], label_smoothing=label_smoothing)
            schedule.step(loss)
            stats.add(loss, logits, y[idx])
        ckpt.end_epoch(schedule, epoch, stats if log else None)
    return ckpt.finish(model)


class EpochStats:
    """Running loss and accuracy of one training epoch, printed as one line on stderr."""

    def __init__(self, epoch: int, epochs: int) -> None:
        self.epoch, self.epochs, self.start = epoch, epochs, time.perf_counter()
        self.loss = self.correct = self.n = 0.0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += float(loss.detach()) * len(y)
        self.correct += float((logits.argmax(1) == y).sum())
        self.n += len(y)

    def print(self) -> None:
        print(f"epoch {self.epoch + 1}/{self.epochs}: loss {self.loss / max(1, self.n):.3f}, "
              f"train accuracy {self.correct / max(1, self.n):.3f}, {time.perf_counter() - self.start:.0f} s",
              file=sys.stderr, flush=True)
