"""robaudit harden: penalties (graph, gradient path, finite differences, per-sample), resume,
metadata round trip, refusal of frozen graphs, and the CLI on tiny data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robaudit.cli.main import app
from robaudit.errors import InputError, UsageError
from robaudit.geometry.margin import cross_entropy
from robaudit.harden import DEFAULT_LR, HARDENERS, HardenInterrupted, harden
from robaudit.harden.adversarial import PGDAT, Combined
from robaudit.harden.checkpointing import ckpt_path_for
from robaudit.harden.regularizers import (
    CEGrad,
    Cure,
    JacobianReg,
    StepContext,
    build_hardener,
    has_mode_dependent_layers,
)
from robaudit.models import load_model, save_model
from robaudit.threat import Norm, ThreatModel

runner = CliRunner()
THREAT = ThreatModel(Norm.LINF, 0.1)


# --- tiny models and data ------------------------------------------------------------------------


class SmoothNet(nn.Module):
    """conv 3×3 (3) → softplus → avgpool 4 → linear (4): smooth, so double backprop is well defined."""

    def __init__(self, act: nn.Module | None = None, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.act = act or nn.Softplus()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(3 * 16, classes)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


class ReluNet(nn.Module):
    def __init__(self, classes: int = 4, bn: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(4 * 16, classes)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _batch(n=16, classes=4, size=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _ctx(progress=10.0, gen_seed=0, separate=False):
    return StepContext(
        progress=progress, generator=torch.Generator().manual_seed(gen_seed), separate_eval=separate, threat=THREAT
    )


def _hardeners():
    return {
        "cure": Cure(gamma=1.0, h=0.5, h_ramp_epochs=0),
        "jacobian-l1": JacobianReg(reg_weight=0.1, reg_norm="l1"),
        "jacobian-l2": JacobianReg(reg_weight=0.1, reg_norm="l2"),
        "jacobian-proj": JacobianReg(reg_weight=0.1, reg_norm="l2", projections=2),
        "ce-grad": CEGrad(reg_weight=1.0),
    }


def _zero(h):
    """The same hardener with its penalty weight set to 0 (CE only)."""
    if isinstance(h, Cure):
        return Cure(gamma=0.0, h=h.h, h_ramp_epochs=h.h_ramp_epochs)
    if isinstance(h, JacobianReg):
        return JacobianReg(reg_weight=0.0, reg_norm=h.reg_norm, projections=h.projections)
    return CEGrad(reg_weight=0.0)


# --- registry and options --------------------------------------------------------------------------


def test_registry_and_option_mapping():
    assert set(HARDENERS.names()) >= {"cure", "jacobian", "ce-grad", "pgd-at"}
    h = build_hardener("cure", {"gamma": 2.0, "h": None, "h_ramp_epochs": None, "reg_weight": None})
    assert isinstance(h, Cure) and h.gamma == 2.0
    with pytest.raises(UsageError, match="--gamma does not apply"):
        build_hardener("jacobian", {"gamma": 1.0})
    with pytest.raises(UsageError, match="reg-norm l2"):
        build_hardener("jacobian", {"projections": 3, "reg_norm": "l1"})
    with pytest.raises(UsageError, match="unknown hardener"):
        build_hardener("curee", {})
    combo = build_hardener("jacobian", {"reg_weight": 0.1}, combine="pgd-at")
    assert isinstance(combo, Combined) and combo.name == "jacobian+pgd-at"
    with pytest.raises(UsageError):
        build_hardener("pgd-at", {}, combine="pgd-at")
    assert Cure(h=2.0, h_ramp_epochs=2).h_at(0.5) == pytest.approx(0.5)
    assert Cure(h=2.0, h_ramp_epochs=2).h_at(3) == 2.0
    assert has_mode_dependent_layers(ReluNet(bn=True)) and not has_mode_dependent_layers(ReluNet())


# --- penalties: graph, gradient path to the first conv, lowering what they penalize --------------


@pytest.mark.parametrize("name", ["cure", "jacobian-l1", "jacobian-l2", "jacobian-proj", "ce-grad"])
def test_penalty_has_graph_and_reaches_first_conv(name):
    torch.manual_seed(0)
    model = ReluNet().train()
    x, y = _batch()
    hard = _hardeners()[name]
    out = hard.loss(model, x, y, _ctx())
    assert out.loss.grad_fn is not None and out.penalty > 0
    (g_full,) = torch.autograd.grad(out.loss, model.conv.weight)
    (g_ce,) = torch.autograd.grad(_zero(hard).loss(model, x, y, _ctx()).loss, model.conv.weight)
    assert (g_full - g_ce).abs().max() > 1e-6  # the penalty itself trains the first conv
    model.zero_grad()
    hard.loss(model, x, y, _ctx()).loss.backward()
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0


def test_pgd_at_step_reaches_first_conv_and_leaves_mode():
    torch.manual_seed(0)
    model = ReluNet(bn=True).train()
    x, y = _batch()
    out = PGDAT(steps=3).loss(model, x, y, _ctx())
    assert model.training and out.loss.grad_fn is not None
    out.loss.backward()
    assert model.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["cure", "jacobian-l1", "jacobian-l2", "ce-grad", "pgd-at"])
def test_training_lowers_the_penalized_quantity(name):
    torch.manual_seed(1)
    model = ReluNet()
    x, y = _batch(n=32, seed=1)
    hard = {"pgd-at": PGDAT(steps=5), **_hardeners()}[name]
    if name != "pgd-at":
        # weights large enough for the penalty to dominate the CE of this tiny random net
        strong = {"cure": {"gamma": 1000.0}, "ce-grad": {"reg_weight": 1000.0}}.get(name, {"reg_weight": 5.0})
        hard = type(hard)(**{**hard.params(), **strong})

    def quantity():
        model.eval()
        if name == "pgd-at":  # the robust (adversarial) loss, with a fixed attack seed
            ctx = _ctx(gen_seed=123)
            from robaudit.attacks.pgd import PGD

            adv = PGD(steps=10).run(model, x, y, THREAT, ctx.generator).x_adv
            with torch.no_grad():
                return float(cross_entropy(model(adv), y).mean())
        return float(hard.measure(model, x, y, THREAT).mean())

    before = quantity()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        model.train()
        opt.zero_grad()
        hard.loss(model, x, y, StepContext(10.0, gen, False, THREAT)).loss.backward()
        opt.step()
    after = quantity()
    # pgd-at minimizes a min-max (robust CE on random labels): a smaller but clear drop
    assert after < (0.9 if name == "pgd-at" else 0.7) * before, (name, before, after)


# --- exactness: finite differences in float64, per-sample penalties ------------------------------


def _penalty_fn(hard, model, x, y):
    ctx = _ctx()
    return lambda: hard.loss(model, x, y, ctx).loss - _zero(hard).loss(model, x, y, ctx).loss


@pytest.mark.parametrize(
    "name,act", [("cure", nn.Softplus()), ("jacobian-l2", nn.Tanh()), ("jacobian-l1", nn.Softplus()), ("ce-grad", nn.Tanh())]
)
def test_double_backprop_matches_finite_differences_float64(name, act):
    torch.manual_seed(0)
    model = SmoothNet(act).double().eval()
    x, y = _batch(n=6, dtype=torch.float64)
    hard = _hardeners()[name]
    pen = _penalty_fn(hard, model, x, y)
    for param in (model.conv.weight, model.fc.weight):
        (analytic,) = torch.autograd.grad(pen(), param)
        flat = param.data.view(-1)
        for i in (0, 3, flat.numel() - 1):
            old = float(flat[i])
            eps = 1e-6
            flat[i] = old + eps
            up = pen().item()
            flat[i] = old - eps
            down = pen().item()
            flat[i] = old
            fd = (up - down) / (2 * eps)
            assert analytic.view(-1)[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), (name, i)


@pytest.mark.parametrize("name", ["cure", "jacobian-l1", "ce-grad"])
def test_penalty_is_per_sample_mean_without_1_over_B(name):
    torch.manual_seed(0)
    model = SmoothNet().double().eval()
    x, y = _batch(n=5, dtype=torch.float64)
    hard = _hardeners()[name]
    whole = hard.loss(model, x, y, _ctx()).penalty
    single = [hard.loss(model, x[i : i + 1], y[i : i + 1], _ctx()).penalty for i in range(5)]
    assert whole == pytest.approx(sum(single) / 5, rel=1e-9)


def test_batchnorm_regularizer_passes_in_eval_mode():
    torch.manual_seed(0)
    model = ReluNet(bn=True).train()
    x, y = _batch()
    before = model.bn.running_mean.clone()
    out = Cure(h=0.5, h_ramp_epochs=0).loss(model, x, y, _ctx(separate=True))
    assert model.training
    # exactly one train-mode pass (the clean one) updated the running statistics
    ref = ReluNet(bn=True).train()
    ref.load_state_dict({k: v for k, v in model.state_dict().items()})
    ref.bn.running_mean.copy_(before)
    ref.bn.num_batches_tracked.zero_()
    ref(x)
    assert torch.allclose(ref.bn.running_mean, model.bn.running_mean)
    assert int(model.bn.num_batches_tracked) == 1
    out.loss.backward()
    assert model.bn.weight.grad.abs().sum() > 0


# --- end to end on tiny data (API) -------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path):
    """A tiny small-cnn parent (safetensors + metadata) and a 96-image 28×28 npz dataset."""
    from robaudit.models import build_architecture

    torch.manual_seed(0)
    net = build_architecture("small-cnn", num_classes=10, in_channels=1, kwargs={"width": 2, "hidden": 8}, input_size=28)
    parent = tmp_path / "parent.safetensors"
    save_model(
        parent,
        net,
        arch="small-cnn",
        arch_kwargs={"width": 2, "hidden": 8},
        num_classes=10,
        input_shape=(1, 28, 28),
        mean=(0.25,),
        std=(0.5,),
        class_names=[f"c{i}" for i in range(10)],
    )
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(
        data,
        x=rng.integers(0, 256, (96, 28, 28), dtype=np.uint8),
        y=rng.integers(0, 10, 96),
        class_names=np.array([f"c{i}" for i in range(10)]),
    )
    return parent, data


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _run(parent, data, out, **kw):
    base = dict(method="cure", epochs=2, batch_size=32, eval_n=16, device="cpu", seed=3, scan=False, h=1.0)
    base.update(kw)
    return harden(parent, str(data), out, **base)


class StopAt:
    """A reporter that presses Ctrl-C right after epoch ``stop_epoch``'s checkpoint is written."""

    def __init__(self, stop_epoch):
        self.stop = stop_epoch

    def start(self, info):
        pass

    def step(self, *a):
        pass

    def epoch(self, row):
        if row["epoch"] == self.stop:
            raise KeyboardInterrupt

    def end(self):
        pass


