"""The harness's own scoring pass: final points on the true defense, no gradients.

Scoring rules (README, "Scoring"):

* An example is clean-correct when the defense predicts its label. A rejected clean
  input is an error.
* It survives an attack when it is clean-correct and the defense's prediction on the
  attack's final point is the label *or* "reject" (a rejected adversarial input means
  the attack failed).
* A randomized defense is scored with R independent draws per point: the headline is
  the mean over draws (expected accuracy); worst-of-R (survived every draw) is recorded
  beside it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Scores:
    """Per-example scores over R draws (float tensors in [0, 1] unless said)."""

    #: Mean over draws of (prediction == label).
    correct: torch.Tensor
    #: 1.0 where every draw predicted the label.
    correct_all: torch.Tensor
    #: Mean over draws of (prediction == label or reject).
    survives: torch.Tensor
    #: 1.0 where every draw predicted the label or reject.
    survives_all: torch.Tensor
    #: Mean over draws of (prediction == reject).
    rejected: torch.Tensor


@torch.no_grad()
def predict(defense: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels in batches (one draw); ``C`` (the last index) means reject."""
    return _predict(defense, x, batch_size)[0]


def _predict(defense: nn.Module, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """Predicted labels and the number of outputs (the reject index + 1 of a detector)."""
    out, width = [], 0
    for i in range(0, len(x), batch_size):
        logits = defense(x[i:i + batch_size])
        width = int(logits.shape[1])
        out.append(logits.argmax(1))
    return (torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)), width


@torch.no_grad()
def score(defense: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int,
          batch_size: int = 500) -> Scores:
    """Score ``x`` on the true defense with ``draws`` draws (1 when deterministic)."""
    rejects = bool(getattr(defense, "rejects", False))
    r = draws if getattr(defense, "randomized", False) else 1
    correct = torch.zeros(len(x), device=x.device)
    survives = torch.zeros_like(correct)
    rejected = torch.zeros_like(correct)
    correct_all = torch.ones_like(correct)
    survives_all = torch.ones_like(correct)
    for _ in range(r):
        pred, width = _predict(defense, x, batch_size)
        reject_index = width - 1 if rejects else -1
        ok = (pred == y).float()
        rej = (pred == reject_index).float() if rejects else torch.zeros_like(ok)
        correct += ok
        rejected += rej
        survives += torch.maximum(ok, rej)
        correct_all *= ok
        survives_all *= torch.maximum(ok, rej)
    return Scores(correct / r, correct_all, survives / r, survives_all, rejected / r)


def declared_randomness_check(defense: nn.Module, x: torch.Tensor, declared: bool) -> dict:
    """Call the defense twice on the same inputs and report whether outputs differ."""
    with torch.no_grad():
        a, b = defense(x), defense(x)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return {"declared": bool(declared), "varied": diff > 0.0, "max_abs_diff": diff}
