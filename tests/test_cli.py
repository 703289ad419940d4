"""CLI end to end with Typer's CliRunner: every checkpoint format on real Fashion-MNIST, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import robaudit
from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.models import load_model

runner = CliRunner()

USER_ARCH = '''
import torch
from torch import nn

class UserNet(nn.Module):
    """The demo small-cnn's layout, written by a user."""
    def __init__(self, num_classes=10, width=16, hidden=128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(2 * width * 49, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))
'''


def _scan(*args) -> tuple[int, str, dict | None]:
    res = runner.invoke(app, ["scan", *map(str, args)])
    return res.exit_code, res.output, None


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """The demo model's weights in every checkpoint format, with misleading extensions for some."""
    d = tmp_path_factory.mktemp("formats")
    arch_file = d / "user_net.py"
    arch_file.write_text(USER_ARCH)
    net = load_model(str(DEMO_MODEL)).model.inner
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    from safetensors.torch import save_file

    save_file(sd, str(d / "plain.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, d / "nested.pth")
    torch.save(sd, d / "state.bin")  # a state dict with a misleading extension
    example = torch.rand(2, 1, 28, 28)
    torch.jit.trace(net, example).save(str(d / "scripted.pt"))
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}}), str(d / "exported.pt2"))
    torch.export.save(torch.export.export(net, (example,)), str(d / "static_batch.pt2"))
    return d, arch_file


@pytest.mark.slow
def test_same_clean_accuracy_in_every_format(formats, fashion_available, tmp_path):
    d, arch_file = formats
    arch = f"{arch_file}:UserNet"
    cases = {
        "robaudit safetensors": [DEMO_MODEL],
        "plain safetensors + user arch": [d / "plain.safetensors", "--arch", arch],
        "nested pickle + user arch": [d / "nested.pth", "--arch", arch],
        "state dict .bin + built-in arch": [d / "state.bin", "--arch", "small-cnn", "--arch-kwargs", "width=16,hidden=128"],
        "torchscript": [d / "scripted.pt", "--trust-checkpoint"],  # code formats: docs/security.md
        "torch.export": [d / "exported.pt2", "--trust-checkpoint"],
    }
    accs = {}
    for name, args in cases.items():
        out = tmp_path / f"{len(accs)}.json"
        res = runner.invoke(
            app,
            [
                "scan",
                *map(str, args),
                "--dataset",
                "fashion-mnist",
                "--data-dir",
                str(fashion_available),
                "--n",
                "200",
                "--checks",
                "clean,margins",
                "--quiet",
                "--json",
                str(out),
            ],
        )
        assert res.exit_code == 0, f"{name}: {res.output}"
        accs[name] = json.loads(out.read_text())["sections"]["clean"]["accuracy"]
    assert len(set(accs.values())) == 1, accs
    assert list(accs.values())[0] > 0.8  # the demo model is a real classifier


def test_static_batch_export_is_audited_at_its_batch_size(formats):
    d, _ = formats
    res = runner.invoke(
        app,
        [
            "scan",
            str(d / "static_batch.pt2"),
            "--trust-checkpoint",
            "--dataset",
            "demo",
            "--n",
            "7",
            "--checks",
            "clean,margins",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "batch size 2 only" in res.output and "dynamic_shapes" in res.output  # summary + model warning


def test_demo_runs_offline(tmp_path):
    res = runner.invoke(app, ["demo", "--n", "64", "--eps", "0.1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "results.json").read_text())
    clean = data["sections"]["clean"]["accuracy"]
    ens = data["sections"]["attacks"]["ensemble"]["0.1"]
    assert 0.0 <= ens <= clean
    assert "robust accuracy" in res.output
    html = (tmp_path / "report.html").read_text()
    assert "<html" in html.lower() and "data:image/png;base64," in html


class _Pwn:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_exit_codes(tmp_path):
    # usage errors → 2
    code = runner.invoke(app, ["scan", str(DEMO_MODEL), "--dataset", "fashion-mnistt"]).exit_code
    assert code == 2
    res = runner.invoke(app, ["scan", str(DEMO_MODEL), "--dataset", "demo", "--eps", "abc"])
    assert res.exit_code == 2 and "epsilon" in res.output
    assert runner.invoke(app, ["scan", str(DEMO_MODEL), "--dataset", "demo", "--attacks", "pgdd"]).exit_code == 2
    # missing dataset, no network → 3, one line naming where it looked
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(
        app,
        ["scan", str(DEMO_MODEL), "--dataset", "cifar10", "--data-dir", str(empty)],
        env={"ROBAUDIT_DATA": str(empty), "HOME": str(empty)},
    )
    assert res.exit_code == 3, res.output
    assert "--download" in res.output and "Traceback" not in res.output
    # malicious pickle → 3 and nothing executed
    target = tmp_path / "pwned"
    torch.save({"state_dict": _Pwn(target)}, tmp_path / "evil.pt")
    res = runner.invoke(app, ["scan", str(tmp_path / "evil.pt"), "--arch", "small-cnn", "--dataset", "demo"])
    assert res.exit_code == 3 and "--trust-checkpoint" in res.output
    assert not target.exists()
    # truncated safetensors → 3
    (tmp_path / "cut.safetensors").write_bytes(DEMO_MODEL.read_bytes()[:5000])
    assert runner.invoke(app, ["scan", str(tmp_path / "cut.safetensors"), "--dataset", "demo"]).exit_code == 3
    # state dict for the wrong architecture → 3 with the keys named
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3, 3)}, str(tmp_path / "wrong.safetensors"))
    res = runner.invoke(app, ["scan", str(tmp_path / "wrong.safetensors"), "--arch", "small-cnn", "--dataset", "demo"])
    assert res.exit_code == 3 and "conv1.weight" in res.output
    # wrong number of classes for the dataset → 3
    rgb = tmp_path / "rgb.npz"
    import numpy as np

    np.savez(rgb, x=np.zeros((4, 3, 28, 28), dtype=np.uint8), y=np.array([0, 1, 2, 3]))
    res = runner.invoke(app, ["scan", str(DEMO_MODEL), "--dataset", str(rgb)])
    assert res.exit_code == 3, res.output
    # --debug shows the traceback instead
    res = runner.invoke(app, ["scan", str(tmp_path / "cut.safetensors"), "--dataset", "demo", "--debug"])
    assert res.exit_code != 0 and res.exception is not None


def test_list_and_version():
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0
    for name in ("small-cnn", "wrn-28-10", "fashion-mnist", "pgd", "margins"):
        assert name in res.output
    assert runner.invoke(app, ["list", "nonsense"]).exit_code == 2
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"robaudit {robaudit.__version__}"
    assert "--install-completion" in runner.invoke(app, ["--help"]).output


def test_list_verbose_shows_parameters_defaults_and_papers():
    res = runner.invoke(app, ["list", "attacks", "-v"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "fab-t" in out and "n_iter=100, n_restarts=1, n_target_classes=9, alpha_max=0.1, eta=1.05, beta=0.9" in out
    assert "Minimally distorted adversarial examples" in out and "Madry" in out and "steps=20" in out
    res = runner.invoke(app, ["list", "architecture", "-v"])  # the singular is accepted
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "small-cnn" in out and "width=32, hidden=1024" in out and "--arch-kwargs" in out
    res = runner.invoke(app, ["list", "checks", "-v"])
    assert res.exit_code == 0 and "zero_threshold=0.001" in " ".join(res.output.split())
    res = runner.invoke(app, ["list", "atacks"])
    assert res.exit_code == 2 and "did you mean 'attacks'" in res.output


def test_shape_mismatch_names_the_arch_kwargs_that_fit(tmp_path):
    from robaudit.models.nets.small_cnn import small_cnn

    torch.save(small_cnn(width=8, hidden=64).state_dict(), tmp_path / "sd.pt")
    res = runner.invoke(
        app, ["scan", str(tmp_path / "sd.pt"), "--arch", "small-cnn", "-d", "demo", "--n", "4", "--checks", "clean"]
    )
    assert res.exit_code == 3 and "--arch-kwargs width=8,hidden=64" in " ".join(res.output.split()), res.output
    res = runner.invoke(
        app,
        [
            "scan",
            str(tmp_path / "sd.pt"),
            "--arch",
            "small-cnn",
            "--arch-kwargs",
            "width=8,hidden=64",
            "-d",
            "demo",
            "--n",
            "4",
            "--checks",
            "clean",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    odd = small_cnn(width=8).state_dict()
    odd["fc2.weight"] = torch.zeros(10, 7)  # no integer argument of small-cnn makes this fit
    torch.save(odd, tmp_path / "odd.pt")
    res = runner.invoke(app, ["scan", str(tmp_path / "odd.pt"), "--arch", "small-cnn", "-d", "demo", "--n", "4"])
    assert res.exit_code == 3 and "robaudit list architectures -v" in " ".join(res.output.split()), res.output


def test_cli_startup_and_plugin_listing_import_no_torch():
    """`robaudit --help`, `version` and `plugins` stay fast: torch loads only when work needs it."""
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from robaudit.cli.main import app; "
        "r = CliRunner().invoke(app, ['plugins']); assert r.exit_code == 0, r.output; "
        "r = CliRunner().invoke(app, ['version']); assert r.exit_code == 0, r.output; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
