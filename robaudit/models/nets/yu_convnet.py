"""``yu-convnet``: 5 conv layers + global average pooling + linear, for 32x32 colour images.

The CIFAR-10 model family of Yu et al., "Interpreting Adversarial Robustness: A View from Decision
Surface in Input Space" (2018, arXiv:1810.00144): a plain 5-layer ConvNet with global average
pooling. Channel widths (w, 2w, 2w, 4w, 4w; stride 2 at layers 2 and 4) and batch norm are
robaudit's choices; ``width`` scales them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import ARCHITECTURES

__all__ = ["YuConvNet", "yu_convnet"]


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class YuConvNet(nn.Module):
    """conv-bn-relu x5 → global average pool → linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv(in_channels, w, 1),
            _conv(w, 2 * w, 2),
            _conv(2 * w, 2 * w, 1),
            _conv(2 * w, 4 * w, 2),
            _conv(4 * w, 4 * w, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.features(x)).flatten(1))


@ARCHITECTURES.register("yu-convnet")
def yu_convnet(num_classes: int = 10, in_channels: int = 3, width: int = 32) -> YuConvNet:
    """5-conv + GAP + linear CIFAR ConvNet; ``width`` = channels of the first conv."""
    return YuConvNet(num_classes, in_channels, width=width)
