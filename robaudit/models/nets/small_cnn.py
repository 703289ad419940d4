"""``small-cnn``: a 2-conv + 2-fc MNIST-style CNN.

Used for the MNIST experiments of Yu et al., "Interpreting Adversarial Robustness: A View from
Decision Surface in Input Space" (2018, arXiv:1810.00144). The layout and default sizes
(conv5x5-32, pool, conv5x5-64, pool, fc-1024, fc-K) are those of the MNIST model of Madry et al.,
"Towards Deep Learning Models Resistant to Adversarial Attacks" (ICLR 2018,
github.com/MadryLab/mnist_challenge).
"""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import ARCHITECTURES

__all__ = ["SmallCNN", "small_cnn"]


class SmallCNN(nn.Module):
    """conv(5x5, width) → ReLU → pool2 → conv(5x5, 2·width) → ReLU → pool2 → fc(hidden) → ReLU → fc(K)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, hidden: int = 1024, input_size: int = 28):
        super().__init__()
        if input_size % 4:
            raise ValueError(f"input_size must be a multiple of 4, got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(2 * width * (input_size // 4) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@ARCHITECTURES.register("small-cnn")
def small_cnn(
    num_classes: int = 10, in_channels: int = 1, width: int = 32, hidden: int = 1024, input_size: int = 28
) -> SmallCNN:
    """MNIST-style CNN (Madry et al. 2018 layout); ``width`` = first conv channels, ``hidden`` = fc size."""
    return SmallCNN(num_classes, in_channels, width=width, hidden=hidden, input_size=input_size)
