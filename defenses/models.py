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
