"""Deterministic, non-differentiable input transformations (Guo et al. 2018 and kin)."""
from __future__ import annotations

import torch

from gauntlet.defenses.pipeline import Step


class BitDepth(Step):
    """Bit-depth reduction: round each value to one of 2**bits levels (Xu et al. 2018;
    Guo et al. 2018). Its true gradient is zero almost everywhere, so BPDA uses the
    identity (Athalye et al. 2018, §4.1.1).

    Args:
        bits: bits kept per value.
    """

    differentiable = False

    def __init__(self, bits: int = 3) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x * levels) / levels


class Quantize(Step):
    """Round each value to ``levels`` evenly spaced levels in [0, 1].

    Args:
        levels: number of output levels (≥ 2).
    """

    differentiable = False

    def __init__(self, levels: int = 8) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)
