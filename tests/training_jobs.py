"""A training job on a tiny synthetic batch, for testing recipes without the dataset."""
from __future__ import annotations

from pathlib import Path

import torch

from gauntlet.benchmark.datasets import get_dataset
from gauntlet.benchmark.registry import load_submission
from gauntlet.benchmark.training import TrainingJob, make_job

SUBMISSIONS = Path(__file__).resolve().parent.parent / "submissions"


def synthetic_digits(n: int, seed: int = 0, shape: tuple[int, ...] = (1, 28, 28)) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sparse random images of ``shape`` in [0, 1] with labels 0..9 in turn."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g) * (torch.rand(n, *shape, generator=g) > 0.7)
    return x, torch.arange(n) % 10


def tiny_job(sub_id: str, n: int = 64) -> TrainingJob:
    """A fresh model of a committed submission, its defense, and ``n`` synthetic digits
    (the real submissions folder, for recipes that load another submission)."""
    sub = load_submission(SUBMISSIONS / sub_id / "manifest.yaml")
    x, y = synthetic_digits(n, shape=get_dataset(sub.manifest.dataset).shape)
    return make_job(sub, x, y, submissions_dir=SUBMISSIONS)
