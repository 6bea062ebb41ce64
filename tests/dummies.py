"""Small defenses the attack tests share: a non-differentiable identity and a detector."""
from __future__ import annotations

import torch
from torch import nn

from defenses.pipeline import Step


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
