"""--channels-last (issue 15): the model and its image batches in torch.channels_last memory format
— the same function up to float rounding, so the scan's invariants hold and its figures agree
with the default format's within float tolerance; --no-channels-last is the scan it always was.
The automatic choice (neither flag): tests/test_memory_format.py."""

from __future__ import annotations

import json
import math

import torch
from conftest import TinyCNN
from torch import nn

from robaudit.attacks.base import ChannelsLastModel, in_memory_format
from robaudit.checks.attacks import decode_tensor
from robaudit.config import ScanConfig
from robaudit.data.spec import DataSpec
from robaudit.engine import run_scan
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.results import ScanResult

EPS = 0.08


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


def _data(n: int = 8) -> DataSpec:
    x = torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = _tiny()(x).argmax(1)  # every sample correct
    return DataSpec("synthetic", "test", x, y, tuple(str(i) for i in range(10)), "memory")


def _scan(checks="clean,attacks", attacks="pgd:steps=10,apgd-ce:n_iter=10", **kw):
    loaded = LoadedModel(_tiny(), ModelInfo(path="tiny", format="in-memory", sha256="0" * 64))
    config = ScanConfig.parse(checks=checks, attacks=attacks, eps=str(EPS), device="cpu", batch_size=8, **kw)
    return run_scan(loaded, _data(), config)


def test_logits_and_input_gradients_match_the_default_format():
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    y = torch.arange(6)
    default, wrapped = _tiny(), in_memory_format(_tiny(), True)
    assert isinstance(wrapped, ChannelsLastModel)
    assert wrapped.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    grads = []
    for model in (default, wrapped):
        logits = model(x)
        grads.append((logits, torch.autograd.grad(nn.functional.cross_entropy(logits, y), x)[0]))
    (z0, g0), (z1, g1) = grads
    torch.testing.assert_close(z1, z0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-7)


def test_channels_last_scan_keeps_the_invariants_and_is_recorded():
    """Which samples break may differ from the default format where a sign or an argmax sits within
    rounding of a tie (PGD steps by sign(∇)), so what is asserted is what must hold either way."""
    result = _scan(channels_last=True)
    assert result.provenance.channels_last is True
    clean = result.section("clean").accuracy
    section = result.section("attacks")
    examples = {e.index: e for e in section.examples}
    for run in section.runs:
        assert run.robust_accuracy <= clean
        for i in (i for i, b in enumerate(run.broken) if b and i in examples):
            e = examples[i]
            adv, image = decode_tensor(e.adversarial, e.shape), decode_tensor(e.image, e.shape)
            assert float((adv - image).abs().max()) <= EPS + 1e-6
    assert any(any(run.broken) for run in section.runs), "the test needs a broken sample"


def test_geometry_checks_run_and_agree_in_channels_last():
    """torch.func paths (Hessian-vector products, input Jacobians) through the wrapper: same figures
    within float tolerance."""
    checks = "clean,margins,jacobian,curvature"
    a = _scan(checks=checks, attacks="fgsm", channels_last=False).metrics()
    b = _scan(checks=checks, attacks="fgsm", channels_last=True).metrics()
    assert a.keys() == b.keys() and len(a) > 3
    for name in a:
        if isinstance(a[name], float) and math.isfinite(a[name]):
            assert math.isclose(a[name], b[name], rel_tol=1e-3, abs_tol=1e-5), name


def _sections(result) -> str:
    sections = result.to_dict()["sections"]
    for run in sections["attacks"]["runs"]:
        run.pop("seconds")
    return json.dumps(sections, sort_keys=True)


def test_forced_off_is_the_default_format_and_old_results_load():
    a = _scan(channels_last=False)
    assert a.provenance.channels_last is False and a.provenance.memory_format.how == "--no-channels-last"
    model = _tiny()
    assert in_memory_format(model, False) is model
    data = a.to_dict()
    assert data["provenance"].pop("channels_last") is False
    data["provenance"].pop("memory_format")
    old = ScanResult.from_dict(data).provenance  # a result from before the options
    assert old.channels_last is False and old.memory_format is None


def test_cli_channels_last_is_recorded(tmp_path):
    from typer.testing import CliRunner

    from robaudit.cli.demo import DEMO_MODEL
    from robaudit.cli.main import app

    out_json = tmp_path / "r.json"
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
            "--channels-last",
            "--checks",
            "clean,attacks",
            "--attacks",
            "fgsm",
            "--json",
            str(out_json),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "channels_last" in out.output
    assert json.loads(out_json.read_text())["provenance"]["channels_last"] is True
