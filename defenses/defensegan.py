"""Defense-GAN: project the input onto a generator's range (Samangouei et al., ICLR 2018).

Samangouei, Kabkab & Chellappa classify G(z*) instead of x, where (their §3.2)

    z* = argmin_z ‖G(z) − x‖²₂,

found by L steps of gradient descent from each of R random starts z₀ ~ N(0, I), keeping
the start whose final reconstruction error is smallest (their Algorithm 1; L = 200,
R = 10 in their experiments). Here:

* G is the decoder of a small MLP variational autoencoder (Kingma & Welling 2014)
  trained on the training split, not a WGAN: a VAE trains in well under a minute on two
  CPU cores, a GAN does not train reliably in that budget. The projection treats the
  decoder exactly as Defense-GAN treats its generator; the encoder is kept in the
  container only because it is needed to train the decoder and is never used at
  inference.
* The descent is gradient descent with momentum on the per-example squared error, its
  step size decaying exponentially; all R starts of all N examples run as one batch of
  N·R rows.

The projection is an argmin computed outside the attacker's autograd graph, with fresh
random starts on every call: the step declares ``differentiable = False`` (a naive
attack sees zero gradients), ``randomized = True`` (EOT) and the identity as its BPDA
approximation (Athalye, Carlini & Wagner 2018, §4.1). The
defense also exposes the reparameterization x = G(z) (§4.3) for the ``reparam``
attack: ``generate(z) = G(z)``, ``encode(x) = z*`` (the defense's own projection).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gauntlet.defenses.models import SmallCNN
from gauntlet.defenses.pipeline import Defense, Step
from gauntlet.defenses.recipes import batches, cross_entropy_epochs


class Decoder(nn.Module):
    """G: z ∈ R^d → image in [0, 1] (MLP, sigmoid output).

    Args:
        latent_dim: d.
        hidden: hidden units.
        shape: output shape (C, H, W).
    """

    def __init__(self, latent_dim: int = 20, hidden: int = 128, shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.shape = tuple(shape)
        out = 1
        for s in self.shape:
            out *= s
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid outputs, flat (N, C·H·W)."""
        return self.net(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.net(z)).view(len(z), *self.shape)


class Encoder(nn.Module):
    """q(z | x) = N(μ(x), diag σ²(x)) of the VAE (used only for training the decoder).

    Args:
        latent_dim: d.
        hidden: hidden units.
        in_features: C·H·W.
    """

    def __init__(self, latent_dim: int = 20, hidden: int = 128, in_features: int = 784) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 * latent_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²), each (N, d)."""
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar


class DefenseGANModel(nn.Module):
    """The container the manifest's ``model`` names: every network of the defense.

    Args:
        latent_dim: d of the generator's latent space.
        hidden: hidden units of the encoder and the decoder.
        shape: image shape (C, H, W).
        num_classes: classifier outputs.
        width: SmallCNN's first conv width.
        classifier_hidden: SmallCNN's dense hidden units.
    """

    def __init__(self, latent_dim: int = 20, hidden: int = 128, shape: Sequence[int] = (1, 28, 28),
                 num_classes: int = 10, width: int = 8, classifier_hidden: int = 64) -> None:
        super().__init__()
        c, h, w = shape
        self.generator = Decoder(latent_dim, hidden, shape)
        self.encoder = Encoder(latent_dim, hidden, c * h * w)
        self.classifier = SmallCNN(c, num_classes, width, h, classifier_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The undefended classifier's logits."""
        return self.classifier(x)


