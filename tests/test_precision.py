"""--precision (issue 15): attacks run under torch.autocast, every broken sample is re-checked in
float32, and float32 is the scan it always was."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TinyCNN
from torch import nn

from robaudit.attacks.base import in_precision
from robaudit.checks.attacks import decode_tensor
from robaudit.cli.main import app
from robaudit.config import ScanConfig
from robaudit.data.spec import DataSpec
from robaudit.engine import run_scan
from robaudit.errors import UsageError
from robaudit.models.spec import LoadedModel, ModelInfo

EPS = 0.08


def _setup(model: nn.Module, n: int = 8):
    x = torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct
    data = DataSpec("synthetic", "test", x, y, tuple(str(i) for i in range(10)), "memory")
    return LoadedModel(model, ModelInfo(path="tiny", format="in-memory", sha256="0" * 64)), data


def _tiny():
    torch.manual_seed(0)
    return TinyCNN().eval()


def _scan(model, precision=None, attacks="pgd:steps=10"):
    loaded, data = _setup(model)
    kw = {} if precision is None else {"precision": precision}
    # the memory format forced: an automatic choice is timed, and two scans must compute alike
    config = ScanConfig.parse(
        checks="clean,attacks", attacks=attacks, eps=str(EPS), device="cpu", batch_size=8, channels_last=False, **kw
    )
    return run_scan(loaded, data, config), data


def test_bfloat16_broken_samples_are_misclassified_in_float32_within_eps():
    model = _tiny()
    result, data = _scan(model, "bfloat16")
    assert result.provenance.precision == "bfloat16"
    section = result.section("attacks")
    (run,) = section.runs
    broken = [i for i, b in enumerate(run.broken) if b]
    assert broken, "the test needs a broken sample"
    examples = {e.index: e for e in section.examples}
    assert set(broken) <= set(examples)  # n = keep_examples: every broken sample keeps its example
    for i in broken:
        e = examples[i]
        adv, image = decode_tensor(e.adversarial, e.shape), decode_tensor(e.image, e.shape)
        assert float((adv - image).abs().max()) <= EPS + 1e-6
        with torch.no_grad():
            assert int(model(adv[None]).argmax(1)) != e.label  # the float32 model, no autocast


class _AutocastTrap(nn.Module):
    """Correct in float32; under autocast its prediction flips to another class: a 'success' that
    only exists in low precision."""

    def __init__(self):
        super().__init__()
        self.net = _tiny()

    def forward(self, x):
        z = self.net(x)
        if torch.is_autocast_enabled(x.device.type):
            return z.roll(1, dims=1) + 100 * torch.nn.functional.one_hot(z.argmax(1).add(1) % 10, 10)
        return z


def test_a_low_precision_artefact_never_counts_as_broken():
    result, _ = _scan(_AutocastTrap().eval(), "bfloat16", attacks="fgsm")
    (run,) = result.section("attacks").runs
    assert not any(run.broken)  # every bfloat16 "success" failed the float32 re-check
    assert run.robust_accuracy == 1.0
    assert run.forward_per_sample == 3.0  # FGSM's 2 forwards + the re-check


def _sections(result) -> str:
    sections = result.to_dict()["sections"]
    for run in sections["attacks"]["runs"]:
        run.pop("seconds")  # wall time, the one thing allowed to differ
    return json.dumps(sections, sort_keys=True)


def test_float32_is_the_scan_without_the_option():
    a, _ = _scan(_tiny(), attacks="pgd:steps=10,apgd-ce:n_iter=10")
    b, _ = _scan(_tiny(), "float32", attacks="pgd:steps=10,apgd-ce:n_iter=10")
    assert _sections(a) == _sections(b)
    model = _tiny()
    assert in_precision(model, "float32", torch.device("cpu")) is model  # float32 attacks the model itself
    assert a.provenance.precision == b.provenance.precision == "float32"


def test_float16_on_cpu_is_a_usage_error():
    with pytest.raises(UsageError, match="float16 needs a CUDA device"):
        _scan(_tiny(), "float16")
    with pytest.raises(UsageError, match="--precision must be one of"):
        ScanConfig.parse(precision="float8")


def test_cli_float16_on_cpu_exits_2(tmp_path):
    from typer.testing import CliRunner

    from robaudit.cli.demo import DEMO_MODEL

    out = CliRunner().invoke(
        app,
        [
            "scan",
            str(DEMO_MODEL),
            "-d",
            "demo",
            "-n",
            "4",
            "--device",
            "cpu",
            "--precision",
            "float16",
            "--checks",
            "clean,attacks",
            "-q",
        ],
    )
    assert out.exit_code == 2, out.output
    assert "float16 needs a CUDA device" in out.output
    assert "Traceback" not in out.output
