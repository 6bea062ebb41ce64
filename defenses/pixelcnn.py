"""A small PixelCNN over discretized images (van den Oord et al. 2016).

The model factorizes p(x) = Π_i p(x_i | x_<i) in raster order of pixels, each factor a
softmax over ``levels`` intensities k/(levels − 1) per colour channel. The channels of one
pixel are conditionally independent given the pixels before it,
p(x_i | x_<i) = Π_c p(x_i^c | x_<i) (van den Oord et al. chain R → G → B inside a
pixel; this weaker factorization is still a normalized autoregressive density, and it
lets greedy decoding choose a pixel's channels together, exactly). Causality comes from masked convolutions
(van den Oord et al. 2016, "Pixel Recurrent Neural Networks", §3.4): the first layer
(mask *A*) sees the rows above and the pixels strictly left of the centre, every later
layer (mask *B*) also sees the centre. A masked k×k kernel has zero weight on every
row below the centre, so each layer is stored as its non-zero part, a (h+1)×(2h+1)
kernel (h = k//2) over rows r−h..r and columns c−h..c+h.

Padding is applied once, to the input (V zero rows on top, H zero columns on each
side, V = H = Σ h over the layers), and every layer is a *valid* convolution. So the
logits at pixel (r, c) are exactly the network applied to the (V+1)×(2H+1) input
window whose bottom-centre is (r, c): :meth:`PixelCNN.window_logits` evaluates any set
of pixels from their windows alone, which is what makes greedy decoding
(:func:`gauntlet.defenses.pixeldefend.purify`) cheap and exact.

Receptive field: pixel (r, c) depends on pixels (r', c') with r' = r, c − H ≤ c' < c,
or r − V ≤ r' < r, |c' − c| ≤ H (each layer adds at most h in each direction, and only
rows above may be to the right). :attr:`PixelCNN.right_reach` is that H, computed from
the masks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MaskedConv(nn.Module):
    """The non-zero part of a masked (2h+1)×(2h+1) convolution, applied without padding.

    Args:
        cin: input channels.
        cout: output channels.
        half: h; the kernel spans rows r−h..r and columns c−h..c+h.
        kind: ``"A"`` (current row strictly left of the centre) or ``"B"`` (centre too).

    Raises:
        ValueError: unknown kind or negative half.
    """

    def __init__(self, cin: int, cout: int, half: int, kind: str) -> None:
        super().__init__()
        if kind not in ("A", "B") or half < 0 or (kind == "A" and half < 1):
            raise ValueError(f"need kind 'A' (half >= 1) or 'B' (half >= 0); got {kind!r}, half={half}")
        self.half, self.kind = half, kind
        self.conv = nn.Conv2d(cin, cout, (half + 1, 2 * half + 1))
        mask = torch.ones(1, 1, half + 1, 2 * half + 1)
        mask[..., half, half + (1 if kind == "B" else 0):] = 0.0  # current row: right of the centre
        self.register_buffer("mask", mask)

    @property
    def right_reach(self) -> int:
        """Largest column offset to the right of the centre with a non-zero mask entry."""
        cols = self.mask[0, 0].nonzero()[:, 1] - self.half
        return int(cols.max())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Valid convolution: (N, C, h_in, w_in) → (N, C', h_in − h, w_in − 2h)."""
        return F.conv2d(x, self.conv.weight * self.mask, self.conv.bias)


class PixelCNN(nn.Module):
    """Mask-A layer, residual mask-B layers, then two 1×1 layers to per-pixel logits.

    Args:
        levels: intensity levels L; inputs are read as k/(L − 1).
        channels: hidden channels.
        in_channels: colour channels C of the images (C·L logits per pixel).
        first_half: h of the mask-A layer (3: a 7×7 kernel, as van den Oord et al.).
        layers: mask-B layers.
        half: h of each mask-B layer (1: 3×3 kernels).

    Raises:
        ValueError: sizes out of range.
    """

    def __init__(self, levels: int = 32, channels: int = 32, first_half: int = 3, layers: int = 3,
                 half: int = 1, in_channels: int = 1) -> None:
        super().__init__()
        if levels < 2 or channels < 1 or layers < 0 or half < 0 or first_half < 1 or in_channels < 1:
            raise ValueError(f"need levels >= 2, channels >= 1, layers >= 0, half >= 0, first_half >= 1, "
                             f"in_channels >= 1; got {levels}, {channels}, {layers}, {half}, {first_half}, "
                             f"{in_channels}")
        self.levels, self.in_channels = levels, in_channels
        self.first = MaskedConv(in_channels, channels, first_half, "A")
        self.blocks = nn.ModuleList(MaskedConv(channels, channels, half, "B") for _ in range(layers))
        self.hidden = nn.Conv2d(channels, channels, 1)
        self.out = nn.Conv2d(channels, in_channels * levels, 1)

    @property
    def masked(self) -> list[MaskedConv]:
        """The masked layers in order."""
        return [self.first, *self.blocks]

    @property
    def up_reach(self) -> int:
        """V: rows above a pixel that its logits can depend on."""
        return sum(m.half for m in self.masked)

    @property
    def left_reach(self) -> int:
        """Columns to the left a pixel's logits can depend on."""
        return sum(m.half for m in self.masked)

    @property
    def right_reach(self) -> int:
        """w: columns to the right (in rows above) a pixel's logits can depend on."""
        return sum(m.right_reach for m in self.masked)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Level indices k = round(x·(L − 1)) of inputs in [0, 1] (int64)."""
        return (x.clamp(0.0, 1.0) * (self.levels - 1)).round().long()

    def values(self) -> torch.Tensor:
        """The L intensities k/(L − 1), float32 on the model's device."""
        return torch.linspace(0.0, 1.0, self.levels, device=self.out.weight.device)

    def window_logits(self, windows: torch.Tensor) -> torch.Tensor:
        """Logits of the bottom-centre pixel of each input window.

        Args:
            windows: (M, C, V + 1 + extra_rows, left + right + 1 + extra_cols) intensities,
                zero outside the image; in general any input already padded as
                :meth:`forward` pads it.

        Returns:
            (M, C·L, rows, cols) logits (channel-major: channel c's levels are
            ``[c·L, (c + 1)·L)``), one per position whose full window is inside.
        """
        h = F.relu(self.first(windows))
        for block in self.blocks:
            d = block.half
            # residual: the block's output at (r, c) lines up with its input at (r, c)
            h = h[:, :, d:, d:h.shape[-1] - d] + F.relu(block(h))
        return self.out(F.relu(self.hidden(h)))

    @property
    def side_pad(self) -> int:
        """Zero columns padded on each side: every valid layer shrinks the width by 2h."""
        return sum(m.half for m in self.masked)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad (N, C, H, W) intensities: V rows on top, :attr:`side_pad` columns each side."""
        return F.pad(x, (self.side_pad, self.side_pad, self.up_reach, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits (N, L, C, H, W) of p(x_i^c | x_<i) for (N, C, H, W) inputs in [0, 1]."""
        logits = self.window_logits(self.pad(x))
        n, _, h, w = logits.shape
        return logits.view(n, self.in_channels, self.levels, h, w).transpose(1, 2)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image negative log-likelihood in bits per dimension of the quantized ``x``."""
        logits = self(self.values()[self.quantize(x)])
        nats = F.cross_entropy(logits, self.quantize(x), reduction="none")
        return nats.flatten(1).mean(1) / math.log(2.0)
