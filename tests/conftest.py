"""Shared fixtures: tiny models and data, no network. Real Fashion-MNIST tests skip without the Debian data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def pytest_configure(config):
    # Tiny models: one thread avoids intra-op overhead and keeps results reproducible.
    torch.set_num_threads(1)


@pytest.fixture
def fashion_available() -> Path:
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR


class TinyCNN(nn.Module):
    """A few thousand parameters: fast enough for attack tests on 2 cores."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(4 * 16, num_classes)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class Conv6Net(nn.Module):
    """A seeded conv + linear net for 1×6×6 inputs (the batch- and process-independence tests)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()
