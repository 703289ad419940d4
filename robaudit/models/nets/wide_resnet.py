"""``wrn-28-10``: WideResNet (default depth 28, widen factor 10).

Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016), in the layout of Madry et al.'s
CIFAR model, TRADES and RobustBench (``robustbench/model_zoo/architectures/wide_resnet.py``);
parameter names match, so their state dicts load as they are (TRADES checkpoints also carry an
unused ``sub_block1``: pass ``sub_block1=true``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import ARCHITECTURES

__all__ = ["WideResNet", "wrn_28_10"]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.droprate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.equalInOut:
            out = self.relu1(self.bn1(x))
            shortcut = x
        else:
            x = self.relu1(self.bn1(x))
            assert self.convShortcut is not None  # built when in and out planes differ
            out, shortcut = x, self.convShortcut(x)
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        blocks = [
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)
        ]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
        sub_block1: bool = False,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 28, 34), got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, dropout)
        if sub_block1:
            self.sub_block1 = NetworkBlock(n, ch[0], ch[1], 1, dropout)  # unused, as in TRADES
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, dropout)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = avg_pool2d(out, 8) on 32x32 inputs
        return self.fc(out)


@ARCHITECTURES.register("wrn-28-10")
def wrn_28_10(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
    sub_block1: bool = False,
) -> WideResNet:
    """WideResNet-28-10 (RobustBench layout); ``depth``/``widen_factor`` give e.g. WRN-34-10."""
    return WideResNet(depth, widen_factor, num_classes, in_channels, dropout, sub_block1)
