"""APGD (CE, DLR, targeted) and Square Attack: invariants, determinism, analytic linear cases,
pass counts, and APGD-CE (100 steps) at least as strong as PGD-20 on a small trained model."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robaudit.attacks.apgd  # noqa: F401  (registers apgd-ce / apgd-dlr / apgd-t until base lists it)
import robaudit.attacks.square as square_module
from robaudit.attacks import ATTACKS
from robaudit.attacks.apgd import checkpoints, dlr_loss, dlr_targeted_loss
from robaudit.attacks.base import lp_norm
from robaudit.errors import UsageError
from robaudit.threat import Norm, ThreatModel

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (as conftest)
NAMES = ["apgd-ce", "apgd-dlr", "apgd-t", "square"]
# small budgets for the structural tests; the defaults are exercised by the analytic tests
FAST = {
    "apgd-ce": dict(n_iter=20),
    "apgd-dlr": dict(n_iter=20),
    "apgd-t": dict(n_iter=10, n_target_classes=3),
    "square": dict(n_queries=150),
}


@pytest.fixture(autouse=True)
def _one_thread():
    """These attacks run thousands of tiny sequential steps; on a shared 2-core runner the second
    intra-op thread only adds synchronisation latency, so run this module single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _linear_case(norm: Norm, k: int, r: float, n: int = 16, shape=(1, 6, 6), seed: int = 0):
    """A k-class linear model on [n, *shape] inputs near 0.5 whose samples all lie at exactly
    distance r (in ``norm``) from the nearest decision boundary.

    For a linear model the minimal perturbation of x is min_{j≠y} L_j/‖w_y − w_j‖_q with
    L_j = z_y − z_j and q the dual norm (ℓ1 for ℓ∞, ℓ2 for ℓ2), as long as the box does not bind.
    Moving x towards its nearest boundary along the optimal direction scales that distance down
    exactly (the other classes' distances, linear along the segment, stay above it), so each
    sample is moved until its distance is r: one ε then tests every sample of the batch.
    """
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(-0.5 * lin.weight.sum(1) + 0.5 * torch.randn(k, generator=g, dtype=torch.float64))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    w, b = lin.weight.detach(), lin.bias.detach()

    def distances(x):
        z = x @ w.T + b
        y = z.argmax(1)
        diff = w[y][:, None, :] - w[None, :, :]  # [n,k,d]: w_y − w_j
        dual = diff.abs().sum(2) if norm is Norm.LINF else diff.norm(dim=2)
        dist = ((z.gather(1, y[:, None]) - z) / dual).scatter(1, y[:, None], float("inf"))
        r_i, j = dist.min(1)
        return y, r_i, diff[torch.arange(x.shape[0]), j]

    x = 0.5 + 0.05 * torch.randn(8 * n, d, generator=g, dtype=torch.float64)
    _, r_i, _ = distances(x)
    x = x[r_i >= r][:n]
    assert x.shape[0] == n
    y, r_i, dj = distances(x)
    u = dj.sign() if norm is Norm.LINF else dj / dj.norm(dim=1, keepdim=True)
    x = x - (r_i - r)[:, None] * u
    y2, r2, _ = distances(x)
    assert torch.equal(y, y2) and torch.allclose(r2, torch.full_like(r2, r))
    assert x.min() > r + 0.05 and x.max() < 1 - r - 0.05, "the box must not bind for the analytic answer"
    return model, x.view(n, *shape), y


