"""Total variation minimization with random pixel dropout (Guo et al., ICLR 2018, §3).

Guo, Rana, Cissé & van der Maaten keep each pixel with probability p (a Bernoulli mask
X, drawn afresh for every image) and reconstruct the image that stays close to x on the
kept pixels and has small total variation (their Eq. 1):

    z* = argmin_z ‖(1 − X) ⊙ (z − x)‖₂ + λ_TV · TV(z)

(the paper's mask X marks dropped pixels). We solve the squared-data-term form
½‖M ⊙ (z − x)‖² + λ·TV(z), M = kept pixels, with isotropic TV (per channel) by a fixed
number of Chambolle–Pock primal–dual iterations (Chambolle & Pock 2011, Algorithm 1),
batched over the whole tensor. On dropped pixels the data term is zero, so they are
TV-inpainted from their neighbours.

The solver runs outside autograd (as Guo et al.'s does) and each call draws fresh
masks, one per row: ``differentiable = False`` (BPDA identity, Athalye et al. 2018
§4.1) and ``randomized = True`` (EOT, §4.2).
"""
from __future__ import annotations

import torch

from gauntlet.defenses.pipeline import Step


def _grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along W and H (zero at the last column/row)."""
    gx = torch.zeros_like(z)
    gy = torch.zeros_like(z)
    gx[..., :, :-1] = z[..., :, 1:] - z[..., :, :-1]
    gy[..., :-1, :] = z[..., 1:, :] - z[..., :-1, :]
    return gx, gy


def _div(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Divergence, the negative adjoint of :func:`_grad`."""
    dx = torch.zeros_like(px)
    dy = torch.zeros_like(py)
    dx[..., :, 0] = px[..., :, 0]
    dx[..., :, 1:-1] = px[..., :, 1:-1] - px[..., :, :-2]
    dx[..., :, -1] = -px[..., :, -2]
    dy[..., 0, :] = py[..., 0, :]
    dy[..., 1:-1, :] = py[..., 1:-1, :] - py[..., :-2, :]
    dy[..., -1, :] = -py[..., -2, :]
    return dx + dy


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Isotropic total variation Σ √((∂ₓz)² + (∂ᵧz)²) of each image in a (N, C, H, W) batch."""
    gx, gy = _grad(x)
    return (gx.pow(2) + gy.pow(2)).sqrt().flatten(1).sum(1)


def tv_reconstruct(x: torch.Tensor, keep: torch.Tensor, weight: float, iterations: int) -> torch.Tensor:
    """argmin_z ½‖keep ⊙ (z − x)‖² + weight·TV(z) by Chambolle–Pock, clipped to [0, 1].

    Args:
        x: (N, C, H, W) images.
        keep: same shape, 1 where the pixel is kept, 0 where dropped.
        weight: λ_TV.
        iterations: primal–dual iterations.
    """
    tau = sigma = 0.35  # τσ‖∇‖² ≤ 1 with ‖∇‖² ≤ 8 (Chambolle & Pock 2011, Thm. 1)
    z = x.clone()
    z_bar = z.clone()
    px = torch.zeros_like(x)
    py = torch.zeros_like(x)
    for _ in range(iterations):
        gx, gy = _grad(z_bar)
        px, py = px + sigma * gx, py + sigma * gy
        # projection onto {‖p‖₂ ≤ λ} per pixel (dual of the isotropic TV)
        norm = (px.pow(2) + py.pow(2)).sqrt().div(weight).clamp_min(1.0)
        px, py = px / norm, py / norm
        # prox of the masked quadratic data term
        v = z + tau * _div(px, py)
        z_new = (v + tau * keep * x) / (1.0 + tau * keep)
        z_bar = 2.0 * z_new - z
        z = z_new
    return z.clamp(0.0, 1.0)


class TVMinimization(Step):
    """Random pixel dropout followed by TV-minimizing reconstruction (Guo et al. 2018).

    Args:
        keep_prob: probability that a pixel is kept (Guo et al.'s code drops half:
            pixel drop rate 0.5).
        weight: λ_TV of the reconstruction (Guo et al. use 0.03 on ImageNet).
        iterations: primal–dual iterations (fixed, so the cost is fixed).

    Raises:
        ValueError: parameters out of range.
    """

    differentiable = False
    randomized = True

    def __init__(self, keep_prob: float = 0.5, weight: float = 0.03, iterations: int = 40) -> None:
        super().__init__()
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
        if weight <= 0 or iterations < 1:
            raise ValueError(f"weight must be > 0 and iterations >= 1, got {weight}, {iterations}")
        self.keep_prob = keep_prob
        self.weight = weight
        self.iterations = iterations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct each row from its own fresh random mask (same mask for all channels)."""
        with torch.no_grad():
            n, _, h, w = x.shape
            keep = (torch.rand(n, 1, h, w) < self.keep_prob).to(x).expand_as(x)
            return tv_reconstruct(x.detach(), keep, self.weight, self.iterations)
