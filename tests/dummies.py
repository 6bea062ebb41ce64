"""What the attack tests share: a seeded attack call, a non-differentiable identity and a
detector."""
from __future__ import annotations

import torch
from torch import nn

from gauntlet.attacks.base import AttackContext, AttackResult
from gauntlet.attacks.registry import make_attack_unchecked
from gauntlet.defenses.pipeline import Step


def run_attack(attack_id: str, defense: nn.Module, x: torch.Tensor, y: torch.Tensor, threat, seed: int = 0,
               surrogate: nn.Module | None = None, **params) -> AttackResult:
    """Run a registered attack (``params`` override its defaults, floors not applied) with a
    seeded generator."""
    ctx = AttackContext(generator=torch.Generator().manual_seed(seed), surrogate=surrogate)
    return make_attack_unchecked(attack_id, **params).run(defense, x, y, threat, ctx)


class OpaqueIdentity(Step):
    """The identity computed outside autograd: naive gradients through it are zero."""

    differentiable = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.detach().cpu().numpy().copy()).to(x)


class RejectLowConfidence(nn.Module):
    """Linear logits plus a last reject logit that wins when the top-two gap is small."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        top2 = z.topk(2, dim=1).values
        return torch.cat([z, (3.0 - (top2[:, 0] - top2[:, 1])).unsqueeze(1)], 1)
