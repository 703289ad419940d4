"""The Python API on an in-memory module and tensors."""

from __future__ import annotations

import pytest
import torch

import robaudit
from robaudit.cli.demo import DEMO_MODEL
from robaudit.data import DataRequest, load_dataset
from robaudit.errors import UsageError
from robaudit.models import load_model


def test_scan_gate_html_on_a_plain_module():
    net = load_model(str(DEMO_MODEL)).model.inner
    net.train()
    data = load_dataset("demo", DataRequest(n=32))
    result = robaudit.scan(net, (data.x, data.y), eps="0.1", attacks="fgsm", checks=("clean", "attacks"), device="cpu")
    assert net.training, "the caller's mode is restored"
    acc = result.metrics()["clean.accuracy"]
    assert robaudit.gate(result, [f"clean.accuracy >= {acc}"]).passed
    assert not robaudit.gate(result, [f"clean.accuracy > {acc}"]).passed
    assert "<html" in result.to_html().lower()
    path_result = robaudit.scan(str(DEMO_MODEL), data, eps=[0.1], attacks="fgsm", checks=("clean", "attacks"), device="cpu")
    assert path_result.metrics()["clean.accuracy"] == acc
    assert isinstance(result, robaudit.ScanResult)
    assert torch.is_tensor(data.x)


def test_gate_with_a_thresholds_path_that_is_no_file(tmp_path):
    """A Path is a thresholds file: a missing one is a usage error naming it (it used to be iterated
    as if it were a list of requirements: a TypeError). The file is read before any result is."""
    with pytest.raises(UsageError, match=r"thresholds file .*robaudit\.toml not found"):
        robaudit.gate(None, tmp_path / "robaudit.toml")


def test_api_and_cli_share_config_parsing():
    """robaudit.scan takes the same strings as the CLI: the paper preset's ε columns, check options,
    and the same usage errors."""
    import pytest

    from robaudit.config import PAPER_EPS, ScanConfig
    from robaudit.errors import UsageError

    data = load_dataset("demo", DataRequest(n=8))
    result = robaudit.scan(str(DEMO_MODEL), data, attacks="paper", checks="clean,attacks", device="cpu")
    assert tuple(result.section("attacks").eps) == PAPER_EPS["grey"]
    assert ScanConfig.parse(attacks="quick").preset == "quick" and ScanConfig.parse(attacks="pgd").preset is None
    with pytest.raises(UsageError, match="batch-size"):
        robaudit.scan(str(DEMO_MODEL), data, batch_size=0)
