"""The memory format chosen at scan start (issue 25): channels_last when a timed probe finds it
faster and deciding the same, the default format otherwise and wherever a timed choice would
break a promise (--compute-block, --shard); forced either way by --channels-last /
--no-channels-last; recorded in provenance; never converting the caller's module in place."""

from __future__ import annotations

import json

import torch
from conftest import TinyCNN
from torch import nn
from typer.testing import CliRunner

import robaudit
import robaudit.memory_format as mf
from robaudit.attacks.base import ChannelsLastModel
from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.config import ScanConfig
from robaudit.data.spec import DataSpec
from robaudit.engine import run_scan
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.results import MemoryFormat, ScanResult


def _rgb_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN(in_channels=3).eval()  # 3 input channels: channels_last strides differ from the default's


def _data(net: nn.Module, n: int = 12) -> DataSpec:
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x).argmax(1)
    return DataSpec("synthetic", "test", x, y, tuple(str(i) for i in range(10)), "memory")


def _scan(net: nn.Module, **kw) -> ScanResult:
    loaded = LoadedModel(net, ModelInfo(path="m", format="in-memory", sha256="0" * 64))
    config = ScanConfig.parse(checks="clean,attacks", attacks="pgd:steps=3", eps="0.05", device="cpu", batch_size=8, **kw)
    return run_scan(loaded, _data(net), config)


def _timings(channels_last: float, contiguous: float):
    """A stand-in for the probe's clock: fixed seconds per format."""
    return lambda model, x, y: channels_last if isinstance(model, ChannelsLastModel) else contiguous


def test_auto_chooses_channels_last_when_faster_with_the_same_decisions(monkeypatch):
    monkeypatch.setattr(mf, "_probe_seconds", _timings(0.5, 1.0))
    net = _rgb_net()
    result = _scan(net)
    memory = result.provenance.memory_format
    assert (memory.chosen, memory.how, memory.same_decisions) == ("channels_last", "auto", True)
    assert result.provenance.channels_last is True
    assert memory.probe_rows == 8  # min(PROBE_ROWS, --batch-size, samples)
    assert (memory.probe_seconds_channels_last, memory.probe_seconds_contiguous) == (0.5, 1.0)
    assert memory.max_logit_difference < 1e-4
    assert "0.50×" in memory.reason
    assert net.conv.weight.is_contiguous(), "the caller's module is not converted in place"


def test_auto_keeps_the_default_format_when_not_clearly_faster(monkeypatch):
    monkeypatch.setattr(mf, "_probe_seconds", _timings(0.97, 1.0))
    memory = _scan(_rgb_net()).provenance.memory_format
    assert (memory.chosen, memory.how) == ("contiguous", "auto")
    assert "not ≥ 5% faster" in memory.reason and memory.probe_rows == 8


