"""Check parameters from the command line and the API: ``--checks surfaces:steps=7:extent_factor=3``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robaudit.checks.base import build_check
from robaudit.config import ALL_CHECKS, ScanConfig, parse_attack_list, parse_check_list
from robaudit.data.spec import DataSpec
from robaudit.engine import run_scan
from robaudit.errors import UsageError
from robaudit.models.spec import LoadedModel, ModelInfo


def test_parse_check_list_names_options_and_all():
    names, options = parse_check_list("clean,surfaces:steps=7:extent_factor=3,jacobian:n_heatmaps=1,zero-threshold=1e-4")
    assert names == ("clean", "surfaces", "jacobian")
    assert dict(options) == {
        "surfaces": (("steps", 7), ("extent_factor", 3.0)),
        "jacobian": (("n_heatmaps", 1), ("zero_threshold", 1e-4)),
    }
    assert parse_check_list("all")[0] == ALL_CHECKS
    assert parse_check_list(["clean", "margins", "clean"])[0] == ("clean", "margins")


def test_build_check_applies_overrides_without_touching_the_class():
    check = build_check("surfaces", (("steps", 7), ("extent_factor", 3)))
    assert (check.steps, check.extent_factor) == (7, 3.0) and isinstance(check.extent_factor, float)
    assert build_check("surfaces").steps != 7  # the class default is unchanged


@pytest.mark.parametrize(
    "text, message",
    [
        ("surfaces:stepz=7", "has no parameter 'stepz'; its parameters are: extent_factor, n_samples, steps"),
        ("surfaces:steps=many", "steps='many' must be int"),
        ("clean:k=3", "check 'clean' has no parameter 'k'; its parameters are: none"),
        ("curvatur", "did you mean 'curvature'"),
        ("surfaces:steps", "must be written name=value"),
    ],
)
def test_bad_check_options_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_check_list(text)


def test_engine_builds_checks_with_their_options():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(12, 1, 4, 4)
    with torch.no_grad():
        y = net(x).argmax(1)
    data = DataSpec("synthetic", "test", x, y, ("a", "b", "c"), "memory")
    loaded = LoadedModel(net, ModelInfo(path="m.safetensors", format="safetensors", sha256="0" * 64, arch="tiny"))
    names, options = parse_check_list("surfaces:steps=5:n_samples=1,jacobian:n_heatmaps=1")
    config = ScanConfig(eps=(0.05,), attacks=parse_attack_list("fgsm"), checks=names, check_options=options, device="cpu")
    result = run_scan(loaded, data, config)
    surfaces = result.section("surfaces")
    assert surfaces.steps == 5 and len(surfaces.axis) == 5 and len(surfaces.samples) == 1
    assert len(surfaces.samples[0].planes[0].margin) == 5
    assert len(result.section("jacobian").heatmaps) == 1