def test_resume_after_one_epoch_is_bit_identical(tiny, tmp_path):
    parent, data = tiny
    straight = tmp_path / "straight.safetensors"
    _run(parent, data, straight)
    resumed = tmp_path / "resumed.safetensors"
    with pytest.raises(HardenInterrupted) as info:
        _run(parent, data, resumed, reporter=StopAt(1))
    assert info.value.saved and ckpt_path_for(resumed).exists() and not resumed.exists()
    with pytest.raises(UsageError, match="--resume"):  # a stale checkpoint is never silently overwritten
        _run(parent, data, resumed)
    with pytest.raises(UsageError, match="other settings"):
        _run(parent, data, resumed, resume=True, lr=3e-4)
    result = _run(parent, data, resumed, resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], _weights(parent)[k]) for k in a)  # it did train
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    assert not ckpt_path_for(resumed).exists()


def test_resume_mid_epoch_with_attack_randomness_is_bit_identical(tiny, tmp_path):
    parent, data = tiny
    kw = dict(method="jacobian", combine="pgd-at", pgd_steps=2, h=None, reg_weight=0.01)
    straight = tmp_path / "straight.safetensors"
    _run(parent, data, straight, **kw)
    resumed = tmp_path / "resumed.safetensors"

    def stop(epoch, step):
        if (epoch, step) == (1, 1):
            raise KeyboardInterrupt

    with pytest.raises(HardenInterrupted) as info:
        _run(parent, data, resumed, on_step=stop, **kw)
    assert (info.value.epoch, info.value.step) == (1, 1)
    _run(parent, data, resumed, resume=True, **kw)
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_schedule_cycles_per_epoch_whatever_the_epoch_count():
    from robaudit.harden.schedule import LRSchedule

    s = LRSchedule(lr=1e-3, hold=0.5, final=0.01, decay=0.5)
    steps = 10
    epoch1 = [s.lr_at(t, steps) for t in range(steps)]
    assert epoch1[0] == epoch1[4] == 1e-3 and epoch1[-1] == pytest.approx(1e-5)  # hold, then down to lr·final
    assert all(a >= b for a, b in zip(epoch1, epoch1[1:]))  # never rises within an epoch
    epoch2 = [s.lr_at(steps + t, steps) for t in range(steps)]
    assert epoch2[0] == pytest.approx(5e-4) and epoch2[-1] == pytest.approx(1e-5)  # a lower cycle
    with pytest.raises(UsageError):
        LRSchedule(hold=1.0)


