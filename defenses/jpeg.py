"""JPEG compression as an input transformation (Dziugaite et al. 2016; Guo et al. 2018).

A real JPEG codec (libjpeg through Pillow; torchvision 0.29 deprecates its own image
codecs) on 8-bit images: values are rounded to uint8, each image is encoded at
``quality`` in memory, decoded and scaled back to [0, 1]. The codec runs outside
autograd on the CPU (its true gradient does not exist), so BPDA uses the identity
(Athalye et al. 2018, §4.1.1).
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from gauntlet.defenses.pipeline import Step


class JPEG(Step):
    """JPEG encode/decode round trip at a fixed quality.

    Args:
        quality: libjpeg quality factor in 1..100 (Guo et al. 2018 use 75).

    Raises:
        ValueError: quality out of range.
    """

    differentiable = False

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {quality}")
        self.quality = quality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compress and decompress each image of a (N, C, H, W) batch (C = 1 or 3).

        Raises:
            ValueError: a channel count JPEG cannot hold.
        """
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"JPEG needs (N, 1 or 3, H, W) inputs, got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return x.detach().clone()
        with torch.no_grad():
            u8 = (x.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu()
            arrays = u8.permute(0, 2, 3, 1).numpy()
            decoded = np.stack([_round_trip(a, self.quality) for a in arrays])
        out = torch.from_numpy(decoded).permute(0, 3, 1, 2)
        return out.to(device=x.device, dtype=x.dtype) / 255.0


def _round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode one (H, W, C) uint8 image as JPEG in memory and decode it."""
    gray = image.shape[2] == 1
    pil = Image.fromarray(image[:, :, 0] if gray else image, mode="L" if gray else "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        arr = np.asarray(decoded.convert("L" if gray else "RGB"))
    return arr[:, :, None] if gray else arr
