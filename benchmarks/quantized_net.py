"""robaudit's ``small-cnn`` behind 8-bit input quantization, x → round(255·x)/255: the same weights
(any small-cnn state dict loads), but every input gradient is exactly zero (round() has a zero
derivative) — the accidental gradient mask benchmarks/bench_autoattack.py's ``quantized`` model
measures. Used as ``--arch benchmarks/quantized_net.py:QuantizedSmallCNN``."""

from __future__ import annotations

import torch

from robaudit.models.nets.small_cnn import SmallCNN


class QuantizedSmallCNN(SmallCNN):
    """:class:`SmallCNN` on inputs rounded to multiples of 1/255 (pixel space [0,1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.round(x * 255) / 255)