def test_more_epochs_never_change_the_first_ones(tiny, tmp_path):
    """An epoch's schedule does not depend on --epochs: the first epoch of a 2-epoch run is a
    1-epoch run (bit-identical weights on CPU), so asking for more epochs only adds cycles."""
    parent, data = tiny
    one = tmp_path / "one.safetensors"
    r1 = _run(parent, data, one, epochs=1)
    two = tmp_path / "two.safetensors"
    after_first: dict = {}

    def snapshot(epoch, step):  # first step of epoch 2: the checkpoint holds the end of epoch 1
        if (epoch, step) == (1, 1):
            after_first.update(torch.load(ckpt_path_for(two), weights_only=True)["model"])

    r2 = _run(parent, data, two, epochs=2, on_step=snapshot)
    a = _weights(one)
    assert after_first and all(torch.equal(a[k], after_first[k]) for k in a)
    assert r1.history[1] == {**r2.history[1], "seconds": r1.history[1]["seconds"]}
    assert not all(torch.equal(a[k], _weights(two)[k]) for k in a)  # the second epoch trained
    # the history's lr is each epoch's peak (both epochs anneal to the same floor, lr · final)
    assert [row["lr"] for row in r2.history[1:]] == pytest.approx([DEFAULT_LR, DEFAULT_LR * 0.5])


