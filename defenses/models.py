"""Model architectures of the reference submissions."""
from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two 5×5 conv layers with max pooling and a two-layer head.

    About 6 MFLOP per MNIST forward pass: small enough to train and attack on two CPU
    cores in minutes, large enough to reach ~98–99% clean MNIST accuracy.

    Args:
        in_channels: input channels (1 for MNIST, 3 for CIFAR-10; more for encodings
            such as thermometer codes).
        num_classes: logits produced.
        width: channels of the first conv layer (the second has twice as many).
        image_size: input height = width.
        hidden: units of the hidden dense layer.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16,
                 image_size: int = 28, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LinearClassifier(nn.Module):
    """Logits = W·flatten(x) + b: the model whose minimal perturbations are closed-form."""

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """The residual network of Page's DAWNBench CIFAR-10 entry ("ResNet-9"), narrowed.

    Stem conv; conv + pool + residual block; conv + pool; conv + pool + residual block;
    global max pool; linear head scaled by 1/8. With ``width=16`` (channels 16-32-64-128)
    a 32×32 forward pass is about 48 MFLOP and the weights are ~1.2 MB: a CIFAR-10 model
    that trains in tens of minutes on two CPU cores (the original has width 64).

    Args:
        in_channels: input channels (3 for CIFAR-10; more for encodings such as
            thermometer codes).
        num_classes: logits produced.
        width: channels of the stem (the later stages have 2×, 4× and 8× as many).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w),
            _conv_bn(w, 2 * w, pool=True), _Residual(2 * w),
            _conv_bn(2 * w, 4 * w, pool=True),
            _conv_bn(4 * w, 8 * w, pool=True), _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(8 * w, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * 0.125


#: Classifiers a container (LID's detector, PixelDefend's model) can hold, by name:
#: (in_channels, classes, width, image side) → model.
ARCHITECTURES = {
    "small-cnn": lambda c, n, w, side: SmallCNN(in_channels=c, num_classes=n, width=w, image_size=side),
    "resnet9": lambda c, n, w, side: ResNet9(in_channels=c, num_classes=n, width=w),
}


def make_classifier(arch: str, in_channels: int, num_classes: int, width: int, image_size: int) -> nn.Module:
    """One of :data:`ARCHITECTURES`.

    Raises:
        ValueError: unknown ``arch``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    return ARCHITECTURES[arch](in_channels, num_classes, width, image_size)
