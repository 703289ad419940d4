"""tiny-mlp: a two-layer perceptron (flatten → Linear → ReLU → Linear), a fast baseline that
robaudit can rebuild from a checkpoint's metadata (``--arch tiny-mlp``)."""

from __future__ import annotations

from torch import nn

__all__ = ["tiny_mlp"]


def tiny_mlp(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, hidden: int = 128) -> nn.Module:
    """Architecture factory: robaudit passes num_classes, in_channels and (when the factory names
    it) input_size, the image height; ``hidden`` comes from ``--arch-kwargs hidden=256``."""
    if hidden < 1:
        raise ValueError("hidden must be >= 1")
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * input_size * input_size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