def test_metadata_round_trip(tiny, tmp_path):
    parent, data = tiny
    out = tmp_path / "hardened.safetensors"
    result = _run(parent, data, out, method="ce-grad", h=None, reg_weight=0.5, epochs=1)
    loaded = load_model(str(out))  # no arch flags
    info = loaded.info
    assert info.arch == "small-cnn" and info.arch_kwargs == {"width": 2, "hidden": 8}
    assert info.num_classes == 10 and info.input_shape == (1, 28, 28)
    assert info.mean == (0.25,) and info.std == (0.5,)
    meta = info.metadata
    assert json.loads(meta["robaudit.class_names"]) == [f"c{i}" for i in range(10)]
    assert meta["robaudit.harden.method"] == "ce-grad" and meta["robaudit.harden.epochs"] == "1"
    hyper = json.loads(meta["robaudit.harden.hyperparameters"])
    assert hyper["reg_weight"] == 0.5 and hyper["lr"] == DEFAULT_LR and hyper["seed"] == 3
    assert meta["robaudit.harden.parent_sha256"] == load_model(str(parent)).info.sha256
    assert result.sha256 == info.sha256


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_frozen_graphs_are_refused(tiny, tmp_path):
    parent, data = tiny
    net = load_model(str(parent)).model.inner
    scripted = tmp_path / "scripted.pt"
    torch.jit.trace(net, torch.rand(2, 1, 28, 28)).save(str(scripted))
    with pytest.raises(InputError, match="frozen graph"):
        _run(scripted, data, tmp_path / "o.safetensors")


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_end_to_end_and_scan_without_flags(tiny, tmp_path):
    parent, data = tiny
    out = tmp_path / "h.safetensors"
    js = tmp_path / "h.json"
    res = runner.invoke(
        app,
        [
            "harden",
            str(parent),
            "--dataset",
            str(data),
            "--out",
            str(out),
            "--method",
            "jacobian",
            "--epochs",
            "1",
            "--batch-size",
            "48",
            "--eval-n",
            "16",
            "--device",
            "cpu",
            "--json",
            str(js),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "before → after" in res.output and "clean.accuracy" in res.output and "‖∂L/∂x‖" in res.output
    summary = json.loads(js.read_text())
    assert summary["method"] == "jacobian" and len(summary["history"]) == 2 and summary["comparison"]
    res = runner.invoke(app, ["scan", str(out), "--dataset", str(data), "--n", "16", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output


def test_cli_usage_errors(tiny, tmp_path):
    parent, data = tiny
    base = ["harden", str(parent), "--dataset", str(data), "--out", str(tmp_path / "o.safetensors"), "--device", "cpu"]
    assert runner.invoke(app, base + ["--method", "jacobian", "--gamma", "2"]).exit_code == 2
    assert runner.invoke(app, base + ["--method", "nope"]).exit_code == 2
    assert runner.invoke(app, base + ["--resume"]).exit_code == 2  # nothing to resume


def test_cli_ctrl_c_saves_and_says_how_to_resume(tiny, tmp_path, monkeypatch):
    parent, data = tiny
    out = tmp_path / "o.safetensors"
    calls = {"n": 0}
    original = CEGrad.loss

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(CEGrad, "loss", flaky)
    args = [
        "harden",
        str(parent),
        "--dataset",
        str(data),
        "--out",
        str(out),
        "--method",
        "ce-grad",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--eval-n",
        "8",
        "--device",
        "cpu",
        "--no-scan",
        "--quiet",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 130, res.output
    assert "--resume" in res.output and ckpt_path_for(out).exists()
    res = runner.invoke(app, args + ["--resume"])
    assert res.exit_code == 0, res.output
    assert out.exists() and not ckpt_path_for(out).exists()


@pytest.mark.slow
def test_cli_on_real_fashion_mnist_demo_model(fashion_available, tmp_path):
    from robaudit.cli.demo import DEMO_MODEL

    out = tmp_path / "demo_cure.safetensors"
    res = runner.invoke(
        app,
        [
            "harden",
            str(DEMO_MODEL),
            "--dataset",
            "fashion-mnist",
            "--out",
            str(out),
            "--method",
            "cure",
            "--train-n",
            "256",
            "--epochs",
            "1",
            "--eval-n",
            "40",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "robust_acc.pgd" in res.output
    loaded = load_model(str(out))
    assert loaded.info.metadata["robaudit.harden.method"] == "cure"
    assert math.isfinite(float(next(iter(_weights(out).values())).sum()))
