"""Tests of the example plugin through robaudit's public paths: registry, Python API, CLI, report.

Data: robaudit's embedded demo sample (the first 1000 Fashion-MNIST test images) and its embedded
naturally trained small-cnn, so they run offline in a few seconds on CPU.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import robaudit
from robaudit.attacks import ATTACKS
from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.data import DataRequest, load_dataset
from robaudit.models import build_architecture, load_model, save_model
from robaudit.threat import Norm, ThreatModel
from robaudit_example.calibration import calibration_bins

N = 48
EPS = 0.1


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    data = load_dataset("demo", DataRequest(n=N))
    model = load_model(str(DEMO_MODEL)).model.eval()
    return model, data.x, data.y


@pytest.mark.parametrize("norm,eps", [(Norm.LINF, EPS), (Norm.L2, 1.5)])
def test_mifgsm_stays_in_ball_and_box(demo, norm, eps):
    model, x, y = demo
    attack = ATTACKS.get("mi-fgsm")(steps=5)
    out = attack.run(model, x, y, ThreatModel(norm, eps), None)
    delta = (out.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm is Norm.LINF else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(out.x_adv.min()) >= 0.0 and float(out.x_adv.max()) <= 1.0
    with torch.no_grad():
        assert torch.equal(model(out.x_adv).argmax(1) != y, out.success)
    # a natural model at these radii is broken on a good share of the batch
    assert out.success.float().mean() > 0.3
    # 5 steps: 5 forward+backward passes per sample, plus the final success check
    assert attack.counter.backward == 5 * N


def test_mifgsm_at_least_as_strong_as_fgsm_and_calibration_section(demo):
    model, x, y = demo
    result = robaudit.scan(
        model, (x, y), eps=[EPS], attacks="fgsm,mi-fgsm", checks=("clean", "attacks", "confidence-calibration"), device="cpu"
    )
    m = result.metrics()
    clean = m["clean.accuracy"]
    fgsm, mi = m[f"robust_acc.fgsm.linf@{EPS:g}"], m[f"robust_acc.mi-fgsm.linf@{EPS:g}"]
    assert mi <= fgsm <= clean
    assert mi < clean  # it actually broke something
    sec = result.section("confidence-calibration")
    assert sec.n == N and sum(sec.bin_count) == N
    assert 0.0 <= m["calibration.ece"] <= m["calibration.mce"] <= 1.0
    assert sec.accuracy == pytest.approx(clean)
    # round trip through JSON keeps the section (as a dict when read without the type registered)
    again = json.loads(result.to_json())
    assert again["sections"]["confidence-calibration"]["ece"] == pytest.approx(sec.ece)
    html = result.to_html()
    assert "confidence-calibration" in html and "calibration.ece" in html and "mi-fgsm" in html


def test_ece_against_hand_computation():
    # 4 samples, 2 classes. Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right).
    p = torch.tensor([0.9, 0.9, 0.6, 0.6], dtype=torch.float64)
    logits = torch.stack([torch.log(p), torch.log(1 - p)], 1)
    labels = torch.tensor([0, 1, 0, 0])
    ece, mce, count, conf, acc = calibration_bins(logits, labels, n_bins=10)
    # bin (0.8,0.9]: acc 0.5, conf 0.9 → gap 0.4, weight 1/2; bin (0.5,0.6]: acc 1, conf 0.6 → gap 0.4
    assert ece == pytest.approx(0.4) and mce == pytest.approx(0.4)
    assert count.tolist()[8] == 2 and count.tolist()[5] == 2 and int(count.sum()) == 4
    # a perfectly calibrated bin contributes nothing
    ece2, *_ = calibration_bins(torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])), torch.tensor([0, 1]), 10)
    assert ece2 == pytest.approx(0.0, abs=1e-12)


def test_tiny_mlp_builds_and_round_trips(tmp_path):
    net = build_architecture("tiny-mlp", num_classes=10, in_channels=1, input_size=28, kwargs={"hidden": 32})
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    path = tmp_path / "mlp.safetensors"
    save_model(path, net, arch="tiny-mlp", arch_kwargs={"hidden": 32}, num_classes=10, input_shape=(1, 28, 28))
    loaded = load_model(str(path))
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), net(x), atol=1e-6)


def test_cli_plugins_lists_and_checks():
    res = CliRunner().invoke(app, ["plugins", "--check"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name in ("mi-fgsm", "confidence-calibration", "tiny-mlp", "robaudit-example"):
        assert name in res.output
    assert "ok" in res.output


def test_cli_scan_with_plugin_attack_check_and_report(tmp_path):
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    res = CliRunner().invoke(
        app,
        [
            "scan",
            str(DEMO_MODEL),
            "--dataset",
            "demo",
            "--n",
            "24",
            "--eps",
            "0.1",
            "--device",
            "cpu",
            "--attacks",
            "mi-fgsm:steps=3",
            "--checks",
            "clean,attacks,confidence-calibration:bins=10",
            "--json",
            str(out_json),
            "--html",
            str(out_html),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out_json.read_text())
    assert math.isfinite(data["sections"]["confidence-calibration"]["ece"])
    assert data["sections"]["confidence-calibration"]["n_bins"] == 10  # the check parameter reached the run
    runs = data["sections"]["attacks"]["runs"]
    assert [r["attack"] for r in runs] == ["mi-fgsm[steps=3]"]
    html = out_html.read_text()
    assert "section-confidence-calibration" in html and "mi-fgsm" in html
    # the report re-rendered from JSON alone (plugin section read back generically) still shows it
    again = tmp_path / "again.html"
    assert CliRunner().invoke(app, ["report", str(out_json), "-o", str(again)]).exit_code == 0
    assert "calibration" in again.read_text()