def _batch(seed: int = 1, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


# -- registry, defaults, losses ---------------------------------------------------------------


def test_registered_with_the_papers_defaults():
    for name in NAMES:
        cls = ATTACKS.get(name)
        assert cls.name == name and set(cls.norms) == {Norm.LINF, Norm.L2}
        doc = cls.__doc__
        assert ("Croce & Hein" in doc) if name.startswith("apgd") else ("Andriushchenko" in doc)
        assert ">>>" in doc
    p = ATTACKS.get("apgd-ce")().params()
    assert p == dict(n_iter=100, n_restarts=1, rho=0.75, momentum=0.75, initial_step=2.0)
    assert ATTACKS.get("apgd-t")().params()["n_target_classes"] == 9
    assert ATTACKS.get("square")().params() == dict(n_queries=5000, p_init=0.8)


def test_apgd_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == [1]
    assert all(a < b for a, b in zip(checkpoints(37), checkpoints(37)[1:]))


def test_square_p_schedule():
    sq = ATTACKS.get("square")(n_queries=10000, p_init=0.8)
    assert [sq._p(i) for i in (0, 10, 11, 50, 51, 201, 501, 1001, 2001, 4001, 6001, 8001, 9999)] == [
        0.8,
        0.8,
        0.4,
        0.4,
        0.2,
        0.1,
        0.05,
        0.025,
        0.0125,
        0.00625,
        0.003125,
        0.0015625,
        0.0015625,
    ]
    assert ATTACKS.get("square")(n_queries=5000)._p(6) == 0.4  # rescaled: 6/5000 of the budget = 12/10000


def test_dlr_losses():
    z = torch.tensor([[5.0, 3.0, 1.0, 0.0], [0.0, 4.0, 2.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    # row 0: −(5 − 3)/(5 − 1); row 1: −(0 − 4)/(4 − 1)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-0.5, 4 / 3]))
    t = torch.tensor([2, 1])
    # row 0: −(5 − 1)/(5 − (1 + 0)/2); row 1: −(0 − 4)/(4 − (1 + 0)/2)
    assert torch.allclose(dlr_targeted_loss(z, y, t), torch.tensor([-4 / 4.5, 4 / 3.5]))
    # invariant to shifting and positive scaling of the logits
    assert torch.allclose(dlr_loss(3 * z + 7, y), dlr_loss(z, y))


# -- invariants -------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
@pytest.mark.parametrize("name", NAMES)
def test_invariants_ball_box_mode_weights(name, norm, tiny_cnn):
    x, y = _batch()
    eps = 0.1 if norm is Norm.LINF else 0.5
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    out = ATTACKS.get(name)(**FAST[name]).run(tiny_cnn, x, y, ThreatModel(norm, eps), torch.Generator().manual_seed(0))
    assert (lp_norm(out.x_adv - x, norm) <= eps + 1e-6).all()
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert out.x_adv.dtype == torch.float32 and out.x_adv.shape == x.shape
    assert not tiny_cnn.training
    for k, v in tiny_cnn.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in tiny_cnn.parameters())
    assert torch.equal(out.success, tiny_cnn(out.x_adv).argmax(1) != y)
    assert out.success.any(), "random labels on a random net: something must break"


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name, norm, tiny_cnn):
    x, _ = _batch(seed=2)
    y = tiny_cnn(x).argmax(1)  # all correct: every sample goes through the random start and search
    t = ThreatModel(norm, 0.03 if norm is Norm.LINF else 0.2)
    a = ATTACKS.get(name)(**FAST[name]).run(tiny_cnn, x, y, t, torch.Generator().manual_seed(5))
    b = ATTACKS.get(name)(**FAST[name]).run(tiny_cnn, x, y, t, torch.Generator().manual_seed(5))
    c = ATTACKS.get(name)(**FAST[name]).run(tiny_cnn, x, y, t, torch.Generator().manual_seed(6))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert not torch.equal(a.x_adv, c.x_adv), "the generator must drive the randomness"


def test_already_misclassified_inputs_are_returned_unchanged(tiny_cnn):
    x, _ = _batch(seed=3)
    wrong = (tiny_cnn(x).argmax(1) + 1) % 10
    for name in NAMES:
        out = ATTACKS.get(name)(**FAST[name]).run(tiny_cnn, x, wrong, ThreatModel(Norm.LINF, 0.1))
        assert out.success.all() and torch.equal(out.x_adv, x)


def test_a_success_is_kept_even_if_later_iterates_are_correct(tiny_cnn):
    # a huge ℓ∞ step size makes APGD bounce; whatever it does after, a found success stays found
    x, _ = _batch(seed=4, n=12)
    y = tiny_cnn(x).argmax(1)
    t = ThreatModel(Norm.LINF, 0.3)
    out = ATTACKS.get("apgd-ce")(n_iter=15, initial_step=8.0).run(tiny_cnn, x, y, t, torch.Generator().manual_seed(0))
    assert torch.equal(out.success, tiny_cnn(out.x_adv).argmax(1) != y)
    assert out.success.float().mean() > 0.5


# -- analytic linear cases --------------------------------------------------------------------


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
@pytest.mark.parametrize("name,k", [("apgd-ce", 2), ("apgd-dlr", 5), ("apgd-t", 5), ("apgd-t", 4)])
def test_apgd_finds_the_exact_minimal_perturbation_of_a_linear_model(name, k, norm):
    r = 0.004 if norm is Norm.LINF else 0.02
    model, x, y = _linear_case(norm, k=k, r=r)
    above = ATTACKS.get(name)().run(model, x, y, ThreatModel(norm, 1.05 * r), torch.Generator().manual_seed(0))
    below = ATTACKS.get(name)().run(model, x, y, ThreatModel(norm, 0.98 * r), torch.Generator().manual_seed(0))
    assert above.success.all(), f"{name} missed {int((~above.success).sum())} of {len(y)} at 1.05× the minimum"
    assert not below.success.any(), "no perturbation smaller than the exact minimum can succeed"


@pytest.mark.parametrize("norm,factor", [(Norm.LINF, 1.05), (Norm.L2, 2.5)])
def test_square_on_a_linear_model(norm, factor):
    # ℓ∞: the optimum is a vertex of the cube, which the ±ε squares reach. ℓ2: the optimum is a
    # dense direction that localized square bumps only approximate on a 6×6 input, hence the slack.
    r = 0.004 if norm is Norm.LINF else 0.02
    model, x, y = _linear_case(norm, k=5, r=r)
    above = ATTACKS.get("square")().run(model, x, y, ThreatModel(norm, factor * r), torch.Generator().manual_seed(0))
    below = ATTACKS.get("square")(n_queries=200).run(
        model, x, y, ThreatModel(norm, 0.98 * r), torch.Generator().manual_seed(0)
    )
    assert above.success.all()
    assert not below.success.any()


# -- pass counts ------------------------------------------------------------------------------


def test_square_makes_only_forward_passes(tiny_cnn, monkeypatch):
    def no_gradients(*args, **kwargs):
        raise AssertionError("the Square Attack is black-box: it must never compute a gradient")

    monkeypatch.setattr(torch.autograd, "grad", no_gradients)
    monkeypatch.setattr(torch.Tensor, "backward", no_gradients)
    x, _ = _batch(seed=5)
    y = tiny_cnn(x).argmax(1)
    for norm, eps in [(Norm.LINF, 0.05), (Norm.L2, 0.3)]:
        attack = ATTACKS.get("square")(n_queries=150)
        attack.run(tiny_cnn, x, y, ThreatModel(norm, eps), torch.Generator().manual_seed(0))
        assert attack.counter.backward == 0
        # clean check + at most n_queries per sample (initialization included) + the final check
        assert 2 * len(y) < attack.counter.forward <= len(y) * (150 + 2)
    assert not hasattr(square_module, "input_gradient")


@pytest.mark.parametrize("channels", [1, 3])
def test_square_decoded_block_draws_equal_the_per_iteration_draws(channels, monkeypatch):
    """A scan's ℓ∞ Square decodes a block of iterations' corners, signs and resampling flips at
    once (_BlockDraws.linf); the points must be those of the per-iteration path, bit for bit,
    resampled proposals included (a large ε makes them frequent)."""
    from conftest import TinyCNN

    from robaudit.rng import SampleRNG

    torch.manual_seed(0)
    model = TinyCNN(in_channels=channels).eval()
    x = torch.rand(10, channels, 8, 8, generator=torch.Generator().manual_seed(4))
    y = model(x).argmax(1)
    resampled = []
    original = square_module._flips_from_words
    monkeypatch.setattr(square_module, "_flips_from_words", lambda w, c, like: resampled.append(1) or original(w, c, like))

    def run():
        attack = ATTACKS.get("square")(n_queries=200)
        return attack.run(
            model, x, y, ThreatModel(Norm.LINF, 0.04), SampleRNG.for_indices(0, "sq", torch.arange(10))
        ), attack.counter

    (fast, c_fast), used = run(), len(resampled)
    monkeypatch.setattr(square_module._BlockDraws, "_decode", lambda self, k: None)
    init = square_module._BlockDraws.__init__

    def undecoded(self, *a, **k):
        init(self, *a, **k)
        self.decoded = False

    monkeypatch.setattr(square_module._BlockDraws, "__init__", undecoded)
    slow, c_slow = run()
    assert used == 0 and len(resampled) > 0, "the test needs resampled proposals (counted on the per-iteration path)"
    assert torch.equal(fast.x_adv, slow.x_adv) and torch.equal(fast.success, slow.success)
    assert c_fast.forward == c_slow.forward


def test_square_stops_querying_broken_samples(tiny_cnn):
    x, _ = _batch(seed=6)
    y = tiny_cnn(x).argmax(1)
    attack = ATTACKS.get("square")(n_queries=400)
    out = attack.run(tiny_cnn, x, y, ThreatModel(Norm.LINF, 0.3), torch.Generator().manual_seed(0))
    assert out.success.all()
    assert attack.counter.forward < len(y) * 50


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr", "apgd-t"])
def test_apgd_pass_counts(name, tiny_cnn):
    x, _ = _batch(seed=7, n=5)
    y = tiny_cnn(x).argmax(1)
    t = ThreatModel(Norm.LINF, 1e-5)  # too small to break anything: every run goes to the end
    kw = dict(n_iter=10, n_restarts=2) if name != "apgd-t" else dict(n_iter=10, n_restarts=2, n_target_classes=3)
    attack = ATTACKS.get(name)(**kw)
    out = attack.run(tiny_cnn, x, y, t, torch.Generator().manual_seed(0))
    assert not out.success.any()
    runs = 2 * (3 if name == "apgd-t" else 1)
    # per run: the gradient at the random start, then one forward + one backward per step
    assert attack.counter.backward == len(y) * runs * (10 + 1)
    assert attack.counter.forward == attack.counter.backward + 2 * len(y)  # + clean and final checks
    default = ATTACKS.get("apgd-ce")()
    default.run(tiny_cnn, x, y, t, torch.Generator().manual_seed(0))
    assert default.counter.backward == len(y) * 101


def test_apgd_t_caps_targets_at_the_number_of_other_classes():
    model, x, y = _linear_case(Norm.LINF, k=4, r=0.004, n=4)
    attack = ATTACKS.get("apgd-t")(n_iter=5)  # 9 targets asked, 3 exist
    attack.run(model, x, y, ThreatModel(Norm.LINF, 0.001))
    assert attack.counter.backward == len(y) * 3 * 6


# -- usage errors -----------------------------------------------------------------------------


def test_usage_errors():
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    two = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    t = ThreatModel(Norm.LINF, 0.1)
    with pytest.raises(UsageError, match="at least 4 classes"):
        ATTACKS.get("apgd-t")(n_iter=2).run(three, x, y, t)
    with pytest.raises(UsageError, match="at least 3 classes"):
        ATTACKS.get("apgd-dlr")(n_iter=2).run(two, x, y, t)
    assert ATTACKS.get("apgd-ce")(n_iter=2).run(two, x, y, t).x_adv.shape == x.shape
    with pytest.raises(UsageError, match="image inputs"):
        ATTACKS.get("square")(n_queries=2).run(two[1], x.flatten(1), y, t)
    for bad in [dict(n_iter=0), dict(n_restarts=0), dict(rho=0.0), dict(momentum=1.5), dict(initial_step=0.0)]:
        with pytest.raises(UsageError):
            ATTACKS.get("apgd-ce")(**bad)
    with pytest.raises(UsageError):
        ATTACKS.get("apgd-t")(n_target_classes=0)
    with pytest.raises(UsageError):
        ATTACKS.get("square")(n_queries=0)
    with pytest.raises(UsageError):
        ATTACKS.get("square")(p_init=1.5)


# -- strength on a trained model --------------------------------------------------------------


def _read_idx(path, count: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)[:count]


@pytest.fixture(scope="module")
def trained_fashion_mlp():
    """A 784-64-10 MLP trained for 300 Adam steps on 2 600 Fashion-MNIST test-split images;
    returns it with 200 held-out images (about 80% clean accuracy)."""
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = _read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz", 2800)
        labels = _read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz", 2800)
        x = torch.from_numpy(images.copy()).float().div(255).unsqueeze(1)
        y = torch.from_numpy(labels.astype(np.int64))
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            i = torch.randint(0, 2600, (64,), generator=g)
            loss = nn.functional.cross_entropy(net(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
    finally:
        torch.set_num_threads(before)
    return net, x[2600:], y[2600:]


@pytest.mark.parametrize("norm,eps", [(Norm.LINF, 0.04), (Norm.L2, 0.6)])
def test_apgd_ce_at_least_as_strong_as_pgd20(trained_fashion_mlp, norm, eps, record_property):
    net, x, y = trained_fashion_mlp
    clean = (net(x).argmax(1) == y).float().mean().item()
    assert clean > 0.7
    t = ThreatModel(norm, eps)
    pgd = ATTACKS.get("pgd")(steps=20).run(net, x, y, t, torch.Generator().manual_seed(0))
    apgd = ATTACKS.get("apgd-ce")().run(net, x, y, t, torch.Generator().manual_seed(0))
    rob_pgd = 1 - pgd.success.float().mean().item()
    rob_apgd = 1 - apgd.success.float().mean().item()
    record_property("robust_accuracy", {"clean": clean, "pgd-20": rob_pgd, "apgd-ce": rob_apgd})
    assert rob_apgd <= rob_pgd, f"APGD-CE {rob_apgd:.3f} vs PGD-20 {rob_pgd:.3f} ({t})"
    assert rob_apgd < clean - 0.1, "the attack must actually break a fair share of the samples"