class LayoutSensitive(nn.Module):
    """A model whose decisions depend on the memory format (classes reversed for NHWC inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _rgb_net()

    def forward(self, x):
        z = self.net(x)
        return z if x.is_contiguous() else z.flip(1)


def test_auto_keeps_the_default_format_when_decisions_differ(monkeypatch):
    monkeypatch.setattr(mf, "_probe_seconds", _timings(0.1, 1.0))
    memory = _scan(LayoutSensitive().eval()).provenance.memory_format
    assert (memory.chosen, memory.same_decisions) == ("contiguous", False)
    assert "decided differently" in memory.reason


def test_no_probe_where_a_timed_choice_would_break_a_promise(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("no probe expected")

    monkeypatch.setattr(mf, "_probe_seconds", fail)
    memory = _scan(_rgb_net(), compute_block=4).provenance.memory_format
    assert (memory.chosen, memory.how, memory.probe_rows) == ("contiguous", "auto", None)
    assert "--compute-block" in memory.reason
    from robaudit.distributed import run_shard
    from robaudit.engine import Shard

    net = _rgb_net()
    loaded = LoadedModel(net, ModelInfo(path="m", format="in-memory", sha256="0" * 64))
    payload = run_shard(loaded, _data(net), ScanConfig.parse(checks="clean", device="cpu"), Shard(1, 2))
    assert "--shard" in payload["provenance"]["memory_format"]["reason"]
    assert payload["run"]["channels_last"] is None  # the shards' fingerprints carry the request: auto
    net = _rgb_net()
    light = run_scan(
        LoadedModel(net, ModelInfo(path="m", format="in-memory", sha256="0" * 64)),
        _data(net),
        ScanConfig.parse(checks="clean,margins", device="cpu"),
    ).provenance.memory_format
    assert light.chosen == "contiguous" and light.probe_rows is None and "a probe would cost more" in light.reason
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    memory = _scan(mlp).provenance.memory_format
    assert memory.chosen == "contiguous" and "nothing to convert" in memory.reason


def test_forced_either_way_without_a_probe(monkeypatch):
    monkeypatch.setattr(mf, "_probe_seconds", _timings(0.1, 1.0))
    off = _scan(_rgb_net(), channels_last=False).provenance
    assert (off.channels_last, off.memory_format.how, off.memory_format.probe_rows) == (False, "--no-channels-last", None)
    monkeypatch.setattr(mf, "_probe_seconds", _timings(10.0, 1.0))
    on = _scan(_rgb_net(), channels_last=True, compute_block=4).provenance
    assert (on.channels_last, on.memory_format.how, on.memory_format.probe_rows) == (True, "--channels-last", None)


def test_the_callers_module_keeps_its_format_and_a_module_that_cant_be_copied_is_converted_in_place_and_said(monkeypatch):
    net = _rgb_net()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 10
    y[0] = 9  # ten classes, as the model has
    result = robaudit.scan(net, (x, y), checks="clean", attacks="fgsm", eps="0.05", device="cpu", channels_last=True)
    assert result.provenance.channels_last is True and not result.provenance.memory_format.converted_in_place
    assert net.conv.weight.is_contiguous() and not net.conv.weight.is_contiguous(memory_format=torch.channels_last)

    def no_copy(memo):
        raise TypeError("can't deepcopy this module")

    monkeypatch.setattr(TinyCNN, "__deepcopy__", no_copy, raising=False)
    forced = _scan(net, channels_last=True).provenance.memory_format
    assert forced.converted_in_place and "converted" in forced.summary()
    assert net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    auto = _scan(_rgb_net()).provenance.memory_format  # auto never converts in place: no copy, no probe
    assert auto.chosen == "contiguous" and "could not be copied" in auto.reason


def test_torchrun_ranks_use_rank_0s_decision(monkeypatch):
    """Rank 0 probes and broadcasts; another rank takes the broadcast decision without probing."""
    import torch.distributed as dist

    from robaudit.torchrun import agreed_memory_format

    decided = MemoryFormat("channels_last", "auto", "faster (rank 0)", probe_rows=8)

    def broadcast(objects, src=0):
        objects[0] = decided

    def fail(*a, **k):
        raise AssertionError("rank 1 must not probe")

    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    monkeypatch.setattr(mf, "_probe_seconds", fail)
    net = _rgb_net()
    loaded = LoadedModel(net, ModelInfo(path="m", format="in-memory", sha256="0" * 64))
    choice, converted = agreed_memory_format(loaded, _data(net), ScanConfig.parse(device="cpu"), torch.device("cpu"), 1, 2)
    assert choice == decided and converted is None


def test_cli_flags_and_summary(tmp_path):
    runner = CliRunner()
    base = [
        "scan",
        str(DEMO_MODEL),
        "-d",
        "demo",
        "-n",
        "6",
        "--device",
        "cpu",
        "--checks",
        "clean,attacks",
        "--attacks",
        "fgsm",
    ]
    out = runner.invoke(app, [*base, "--no-channels-last", "--json", str(tmp_path / "off.json")])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "off.json").read_text())["provenance"]["memory_format"]["how"] == "--no-channels-last"
    out = runner.invoke(app, [*base, "--json", str(tmp_path / "auto.json")])
    assert out.exit_code == 0, out.output
    memory = json.loads((tmp_path / "auto.json").read_text())["provenance"]["memory_format"]
    assert memory["how"] == "auto" and memory["probe_rows"] == 6
    assert "memory format: " + memory["chosen"] in " ".join(out.output.split())
