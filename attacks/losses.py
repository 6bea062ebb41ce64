"""Attack losses on logits, rejection-aware.

A defense that may reject an input returns one extra, last logit for "reject". An
adversarial input that is rejected is a failed attack (README, scoring rules), so the
attacker must beat the true class *and* the reject class. :func:`fold_reject` merges the
two into one "protected" logit, ``logsumexp(z_y, z_reject)``, so every loss below —
cross-entropy, margin, DLR — pushes mass away from both at once. For a defense that
does not reject, it returns the logits unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fold_reject(logits: torch.Tensor, y: torch.Tensor, rejects: bool) -> torch.Tensor:
    """Logits over the real classes, with the reject logit folded into the true class."""
    if not rejects:
        return logits
    real, rej = logits[..., :-1], logits[..., -1]
    true = real.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    merged = torch.logaddexp(true, rej)
    return real.scatter(-1, y.unsqueeze(-1), merged.unsqueeze(-1))


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j per row: negative means misclassified."""
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    other = logits.scatter(-1, y.unsqueeze(-1), float("-inf")).amax(-1)
    return true - other


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy (to be maximized by the attacker)."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, Eq. 6), to be maximized:

    DLR = −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12), π sorting z decreasingly.
    Shift- and scale-invariant in the logits, so it resists logit rescaling masks.
    Needs at least three classes.
    """
    srt = logits.sort(dim=-1, descending=True).values
    return -margin(logits, y) / (srt[..., 0] - srt[..., 2] + 1e-12)


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020, Eq. 7), to be maximized:

    −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12), π sorting z decreasingly and t the
    target class of the row (the reference's ``dlr_loss_targeted``). Like DLR it is shift-
    and scale-invariant; the denominator is positive unless z_π1 = z_π3 = z_π4. Needs at
    least four classes.
    """
    srt = logits.sort(dim=-1, descending=True).values
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    tgt = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return -(true - tgt) / (srt[..., 0] - 0.5 * (srt[..., 2] + srt[..., 3]) + 1e-12)


LOSSES = {"ce": cross_entropy, "dlr": dlr, "margin": lambda z, y: -margin(z, y)}
#: Losses that take a per-row target class as a third argument (kept apart from
#: :data:`LOSSES`, whose losses every attack may call as ``loss(logits, y)``).
TARGETED_LOSSES = {"dlr-targeted": dlr_targeted}
