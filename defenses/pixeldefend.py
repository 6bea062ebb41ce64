"""PixelDefend: purify the input towards a PixelCNN's high-density region (Song et al., ICLR 2018).

Song, Kim, Nowozin, Ermon & Kushman (2018), Algorithm 1: for every pixel i in raster
order, replace x_i by the most likely intensity under p_CNN(x_i | x'_<i) among those
within ε_defend of the *input* value, where x'_<i are the pixels already purified. The
classifier then sees the purified image.

Greedy decoding needs p_CNN(· | x'_<i) for 784 pixels, each depending on the previous
choices. :func:`purify` runs it exactly in far fewer network passes (a *wavefront*):
with the PixelCNN's right reach w (:attr:`gauntlet.defenses.pixelcnn.PixelCNN.right_reach`),
pixel (r, c) depends only on pixels of its row left of c and on pixels of rows above
with column ≤ c + w. So every dependency (r', c') of (r, c) has a smaller
t = c + (w + 1)·r, and all pixels with the same t can be decoded in one pass:
(W − 1) + (w + 1)(H − 1) + 1 passes. Each pass evaluates only the decoded pixels, each
from its own (V + 1)×(2H + 1) input window (:meth:`PixelCNN.window_logits`), so a pass
costs a few small convolutions over ~N·H/(w + 1) windows. :func:`purify_raster` is the
naive 784-pass version the tests compare against.

The argmax decoding is piecewise constant, so the step declares ``differentiable =
False`` with the identity as its BPDA approximation (Athalye, Carlini & Wagner 2018,
§5.4.1, broke PixelDefend with exactly that), and ``randomized = False``.

The submission is one container module (:class:`PixelDefendModel`: ``classifier`` and
``pixelcnn``), wrapped by :class:`PixelDefend`; :func:`train_pixeldefend` is its recipe.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from gauntlet.defenses.models import make_classifier
from gauntlet.defenses.pipeline import Defense, Step
from gauntlet.defenses.pixelcnn import PixelCNN
from gauntlet.defenses.recipes import batches, copy_classifier, cross_entropy_epochs

if TYPE_CHECKING:
    from gauntlet.benchmark.training import TrainingJob

#: Images purified together at most (bounds the memory of one pass).
PURIFY_CHUNK = 512


@lru_cache(maxsize=16)
def _schedule(h: int, w: int, up: int, side: int, right: int,
              device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per wavefront t: (window gather indices, padded write positions, image positions).

    Indices are into the flattened padded image of shape (h + up, w + 2·side); the window
    of pixel (r, c) is rows r..r+up, columns c..c+2·side of the padded image.
    """
    wp = w + 2 * side
    rows = torch.arange(up + 1).view(-1, 1) * wp
    offsets = (rows + torch.arange(2 * side + 1).view(1, -1)).flatten()
    out = []
    for t in range((w - 1) + (right + 1) * (h - 1) + 1):
        r = torch.arange(h)
        c = t - (right + 1) * r
        ok = (c >= 0) & (c < w)
        r, c = r[ok], c[ok]
        idx = (r * wp + c).view(-1, 1) + offsets.view(1, -1)
        out.append((idx.to(device), ((r + up) * wp + c + side).to(device), (r * w + c).to(device)))
    return out


def _choose(logits: torch.Tensor, x_orig: torch.Tensor, values: torch.Tensor, eps: float) -> torch.Tensor:
    """Most likely level within ε of each input value (Song et al. 2018, Algorithm 1).

    Args:
        logits: (..., L) logits.
        x_orig: (...) input intensities.
        values: (L,) intensities of the levels.
        eps: ε_defend.

    Returns:
        (...) chosen intensities. The level nearest to the input is always allowed, so a
        choice exists even when ε is below half a level's width.
    """
    dist = (values - x_orig.unsqueeze(-1)).abs()
    allowed = dist <= eps + 1e-6
    allowed |= dist == dist.amin(-1, keepdim=True)
    return values[logits.masked_fill(~allowed, float("-inf")).argmax(-1)]


