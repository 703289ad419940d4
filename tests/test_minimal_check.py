"""The minimal-perturbation check on an analytic linear model, through the engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robaudit.config import ScanConfig, parse_attack_list
from robaudit.data.spec import DataSpec
from robaudit.engine import run_scan
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.threat import Norm


class Linear2(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(2, d, generator=g))
        self.b = nn.Parameter(-0.5 * self.w.detach().sum(1))  # boundary through x = 0.5

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_minimal_radii_match_the_exact_linear_answer(norm):
    d = 20
    model = Linear2(d).eval()
    g = torch.Generator().manual_seed(1)
    x = (0.5 + 0.05 * torch.randn(24, 1, 4, 5, generator=g)).clamp(0, 1)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    y[:4] = 1 - y[:4]  # four misclassified samples: radius 0
    data = DataSpec("lin", "test", x, y, ("a", "b"), "memory")
    loaded = LoadedModel(model, ModelInfo(path="lin", format="safetensors", sha256="0" * 64))
    cfg = ScanConfig(norm=norm, eps=(0.02,), attacks=parse_attack_list("fgsm"), checks=("minimal",), device="cpu")
    sec = run_scan(loaded, data, cfg, command_line="t").section("minimal")
    w = model.w.detach()
    diff = (w[0] - w[1]).abs()
    dual = diff.sum() if norm is Norm.LINF else diff.norm()
    exact = (logits[:, 0] - logits[:, 1]).abs() / dual
    for i, r in enumerate(sec.radii):
        if i < 4:
            assert r == 0.0
        else:
            assert r is not None
            assert exact[i] * (1 - 1e-4) <= r <= exact[i] * 1.03, (i, r, float(exact[i]))
    assert sec.n_found == sec.n_attacked == 20
