"""A network with a computable ℓ2 Lipschitz bound, and Lipschitz-margin training.

:class:`LipschitzCNN` is conv → ReLU → pool → conv → ReLU → pool → dense → ReLU → dense
where every linear operator is spectrally normalized *as an operator*: during training
each layer divides its weight by a power-iteration estimate of the spectral norm of
the map it actually applies (for a convolution, the zero-padded convolution on the
real input size, iterated with ``conv2d`` and ``conv_transpose2d``; Miyato et al. 2018
normalize the reshaped kernel instead, which does not bound the operator). ReLU is
1-Lipschitz and the pooling is 2 × average pooling over disjoint 2×2 windows, whose
ℓ2 operator norm is exactly 1 (each output is (a+b+c+d)/2 = ⟨(a,b,c,d), ½·1⟩).

:meth:`LipschitzCNN.lipschitz_bound` returns a *guaranteed* upper bound L on the ℓ2
Lipschitz constant of the logits (not a power-iteration estimate, which approaches the
norm from below): the product of per-layer bounds,

* dense layer: its exact largest singular value (float64 SVD);
* convolution (stride 1, zero padding p = (k−1)/2, input n×n): zero-embedding the input
  into an N×N canvas with N = n + k − 1, applying the *circular* convolution there and
  cropping is exactly the zero-padded convolution (no wrap-around reaches the crop), and
  embedding and cropping have norm ≤ 1. The circular convolution's singular values are
  those of the C_out × C_in matrices of the kernel's 2-D DFT at the N² frequencies
  (Sedghi, Gupta & Long 2019, Theorem 6), so their largest one bounds the layer.

Each factor is multiplied by ``1 + 1e-6`` against floating-point rounding.

The certificate (Tsuzuku, Sato & Sugiyama 2018): a margin z_y − max_{j≠y} z_j > √2·L·ε
guarantees the prediction in the ℓ2 ball of radius ε, because each logit difference
is √2·L-Lipschitz. Training (:func:`lipschitz_margin`) adds √2·L·ε_train to every
non-true logit before the cross-entropy (their Eq. 6), pushing margins past that level.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Multiplier on each per-layer bound against floating-point rounding.
SAFETY = 1.0 + 1e-6


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


class _Normalized(nn.Module):
    """Shared machinery: a weight divided by a running power-iteration norm estimate."""

    def _setup(self, input_shape: tuple[int, ...]) -> None:
        self.register_buffer("u", _normalize(torch.randn(1, *input_shape)))
        self.register_buffer("sigma", torch.ones(()))

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def op_t(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def power_iteration(self, iters: int) -> torch.Tensor:
        """Run ``iters`` steps of power iteration on AᵀA (raw weight); update ``u``.

        Returns:
            ‖A u‖ for the final unit vector u: a lower estimate of ‖A‖₂.
        """
        with torch.no_grad():
            u = self.u
            for _ in range(iters):
                u = _normalize(self.op_t(self.op(u, self.weight), self.weight))
            self.u.copy_(u)
            return self.op(u, self.weight).norm()

    def effective_weight(self) -> torch.Tensor:
        """W / σ: in training σ is re-estimated (one power step, differentiable in W)."""
        if self.training:
            self.power_iteration(1)
            sigma = self.op(self.u, self.weight).norm()
            self.sigma.copy_(sigma.detach())
            return self.weight / sigma
        return self.weight / self.sigma


class NormalizedConv2d(_Normalized):
    """Stride-1 'same' convolution divided by its operator norm on ``image_size``² inputs.

    Args:
        in_channels, out_channels: channels.
        kernel_size: odd kernel side.
        image_size: input height = width.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, image_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.padding = kernel_size // 2
        self.image_size = image_size
        self._setup((in_channels, image_size, image_size))

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, padding=self.padding)

    def op_t(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(y, weight, padding=self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding)

    def norm_bound(self) -> float:
        """Guaranteed bound on the operator norm of W/σ (DFT bound, module docstring)."""
        k = self.weight.shape[-1]
        side = self.image_size + k - 1
        w = (self.weight.detach() / self.sigma).double().cpu()
        spectrum = torch.fft.fft2(w, s=(side, side))  # (Co, Ci, N, N)
        mats = spectrum.permute(2, 3, 0, 1)
        return float(torch.linalg.matrix_norm(mats, ord=2).max()) * SAFETY


class NormalizedLinear(_Normalized):
    """Dense layer divided by its spectral norm.

    Args:
        in_features, out_features: sizes.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        layer = nn.Linear(in_features, out_features)
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = nn.Parameter(layer.bias.detach().clone())
        self._setup((in_features,))

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight)

    def op_t(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(y, weight.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def norm_bound(self) -> float:
        """Exact largest singular value of W/σ (float64), times the safety factor."""
        w = (self.weight.detach() / self.sigma).double().cpu()
        return float(torch.linalg.matrix_norm(w, ord=2)) * SAFETY


class SumPool2(nn.Module):
    """2 × average pooling over disjoint 2×2 windows: ℓ2 operator norm exactly 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * F.avg_pool2d(x, 2)


class LipschitzCNN(nn.Module):
    """A SmallCNN-sized network with a guaranteed ℓ2 Lipschitz bound on its logits.

    Args:
        in_channels: input channels.
        num_classes: logits.
        width: channels of the first conv (the second has twice as many).
        image_size: input side (divisible by 4).
        hidden: hidden dense units.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16,
                 image_size: int = 28, hidden: int = 128) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        side = image_size // 4
        self.layers = nn.Sequential(
            NormalizedConv2d(in_channels, width, 5, image_size), nn.ReLU(), SumPool2(),
            NormalizedConv2d(width, 2 * width, 5, image_size // 2), nn.ReLU(), SumPool2(),
            nn.Flatten(), NormalizedLinear(2 * width * side * side, hidden), nn.ReLU(),
            NormalizedLinear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def normalized_layers(self) -> list[_Normalized]:
        """The spectrally normalized layers, in order."""
        return [m for m in self.layers if isinstance(m, _Normalized)]

    def lipschitz_bound(self) -> float:
        """Guaranteed upper bound L on the ℓ2 Lipschitz constant of the logits."""
        return math.prod(layer.norm_bound() for layer in self.normalized_layers())

    def calibrate(self, iters: int = 200) -> None:
        """Set every layer's σ to a converged power-iteration estimate of its raw operator norm.

        Training leaves σ one optimizer step stale; this makes each normalized layer's norm
        ≈ 1 again. Validity never depends on it: :meth:`lipschitz_bound` bounds W/σ for
        whatever σ is stored.
        """
        for layer in self.normalized_layers():
            layer.sigma.copy_(layer.power_iteration(iters))

    def lipschitz_power_estimate(self, iters: int = 100) -> float:
        """Product of per-layer power-iteration estimates of the normalized operators.

        A diagnostic: each factor approaches its layer's norm from below, so this is at
        most :meth:`lipschitz_bound` up to rounding. Leaves the stored vectors updated.
        """
        out = 1.0
        for layer in self.normalized_layers():
            out *= float(layer.power_iteration(iters) / layer.sigma)
        return out


def margin_certificate(logits: torch.Tensor, lipschitz: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and certified ℓ2 radius margin / (√2·L) (Tsuzuku et al. 2018, Prop. 1).

    Returns:
        (prediction (N,), radius (N,) ≥ 0).
    """
    top2 = logits.topk(2, dim=1)
    margin = top2.values[:, 0] - top2.values[:, 1]
    return top2.indices[:, 0], margin / (math.sqrt(2.0) * lipschitz)


def lipschitz_margin(job, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
                     eps: float = 0.3, temperature: float = 10.0) -> nn.Module:
    """Lipschitz-margin training (Tsuzuku, Sato & Sugiyama 2018, Eq. 6).

    Loss: cross-entropy of ``temperature · (z + √2·L·ε·(1 − onehot(y)))``, with L the
    model's guaranteed bound (recomputed each epoch, held fixed within it).

    Args:
        epochs: passes over the training split.
        lr: Adam learning rate.
        batch_size: examples per step.
        eps: ℓ2 radius (raw) whose margin training asks for.
        temperature: logit scale inside the cross-entropy (logits of a 1-Lipschitz net
            are small; without it the loss saturates slowly).
    """
    from gauntlet.defenses.recipes import batches

    model, defense = job.model, job.defense
    x, y = job.x_train.to(job.device), job.y_train.to(job.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        lip = model.lipschitz_bound() if hasattr(model, "lipschitz_bound") else 1.0
        for idx in batches(len(x), batch_size, job.generator):
            xb, yb = x[idx], y[idx]
            z = defense(xb)
            push = math.sqrt(2.0) * lip * eps * (1.0 - F.one_hot(yb, z.shape[1]).to(z))
            loss = F.cross_entropy(temperature * (z + push), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    if hasattr(model, "calibrate"):
        model.calibrate()
    return model
