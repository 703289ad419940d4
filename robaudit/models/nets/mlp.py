"""``mlp``: a fully connected ReLU network on the flattened image.

The small networks of the verification literature are of this kind (e.g. the MNIST MLPs of Tjeng,
Xiao & Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer Programming", ICLR
2019, and of Wong & Kolter 2018): few enough ReLUs that ``--checks certify:method=exact`` decides
every sample. ``hidden`` units in each of ``depth`` hidden layers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import ARCHITECTURES

__all__ = ["MLP", "mlp"]


class MLP(nn.Module):
    """flatten → (linear → ReLU) × depth → linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, hidden: int = 100, depth: int = 2):
        super().__init__()
        if depth < 0 or hidden < 1:
            raise ValueError(f"depth must be >= 0 and hidden >= 1, got depth={depth}, hidden={hidden}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * input_size * input_size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@ARCHITECTURES.register("mlp")
def mlp(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, hidden: int = 100, depth: int = 2) -> MLP:
    """Fully connected ReLU net on the flattened image; ``depth`` hidden layers of ``hidden`` units."""
    return MLP(num_classes, in_channels, input_size, hidden, depth)