@torch.no_grad()
def purify(model: PixelCNN, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Greedy PixelDefend purification by wavefront decoding (exact; module docstring).

    A pixel's channels are conditionally independent given the pixels before it
    (:class:`~gauntlet.defenses.pixelcnn.PixelCNN`), so each is set to its own most
    likely level in the same pass.

    Args:
        model: the PixelCNN (any device; evaluated as is, so call ``eval()`` first if it
            ever gets dropout or normalization layers).
        x: (N, C, H, W) inputs in [0, 1], C the model's ``in_channels``.
        eps: ε_defend, the largest change of a pixel.

    Returns:
        (N, C, H, W) purified images, every value a level k/(L − 1).

    Raises:
        ValueError: ``x`` is not an image batch with the model's channels, or eps is negative.
    """
    if x.dim() != 4 or x.shape[1] != model.in_channels:
        raise ValueError(f"purify expects (N, {model.in_channels}, H, W) inputs, got {tuple(x.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if len(x) > PURIFY_CHUNK:
        return torch.cat([purify(model, part, eps) for part in x.split(PURIFY_CHUNK)])
    n, ch, h, w = x.shape
    x = x.detach()
    values = model.values().to(x)
    up, side = model.up_reach, model.side_pad
    padded = model.pad(x).reshape(n, ch, -1).contiguous()
    flat_x = x.reshape(n, ch, -1)
    for idx, pos, pix in _schedule(h, w, up, side, model.right_reach, x.device):
        # (N, C, P, window) → (N·P, C, rows, cols): one window per decoded pixel
        windows = padded[:, :, idx].transpose(1, 2).reshape(-1, ch, up + 1, 2 * side + 1)
        logits = model.window_logits(windows).view(n, len(pix), ch, -1)
        padded[:, :, pos] = _choose(logits, flat_x[:, :, pix].transpose(1, 2), values, eps).transpose(1, 2)
    return padded.view(n, ch, h + up, w + 2 * side)[:, :, up:, side:side + w].contiguous()


@torch.no_grad()
def purify_raster(model: PixelCNN, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The same purification one pixel at a time, a full forward pass per pixel (H·W
    passes; the reference :func:`purify` is tested against)."""
    out = x.detach().clone()
    values = model.values().to(x)
    for r in range(x.shape[2]):
        for c in range(x.shape[3]):
            logits = model(out)[:, :, :, r, c].transpose(1, 2)  # (N, C, L)
            out[:, :, r, c] = _choose(logits, x[:, :, r, c], values, eps)
    return out


class PixelDefendPurifier(Step):
    """Algorithm 1 of Song et al. (2018) as a pipeline step.

    Args:
        pixelcnn: the density model.
        eps_defend: ε_defend, the largest change of a pixel.

    Raises:
        ValueError: negative eps_defend.
    """

    differentiable = False
    randomized = False

    def __init__(self, pixelcnn: PixelCNN, eps_defend: float) -> None:
        super().__init__()
        if eps_defend < 0:
            raise ValueError(f"eps_defend must be >= 0, got {eps_defend}")
        self.pixelcnn = pixelcnn
        self.eps_defend = float(eps_defend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Purified images (no gradient: the attacks' BPDA uses the identity)."""
        return purify(self.pixelcnn, x, self.eps_defend)


class PixelDefendModel(nn.Module):
    """The submission's one weights file: a classifier and a PixelCNN.

    ``forward`` is the undefended classifier; :class:`PixelDefend` puts the purifier in
    front of it.

    Args:
        levels: PixelCNN intensity levels.
        channels: PixelCNN hidden channels.
        first_half: h of the PixelCNN's mask-A layer.
        layers: PixelCNN mask-B layers.
        half: h of each mask-B layer.
        in_channels: image channels.
        image_size: image side.
        arch: the classifier, a name of :data:`gauntlet.defenses.models.ARCHITECTURES`.
        width: the classifier's first-layer channels.
    """

    def __init__(self, levels: int = 32, channels: int = 32, first_half: int = 3, layers: int = 3,
                 half: int = 1, in_channels: int = 1, image_size: int = 28, arch: str = "small-cnn",
                 width: int = 16) -> None:
        super().__init__()
        self.classifier = make_classifier(arch, in_channels, 10, width, image_size)
        self.pixelcnn = PixelCNN(levels, channels, first_half, layers, half, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Undefended logits."""
        return self.classifier(x)


class PixelDefend(Defense):
    """``classifier(purify(x))`` built from a :class:`PixelDefendModel`.

    Args:
        model: the container.
        steps: must be empty (the purifier is built here).
        eps_defend: ε_defend.

    Raises:
        ValueError: extra steps were given.
    """

    def __init__(self, model: PixelDefendModel, steps: Sequence[Step] = (), eps_defend: float = 0.1) -> None:
        if len(steps):
            raise ValueError("PixelDefend builds its own purifier; the manifest must not list steps")
        super().__init__(classifier=model.classifier, steps=[PixelDefendPurifier(model.pixelcnn, eps_defend)])


def train_pixeldefend(job: TrainingJob, pixelcnn_epochs: int = 6, pixelcnn_lr: float = 3e-3,
                      classifier_epochs: int = 8, lr: float = 1e-3, batch_size: int = 64,
                      purified_training: bool = True, classifier_source: str | None = None) -> nn.Module:
    """Train the PixelCNN by maximum likelihood, then the classifier with Adam (or copy a
    committed one: Song et al. purify the inputs of classifiers trained on clean images).

    Args:
        pixelcnn_epochs: passes over the training split for the PixelCNN.
        pixelcnn_lr: Adam learning rate of the PixelCNN (cosine-decayed to 0).
        classifier_epochs: passes for the classifier.
        lr: Adam learning rate of the classifier.
        batch_size: examples per step (both networks).
        purified_training: train the classifier on purified training images (the
            defense's own preprocessing) instead of clean ones.
        classifier_source: id of a submission on the same dataset whose classifier (the
            same architecture) is used as it is; the classifier arguments are then unused.

    Returns:
        The trained container, in eval mode.
    """
    model: PixelDefendModel = job.model
    x, y = job.x_train.to(job.device), job.y_train.to(job.device)
    cnn = model.pixelcnn
    opt = torch.optim.Adam(cnn.parameters(), lr=pixelcnn_lr)
    total = pixelcnn_epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, total) / total)))
    cnn.train()
    for _ in range(pixelcnn_epochs):
        for idx in batches(len(x), batch_size, job.generator):
            loss = cnn.nll(x[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    cnn.eval()
    clf = model.classifier
    if classifier_source is not None:
        copy_classifier(job, classifier_source, clf)
    else:
        inputs = job.defense.preprocess(x) if purified_training else x
        opt = torch.optim.Adam(clf.parameters(), lr=lr)
        cross_entropy_epochs(opt, clf, clf, inputs, y, classifier_epochs, batch_size, job.generator)
    model.eval()
    return model
