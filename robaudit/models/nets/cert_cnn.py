"""``cert-cnn``: a small strided CNN for certified training (IBP, CROWN-IBP) on a CPU.

conv 4×4 stride 2 (``width``) → ReLU → conv 4×4 stride 2 (2·``width``) → ReLU → fc(``hidden``) →
ReLU → fc(K), padding 1, no pooling: strided convolutions instead of max pooling, whose interval
bounds are looser (Gowal et al. 2018 and Zhang et al. 2020 use no pooling). With ``width=16,
hidden=100`` it is the MNIST "small" network of Wong & Kolter, "Provable Defenses against
Adversarial Examples via the Convex Outer Adversarial Polytope" (ICML 2018,
github.com/locuslab/convex_adversarial), the size class of the "DM-small" model of Gowal et al.
(2018, Table 1: conv 16 4×4+2, conv 32 4×4+1, fc 100) that Zhang et al. (ICLR 2020, CROWN-IBP)
train as well. ``bn=True`` puts a BatchNorm after each convolution and the hidden linear layer,
as Shi et al., "Fast Certified Robust Training with Short Warmup" (NeurIPS 2021) do for short
schedules. The defaults are the measured choice for ``harden --method ibp|crown-ibp`` on
Fashion-MNIST (docs/harden.md, "Certified training").
"""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import ARCHITECTURES

__all__ = ["CertCNN", "cert_cnn"]


class CertCNN(nn.Module):
    """conv4×4/2(width) → ReLU → conv4×4/2(2·width) → ReLU → fc(hidden) → ReLU → fc(K) [BatchNorm after each hidden layer with bn]."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 16,
        hidden: int = 100,
        input_size: int = 28,
        bn: bool = False,
    ):
        super().__init__()
        if input_size % 4:
            raise ValueError(f"input_size must be a multiple of 4, got {input_size}")

        def norm(kind, n):
            return kind(n) if bn else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            norm(nn.BatchNorm2d, width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            norm(nn.BatchNorm2d, 2 * width),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * (input_size // 4) ** 2, hidden),
            norm(nn.BatchNorm1d, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@ARCHITECTURES.register("cert-cnn")
def cert_cnn(
    num_classes: int = 10, in_channels: int = 1, width: int = 16, hidden: int = 100, input_size: int = 28, bn: bool = False
) -> CertCNN:
    """Small strided CNN for certified training (Wong & Kolter 2018 "small" layout); ``bn`` adds BatchNorm."""
    return CertCNN(num_classes, in_channels, width=width, hidden=hidden, input_size=input_size, bn=bn)
