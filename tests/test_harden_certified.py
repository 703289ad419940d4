"""Certified training (`harden --method ibp|crown-ibp`): the loss against a hand-computed interval
bound and a hand-computed CROWN-IBP bound, the schedule, BatchNorm's clean-batch statistics,
resume, from-scratch training (seeded), the refusal of a model the bounds do not support, and
certified accuracy after training against natural training on real data."""

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
from robaudit.harden import HardenInterrupted, harden
from robaudit.harden.certified import CrownIBPTraining, IBPTraining, verified_ce
from robaudit.harden.checkpointing import ckpt_path_for
from robaudit.harden.regularizers import StepContext, build_hardener
from robaudit.models import load_model, save_model
from robaudit.threat import Norm, ThreatModel

runner = CliRunner()
TINY_ARCH = {"width": 2, "hidden": 8}


# --- the loss against hand-computed bounds --------------------------------------------------------


def _two_layer() -> nn.Module:
    """2 inputs → 3 ReLUs → 3 logits, with hand-picked weights."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.5]]))
        net[0].bias.copy_(torch.tensor([0.35, -1.25, -0.02]))  # x[0]: all three ReLUs unstable
        net[2].weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [-0.5, 1.0, 0.5], [0.2, -1.0, 1.0]]))
        net[2].bias.copy_(torch.tensor([0.0, 0.1, -0.1]))
    return net


X = [[0.3, 0.6], [0.05, 0.95], [0.9, 0.1]]
Y = [0, 2, 1]


def _hand_bounds(net: nn.Module, x, y, eps):
    """Per sample, by plain interval arithmetic (Python floats): the IBP lower bound of every margin
    z_y − z_j (last layer elided, Gowal et al. Eq. 6–7), the CROWN-IBP lower bound (CROWN's
    relaxation on the IBP pre-activation boxes), the clean CE, and the number of unstable ReLUs."""
    W1, b1 = net[0].weight.tolist(), net[0].bias.tolist()
    W2, b2 = net[2].weight.tolist(), net[2].bias.tolist()
    out = []
    for xs, label in zip(x, y):
        lo = [max(v - eps, 0.0) for v in xs]
        hi = [min(v + eps, 1.0) for v in xs]
        lb = [b1[k] + sum(w * (lo[i] if w > 0 else hi[i]) for i, w in enumerate(W1[k])) for k in range(3)]
        u = [b1[k] + sum(w * (hi[i] if w > 0 else lo[i]) for i, w in enumerate(W1[k])) for k in range(3)]
        unstable = sum(1 for k in range(3) if lb[k] < 0 < u[k])
        ibp, crown = [], []
        for j in range(3):
            if j == label:
                continue
            a = [W2[label][k] - W2[j][k] for k in range(3)]
            const = b2[label] - b2[j]
            # IBP: the elided last layer on the box of the ReLU outputs
            ibp.append(const + sum(a[k] * (max(lb[k], 0.0) if a[k] > 0 else max(u[k], 0.0)) for k in range(3)))
            # CROWN-IBP: each ReLU replaced by a line below (a_k ≥ 0) or the chord above (a_k < 0)
            slope, c = [], const
            for k in range(3):
                if lb[k] >= 0:
                    s = 1.0
                elif u[k] <= 0:
                    s = 0.0
                elif a[k] >= 0:
                    s = 1.0 if u[k] >= -lb[k] else 0.0
                else:
                    s = u[k] / (u[k] - lb[k])
                    c += a[k] * (-s * lb[k])
                slope.append(s)
            g = [sum(a[k] * slope[k] * W1[k][i] for k in range(3)) for i in range(2)]
            c += sum(a[k] * slope[k] * b1[k] for k in range(3))
            crown.append(c + sum(g[i] * (lo[i] if g[i] > 0 else hi[i]) for i in range(2)))
        z = [sum(W2[o][k] * max(b1[k] + W1[k][0] * xs[0] + W1[k][1] * xs[1], 0.0) for k in range(3)) + b2[o] for o in range(3)]
        ce = math.log(sum(math.exp(v) for v in z)) - z[label]
        out.append((ibp, crown, ce, unstable))
    return out


def _vce(lower):
    return math.log(1.0 + sum(math.exp(-v) for v in lower))


def _ctx(progress, eps=0.1):
    return StepContext(progress=progress, generator=None, separate_eval=False, threat=ThreatModel(Norm.LINF, eps))


def test_ibp_loss_equals_the_hand_computed_interval_bound():
    net = _two_layer()
    x, y = torch.tensor(X), torch.tensor(Y)
    hard = IBPTraining(warmup_epochs=1.0, ramp_epochs=2.0, kappa_end=0.25)
    hard.prepare(net, (2,))
    out = hard.loss(net, x, y, _ctx(progress=5.0))  # after the ramp: ε = 0.1, κ = 0.25
    hand = _hand_bounds(net, X, Y, 0.1)
    assert sum(h[3] for h in hand) >= 2  # the case exercises unstable ReLUs
    ce = sum(h[2] for h in hand) / 3
    vce = sum(_vce(h[0]) for h in hand) / 3
    assert out.penalty == pytest.approx(vce, rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(0.25 * ce + 0.75 * vce, rel=1e-5)
    assert out.ce == pytest.approx(ce, rel=1e-5)
    out.loss.backward()  # the gradient reaches the first layer through the bounds
    assert float(net[0].weight.grad.abs().sum()) > 0
    # in the warm-up (ε = 0) the loss is the clean CE, and so is the verified CE (the bound is exact at ε = 0)
    warm = hard.loss(net, x, y, _ctx(progress=0.5))
    assert float(warm.loss.detach()) == pytest.approx(ce, rel=1e-5) and warm.penalty == pytest.approx(ce, rel=1e-5)
    zero = torch.tensor([[_hand_bounds(net, X, Y, 0.0)[i][0][k] for k in range(2)] for i in range(3)])
    assert float(verified_ce(zero).mean()) == pytest.approx(ce, rel=1e-5)


def test_crown_ibp_loss_mixes_hand_computed_crown_ibp_and_ibp_bounds_by_beta():
    net = _two_layer()
    x, y = torch.tensor(X), torch.tensor(Y)
    hard = CrownIBPTraining(warmup_epochs=1.0, ramp_epochs=2.0, kappa_end=0.0)
    hard.prepare(net, (2,))
    out = hard.loss(net, x, y, _ctx(progress=2.0))  # half-way: ε = 0.05, κ = 0.5, β = 0.5
    hand = _hand_bounds(net, X, Y, 0.05)
    assert sum(h[3] for h in hand) >= 1
    assert max(abs(c - i) for h in hand for c, i in zip(h[1], h[0])) > 0.01  # the two bounds differ here
    mixed = [[0.5 * c + 0.5 * i for c, i in zip(h[1], h[0])] for h in hand]
    vce = sum(_vce(m) for m in mixed) / 3
    ce = sum(h[2] for h in hand) / 3
    assert out.penalty == pytest.approx(vce, rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(0.5 * ce + 0.5 * vce, rel=1e-5)
    assert hard.status(2.0, ThreatModel(Norm.LINF, 0.1)) == pytest.approx({"eps": 0.05, "kappa": 0.5, "beta": 0.5})
    # past the ramp β = 0: the IBP bound alone (the CROWN pass is skipped)
    late = hard.loss(net, x, y, _ctx(progress=4.0))
    full = _hand_bounds(net, X, Y, 0.1)
    assert late.penalty == pytest.approx(sum(_vce(h[0]) for h in full) / 3, rel=1e-5)


def test_measure_is_the_verified_error_and_never_certifies_a_misclassified_sample():
    net = _two_layer()
    x, y = torch.tensor(X), torch.tensor(Y)
    threat = ThreatModel(Norm.LINF, 0.05)
    for hard in (IBPTraining(), CrownIBPTraining()):
        hard.prepare(net, (2,))
        err = hard.measure(net, x, y, threat)
        hand = _hand_bounds(net, X, Y, 0.05)
        if hard.name == "crown-ibp":  # as the certify check: per margin the larger of the two bounds
            lows = [min(max(a, b) for a, b in zip(h[0], h[1])) for h in hand]
        else:
            lows = [min(h[0]) for h in hand]
        assert err.tolist() == [0.0 if v > 0 else 1.0 for v in lows]
        wrong = net(x).argmax(1) != y
        assert bool((err[wrong] == 1).all())


def test_options_and_schedule():
    h = build_hardener("ibp", {"warmup_epochs": 0.5, "ramp_epochs": 2.0, "kappa_end": 0.0, "gamma": None})
    assert isinstance(h, IBPTraining) and h.schedule.at(0.25) == (0.0, 1.0, 1.0)
    assert h.schedule.at(1.5) == pytest.approx((0.5, 0.5, 0.5)) and h.schedule.at(9) == (1.0, 0.0, 0.0)
    with pytest.raises(UsageError, match="--gamma does not apply to --method ibp"):
        build_hardener("ibp", {"gamma": 1.0})
    with pytest.raises(UsageError, match="--ramp-epochs does not apply to --method cure"):
        build_hardener("cure", {"ramp_epochs": 1.0})
    with pytest.raises(UsageError, match="kappa-end"):
        build_hardener("crown-ibp", {"kappa_end": 1.5})
    with pytest.raises(UsageError, match="combine"):
        build_hardener("ibp", {}, combine="pgd-at")


def test_batchnorm_bounds_use_the_clean_batch_statistics():
    """With BatchNorm in train mode the bounds use the clean batch's mean and variance (CROWN-IBP's
    handling): at ε → 0 the verified CE equals the train-mode CE; the running statistics are
    updated once per step, from clean data; eval-mode bounds use the running statistics."""
    from robaudit.models import build_architecture

    torch.manual_seed(0)
    net = build_architecture("cert-cnn", num_classes=4, in_channels=1, kwargs={**TINY_ARCH, "bn": True}, input_size=8)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    hard = IBPTraining(warmup_epochs=0, ramp_epochs=0, kappa_end=0.5)
    hard.prepare(net, (1, 8, 8))
    net.train()
    bn = net.features[1]
    before = bn.running_mean.clone()
    out = hard.loss(net, x, y, _ctx(progress=1.0, eps=1e-6))
    assert out.penalty == pytest.approx(out.ce, rel=1e-3)  # the bound is centred on the train-mode logits
    assert int(bn.num_batches_tracked) == 1 and not torch.equal(bn.running_mean, before)
    assert isinstance(bn._buffers["running_mean"], torch.Tensor) and not bn.running_mean.requires_grad  # restored
    out.loss.backward()
    assert float(bn.weight.grad.abs().sum()) > 0


# --- end to end on tiny data -------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path):
    """A tiny cert-cnn parent (safetensors + metadata) and a 64-image 8×8 npz dataset with 4 classes."""
    from robaudit.models import build_architecture

    torch.manual_seed(0)
    net = build_architecture("cert-cnn", num_classes=4, in_channels=1, kwargs=TINY_ARCH, input_size=8)
    parent = tmp_path / "parent.safetensors"
    save_model(
        parent,
        net,
        arch="cert-cnn",
        arch_kwargs=TINY_ARCH,
        num_classes=4,
        input_shape=(1, 8, 8),
        mean=(0.5,),
        std=(0.5,),
        class_names=[f"c{i}" for i in range(4)],
    )
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(
        data,
        x=rng.integers(0, 256, (64, 8, 8), dtype=np.uint8),
        y=rng.integers(0, 4, 64),
        class_names=np.array([f"c{i}" for i in range(4)]),
    )
    return parent, data


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _run(parent, data, out, **kw):
    base = dict(
        method="crown-ibp",
        epochs=2,
        batch_size=16,
        eval_n=16,
        device="cpu",
        seed=3,
        scan=False,
        warmup_epochs=0.25,
        ramp_epochs=1.0,
        eps=0.1,
    )
    base.update(kw)
    return harden(parent, str(data), out, **base)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_resume_mid_ramp_is_bit_identical(tiny, tmp_path, method):
    parent, data = tiny
    straight = tmp_path / "straight.safetensors"
    result = _run(parent, data, straight, method=method)
    resumed = tmp_path / "resumed.safetensors"

    def stop(epoch, step):  # mid-ramp, mid-epoch (crown-ibp: β > 0 there)
        if (epoch, step) == (0, 3):
            raise KeyboardInterrupt

    with pytest.raises(HardenInterrupted):
        _run(parent, data, resumed, method=method, on_step=stop)
    with pytest.raises(UsageError, match="other settings"):
        _run(parent, data, resumed, method=method, resume=True, ramp_epochs=2.0)
    _run(parent, data, resumed, method=method, resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], _weights(parent)[k]) for k in a)
    last = result.history[-1]
    assert last["eps"] == pytest.approx(0.1) and last["kappa"] == pytest.approx(0.5) and math.isfinite(last["penalty"])
    assert result.penalty_name == "verified CE"


def test_from_scratch_is_seeded_and_writes_scannable_metadata(tiny, tmp_path):
    _, data = tiny
    kw = dict(arch="cert-cnn", arch_kwargs=TINY_ARCH, method="ibp", epochs=1)
    a, b, c = (tmp_path / f"{n}.safetensors" for n in "abc")
    _run(None, data, a, **kw)
    _run(None, data, b, **kw)
    _run(None, data, c, **{**kw, "seed": 4})
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed: same initialisation and training
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    info = load_model(str(a)).info  # no flags: architecture and classes from the metadata
    assert info.arch == "cert-cnn" and info.arch_kwargs == TINY_ARCH and info.num_classes == 4
    meta = info.metadata
    assert meta["robaudit.harden.init"] == "random (seed 3)" and "robaudit.harden.parent_sha256" not in meta
    assert json.loads(meta["robaudit.harden.hyperparameters"])["ramp_epochs"] == 1.0
    with pytest.raises(UsageError, match="--arch NAME"):
        _run(None, data, tmp_path / "d.safetensors", method="ibp")


def test_cli_from_scratch_prints_eps_and_the_certified_bracket(tiny, tmp_path):
    _, data = tiny
    out = tmp_path / "cert.safetensors"
    js = tmp_path / "cert.json"
    res = runner.invoke(
        app,
        [
            "harden",
            "--arch",
            "cert-cnn",
            "--arch-kwargs",
            "width=2,hidden=8",
            "--method",
            "crown-ibp",
            "-d",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--eval-n",
            "16",
            "--warmup-epochs",
            "0",
            "--ramp-epochs",
            "0.5",
            "--device",
            "cpu",
            "--json",
            str(js),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "random init" in res.output and "verified CE" in res.output and "train ε" in res.output
    assert "certified_acc.crown.linf@0.1" in res.output  # the before/after scan ran the certify check
    hint = " ".join(res.output.split("scan it with:")[1].split())
    assert hint.startswith(f"robaudit scan {out} --dataset {data}") and "--arch" not in hint  # read from metadata
    summary = json.loads(js.read_text())
    metrics = {r["metric"] for r in summary["comparison"]}
    assert "certified_acc.crown.linf@0.1" in metrics and summary["history"][1]["eps"] == pytest.approx(0.1)
    res = runner.invoke(
        app, ["scan", str(out), "--dataset", str(data), "--n", "16", "--device", "cpu", "--quiet", "--checks", "clean,certify"]
    )
    assert res.exit_code == 0, res.output


def test_unsupported_model_is_refused_in_one_line_before_training(tiny, tmp_path):
    _, data = tiny
    src = tmp_path / "softnet.py"
    src.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class SoftNet(nn.Module):\n"
        "    def __init__(self, num_classes=4, in_channels=1):\n"
        "        super().__init__()\n"
        "        self.fc1 = nn.Linear(64 * in_channels, 8)\n"
        "        self.act = nn.Softplus()\n"
        "        self.fc2 = nn.Linear(8, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc2(self.act(self.fc1(x.flatten(1))))\n"
    )
    out = tmp_path / "o.safetensors"
    with pytest.raises(InputError, match=r"--method ibp needs bounds through every layer; .*act \(Softplus\)"):
        _run(None, data, out, arch=f"{src}:SoftNet", method="ibp")
    assert not out.exists() and not ckpt_path_for(out).exists()
    res = runner.invoke(
        app,
        ["harden", "--arch", f"{src}:SoftNet", "--method", "crown-ibp", "-d", str(data), "--out", str(out), "--device", "cpu"],
    )
    assert res.exit_code == 3, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and "Softplus" in errors[0] and "Traceback" not in res.output
    assert "docs/certify.md" in errors[0] and "--arch cert-cnn" in errors[0]  # what to do instead


# --- it works: certified accuracy after certified training vs natural training ------------------------


def test_ibp_training_certifies_what_natural_training_does_not(fashion_available, tmp_path):
    """Same architecture, data, schedule and seed; κ_end = 1 turns the verified term off (natural
    training). On held-out Fashion-MNIST images, CROWN certifies far more of the IBP-trained model."""
    import robaudit

    kw = dict(
        arch="cert-cnn",
        arch_kwargs={"width": 4, "hidden": 32},
        method="ibp",
        train_n=2000,
        epochs=3,
        batch_size=50,
        warmup_epochs=0.5,
        ramp_epochs=1.5,
        eps=0.05,
        eval_n=50,
        device="cpu",
        seed=0,
        scan=False,
    )
    certified = {}
    for name, kappa in (("natural", 1.0), ("ibp", 0.5)):
        out = tmp_path / f"{name}.safetensors"
        harden(None, "fashion-mnist", out, kappa_end=kappa, **kw)
        m = robaudit.scan(str(out), "fashion-mnist", eps="0.05", checks=("clean", "certify"), n=200, device="cpu").metrics()
        certified[name] = (m["certified_acc.crown.linf@0.05"], m["clean.accuracy"])
    assert certified["ibp"][1] > 0.5 and certified["natural"][1] > 0.5, certified  # both learned the task
    assert certified["ibp"][0] > certified["natural"][0] + 0.15, certified  # measured: 45.0 % vs 17.5 %


# --- data-parallel (torchrun's environment, gloo, 2 CPU processes) --------------------------------------

DDP_RUN = dict(
    epochs=2, eval_n=8, device="cpu", seed=3, scan=False, lr=1e-3, eps=0.1, warmup_epochs=0.25, ramp_epochs=1.0, train_n=37
)  # global batches of 16, 16, 5: rank shares 3 + 2 in the last
DDP_ATOL = 1e-5  # float32 rounding of a differently ordered sum, after Adam's lr-sized steps (test_harden_ddp.py)


def _ddp_rank(rank: int, world: int, jobs: list, data: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
    for port, kwargs in jobs:
        os.environ["MASTER_PORT"] = str(port)
        kwargs = dict(kwargs)
        harden(kwargs.pop("parent"), data, **kwargs)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    import socket

    import torch.multiprocessing as mp

    from robaudit.models import build_architecture

    tmp = tmp_path_factory.mktemp("cert_ddp")
    torch.manual_seed(0)
    net = build_architecture("cert-cnn", num_classes=4, in_channels=1, kwargs=TINY_ARCH, input_size=8)
    parent = tmp / "parent.safetensors"
    save_model(parent, net, arch="cert-cnn", arch_kwargs=TINY_ARCH, num_classes=4, input_shape=(1, 8, 8))
    rng = np.random.default_rng(0)
    data = tmp / "tiny.npz"
    np.savez(data, x=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y=rng.integers(0, 4, 40))
    jobs = [
        {**DDP_RUN, "parent": str(parent), "method": "ibp", "batch_size": 8, "out": str(tmp / "ibp2.safetensors")},
        {
            **DDP_RUN,
            "parent": None,
            "arch": "cert-cnn",
            "arch_kwargs": TINY_ARCH,
            "method": "crown-ibp",
            "batch_size": 8,
            "out": str(tmp / "crown2.safetensors"),
        },
    ]
    socks = [socket.socket() for _ in jobs]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    mp.spawn(_ddp_rank, args=(2, list(zip(ports, jobs)), str(data)), nprocs=2)
    return tmp, jobs, str(data)


def test_two_processes_of_batch_b_equal_one_of_batch_2b(ddp_runs):
    """ibp fine-tuned from a file and crown-ibp from scratch (β > 0 in the first epochs): 2 processes
    × batch 8 train the weights 1 process × batch 16 trains."""
    tmp, jobs, data = ddp_runs
    for job in jobs:
        job = {**job, "batch_size": 16}
        two = job.pop("out")
        one = tmp / ("one-" + two.rsplit("/", 1)[-1])
        parent = job.pop("parent")
        harden(parent, data, one, **job)
        a, b = _weights(one), _weights(two)
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert diff < DDP_ATOL, f"{job['method']}: 2 processes × 8 differ from 1 × 16 by {diff:.2e}"
        if parent is not None:
            start = _weights(parent)
            assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3  # it trained