def project(generator: Decoder, x: torch.Tensor, steps: int, restarts: int, lr: float,
            momentum: float = 0.7, decay: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """z* ≈ argmin_z ‖G(z) − x‖²₂ per example (Samangouei et al. 2018, Algorithm 1).

    Args:
        generator: G.
        x: (N, C, H, W) inputs (not differentiated).
        steps: L gradient steps per start.
        restarts: R random starts z₀ ~ N(0, I) per example.
        lr: initial step size on the per-example squared error.
        momentum: heavy-ball momentum.
        decay: the step size after L steps, as a fraction of ``lr`` (exponential decay).

    Returns:
        (z*, error): (N, d) codes of the best start and their squared errors (N,).
    """
    n, d = len(x), generator.latent_dim
    target = x.detach().reshape(n, 1, -1).expand(n, restarts, -1).reshape(n * restarts, -1)
    dtype = generator.net[0].weight.dtype
    target = target.to(dtype)
    z = torch.randn(n * restarts, d, device=x.device, dtype=dtype)
    velocity = torch.zeros_like(z)
    gamma = decay ** (1.0 / max(steps, 1))
    step = lr
    with torch.enable_grad():
        for _ in range(steps):
            z.requires_grad_(True)
            err = (torch.sigmoid(generator.logits(z)) - target).pow(2).sum()
            (g,) = torch.autograd.grad(err, z)
            with torch.no_grad():
                velocity = momentum * velocity - step * g
                z = z.detach() + velocity
            step *= gamma
    with torch.no_grad():
        err = (torch.sigmoid(generator.logits(z)) - target).pow(2).sum(1).view(n, restarts)
        best = err.argmin(1)
        rows = torch.arange(n, device=x.device) * restarts + best
        return z[rows].detach(), err[torch.arange(n, device=x.device), best]


class GeneratorProjection(Step):
    """x ↦ G(z*) with z* from :func:`project`: fresh random starts on every call.

    Args:
        generator: G.
        steps: L.
        restarts: R.
        lr: initial step size.
        momentum: heavy-ball momentum.
        decay: final step size as a fraction of ``lr``.

    Raises:
        ValueError: parameters out of range.
    """

    differentiable = False
    randomized = True

    def __init__(self, generator: Decoder, steps: int = 200, restarts: int = 10, lr: float = 0.1,
                 momentum: float = 0.7, decay: float = 0.1) -> None:
        super().__init__()
        if steps < 1 or restarts < 1 or lr <= 0 or not 0 <= momentum < 1 or not 0 < decay <= 1:
            raise ValueError(f"need steps, restarts >= 1, lr > 0, 0 <= momentum < 1, 0 < decay <= 1; got "
                             f"{steps}, {restarts}, {lr}, {momentum}, {decay}")
        self.generator = generator
        self.steps, self.restarts, self.lr = steps, restarts, lr
        self.momentum, self.decay = momentum, decay

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """G(z), differentiable in z (with :meth:`encode`, the reparameterization contract
        of :mod:`gauntlet.attacks.reparam`)."""
        return self.generator(z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z* for each row of ``x`` (no gradient)."""
        z, _ = project(self.generator, x, self.steps, self.restarts, self.lr, self.momentum, self.decay)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """G(z*), detached: the argmin carries no gradient to x."""
        with torch.no_grad():
            return self.generator(self.encode(x)).to(x.dtype)


class DefenseGAN(Defense):
    """``classifier(G(z*(x)))`` built from a :class:`DefenseGANModel` (manifest ``defense.factory``).

    Args:
        model: the container (its ``generator`` and ``classifier`` are used).
        steps: the manifest's preprocessing steps; must be empty (the projection is built here).
        iterations: L gradient steps per start.
        restarts: R random starts.
        lr: initial step size.
        momentum: heavy-ball momentum.
        decay: final step size as a fraction of ``lr``.

    Raises:
        ValueError: extra steps were given.
    """

    def __init__(self, model: DefenseGANModel, steps: Sequence[Step] = (), iterations: int = 200,
                 restarts: int = 10, lr: float = 0.1, momentum: float = 0.7, decay: float = 0.1) -> None:
        if len(steps):
            raise ValueError("DefenseGAN builds its own projection step; the manifest must list no steps")
        projection = GeneratorProjection(model.generator, iterations, restarts, lr, momentum, decay)
        super().__init__(model.classifier, [projection])

    @property
    def reparameterization(self) -> GeneratorProjection:
        """x = G(z) with the defense's projection as the encoder."""
        return self.steps[0]


def vae_loss(model: DefenseGANModel, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Negative ELBO per batch (Kingma & Welling 2014; the Gaussian KL of their Appendix B):
    Bernoulli reconstruction cross-entropy plus KL(q(z|x) ‖ N(0, I)), summed over pixels,
    averaged over examples.

    Args:
        model: the container.
        x: (N, C, H, W) images in [0, 1].
        noise: (N, d) standard normal draws for the reparameterization trick.
    """
    mu, logvar = model.encoder(x)
    z = mu + (0.5 * logvar).exp() * noise
    rec = F.binary_cross_entropy_with_logits(model.generator.logits(z), x.flatten(1), reduction="sum")
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
    return (rec + kl) / len(x)


def recipe(job, vae_epochs: int = 40, vae_lr: float = 1e-3, epochs: int = 8, lr: float = 1e-3,
           batch_size: int = 64) -> DefenseGANModel:
    """Train the VAE (encoder + decoder G), then the classifier on clean images.

    Samangouei et al. train the classifier on the original training images;
    so does this recipe.

    Args:
        vae_epochs: passes of VAE training over the training split.
        vae_lr: Adam learning rate of the VAE.
        epochs: passes of classifier training.
        lr: Adam learning rate of the classifier.
        batch_size: examples per step (both phases).

    Returns:
        The trained container, in eval mode.
    """
    model: DefenseGANModel = job.model
    x, y = job.x_train.to(job.device), job.y_train.to(job.device)
    d = model.generator.latent_dim
    vae_params = list(model.encoder.parameters()) + list(model.generator.parameters())
    opt = torch.optim.Adam(vae_params, lr=vae_lr)
    model.train()
    for _ in range(vae_epochs):
        for idx in batches(len(x), batch_size, job.generator):
            noise = torch.randn(len(idx), d, generator=job.generator).to(x)
            loss = vae_loss(model, x[idx], noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    opt = torch.optim.Adam(model.classifier.parameters(), lr=lr)
    cross_entropy_epochs(opt, model.classifier, model.classifier, x, y, epochs, batch_size, job.generator)
    model.eval()
    return model
