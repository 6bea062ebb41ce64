"""Randomized input transformations: each call draws fresh randomness for every row.

* :class:`RandomCropRescale` (Guo, Rana, Cissé & van der Maaten, ICLR 2018, §3
  "image cropping-rescaling"): crop a random ``crop``×``crop`` window and rescale it
  (bilinear) to the full size.
* :class:`RandomResizePad` (Xie, Wang, Zhang, Ren & Yuille, ICLR 2018, §3): resize the
  image to a random side r ∈ [size, out_size) and zero-pad it at a random offset to
  ``out_size``×``out_size`` (their ImageNet setting: 299 → r ∈ [299, 331) → 331).

Both are differentiable (the gradient of one draw exists); they defeat attacks that
ignore the randomness, which Expectation over Transformation averages away (Athalye,
Carlini & Wagner 2018, §4.2). Each row of a batch gets its own independent draw, so an
EOT view that repeats N examples k times in one call sees k independent draws.

Both are one batched ``grid_sample`` call with a per-row affine grid. Random draws use
the global torch generator (seeded by the caller), on the CPU, then move to ``x``'s device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gauntlet.defenses.pipeline import Step


def _resample(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out_size: int,
              mode: str) -> torch.Tensor:
    """Sample ``x`` on a per-row axis-aligned grid: output pixel j (center j + ½) reads
    input coordinate (j + ½)·scale + shift (pixel units, centers at i + ½), zeros outside.

    Args:
        x: (N, C, H, W) with H = W.
        scale: (N,) input pixels per output pixel.
        shift: (N, 2) input offsets (x, y) in pixels.
        out_size: output side.
        mode: ``"bilinear"`` or ``"nearest"``.
    """
    n, _, h, w = x.shape
    scale = scale.to(x)
    shift = shift.to(x)
    # grid_sample's normalized coordinate u ∈ [-1, 1] maps to pixel (u + 1)·W/2 (align_corners=False).
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = scale * out_size / w
    theta[:, 1, 1] = scale * out_size / h
    theta[:, 0, 2] = (scale * out_size + 2 * shift[:, 0]) / w - 1
    theta[:, 1, 2] = (scale * out_size + 2 * shift[:, 1]) / h - 1
    grid = F.affine_grid(theta, [n, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


class RandomCropRescale(Step):
    """Crop a random ``crop``×``crop`` window (integer offset) and rescale it to the input side.

    Args:
        crop: side of the cropped window in pixels (Guo et al. crop 90% of the side on
            ImageNet; 24 of 28 on MNIST).

    Raises:
        ValueError: ``crop`` < 1.
    """

    randomized = True

    def __init__(self, crop: int = 24) -> None:
        super().__init__()
        if crop < 1:
            raise ValueError(f"crop must be >= 1, got {crop}")
        self.crop = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One independent random crop-rescale per row of (N, C, S, S).

        Raises:
            ValueError: non-square input or a crop larger than it.
        """
        n, _, h, w = x.shape
        if h != w or self.crop > h:
            raise ValueError(f"need square inputs of side >= crop={self.crop}, got {h}x{w}")
        offsets = torch.randint(0, h - self.crop + 1, (n, 2)).to(x)
        scale = torch.full((n,), self.crop / h)
        return _resample(x, scale, offsets, h, "bilinear")


class RandomResizePad(Step):
    """Resize to a random side r ∈ [size, out_size), zero-pad at a random offset to ``out_size``.

    Args:
        out_size: output side (Xie et al.: 331 for 299-pixel inputs; 32 for MNIST's 28).
        min_size: smallest resized side; default: the input side.
        mode: interpolation of the resize (``"nearest"`` or ``"bilinear"``).

    Raises:
        ValueError: sizes or mode out of range.
    """

    randomized = True

    def __init__(self, out_size: int = 32, min_size: int | None = None, mode: str = "nearest") -> None:
        super().__init__()
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
        if min_size is not None and not 1 <= min_size < out_size:
            raise ValueError(f"min_size must be in 1..out_size-1, got {min_size}")
        self.out_size = out_size
        self.min_size = min_size
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) → (N, C, out_size, out_size), one independent draw per row.

        Raises:
            ValueError: non-square input or an input not smaller than ``out_size``.
        """
        n, _, h, w = x.shape
        low = self.min_size if self.min_size is not None else h
        if h != w or low >= self.out_size:
            raise ValueError(f"need square inputs with min_size {low} < out_size {self.out_size}, got {h}x{w}")
        side = torch.randint(low, self.out_size, (n,))
        # offset uniform over the (out_size − r + 1)² placements of the resized image
        u = torch.rand(n, 2)
        offset = torch.floor(u * (self.out_size - side + 1).unsqueeze(1).float())
        scale = h / side.float()
        return _resample(x, scale, -offset * scale.unsqueeze(1), self.out_size, self.mode)
