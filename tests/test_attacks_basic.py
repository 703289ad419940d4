"""FGSM / PGD / BIM: analytic linear cases and the invariants every attack keeps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robaudit.attacks import ATTACKS
from robaudit.attacks.base import lp_norm, project
from robaudit.errors import UsageError
from robaudit.threat import Norm, ThreatModel


def _binary_linear(d: int = 20, seed: int = 0):
    """Two-class linear model on inputs near 0.5, with its exact minimal perturbations.

    For y = 0, L(x) = (w0 − w1)·x + (b0 − b1); the minimal ℓp perturbation is L/‖w0 − w1‖_q
    (q the dual norm: ℓ1 for ℓ∞, ℓ2 for ℓ2) as long as the box [0,1] does not bind.
    """
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(-0.5 * lin.weight.sum(1))  # the boundary passes near x = 0.5
    x = 0.5 + 0.05 * torch.randn(16, d, generator=g, dtype=torch.float64)
    logits = lin(x).detach()
    y = logits.argmax(1)
    w = lin.weight.detach()
    sign = torch.where(y == 0, 1.0, -1.0).double()
    diff = (w[0] - w[1])[None, :] * sign[:, None]
    L = (logits[:, 0] - logits[:, 1]) * sign
    exact = {Norm.LINF: L / diff.abs().sum(1), Norm.L2: L / diff.norm(dim=1)}
    return lin.eval(), x, y, exact


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
@pytest.mark.parametrize("name", ["fgsm", "pgd", "bim"])
def test_linear_model_minimal_perturbation(name, norm):
    model, x, y, exact = _binary_linear()
    assert (exact[norm] < 0.45).all(), "box constraint must not bind for the analytic answer"
    # PGD-ℓ2's random start lands anywhere in the ball; 20 steps of 2.5ε/20 rotate it towards the
    # optimal direction but leave a small orthogonal part, so it needs ε slightly above the optimum.
    slack = 1.05 if (name == "pgd" and norm is Norm.L2) else 1.02
    for i in range(x.shape[0]):
        r = float(exact[norm][i])
        xi, yi = x[i : i + 1], y[i : i + 1]
        above = ATTACKS.get(name)().run(model, xi, yi, ThreatModel(norm, r * slack), torch.Generator().manual_seed(0))
        below = ATTACKS.get(name)().run(model, xi, yi, ThreatModel(norm, r * 0.98), torch.Generator().manual_seed(0))
        assert bool(above.success), f"{name} missed a perturbation of size {r:.4f} ({norm.value})"
        assert not bool(below.success), "no perturbation smaller than the exact minimum can succeed"


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
@pytest.mark.parametrize("name", ["fgsm", "pgd", "bim"])
def test_invariants_ball_box_mode_weights(name, norm, tiny_cnn):
    torch.manual_seed(1)
    x = torch.rand(12, 1, 8, 8)
    y = torch.randint(0, 10, (12,))
    eps = 0.1 if norm is Norm.LINF else 0.5
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    out = ATTACKS.get(name)().run(tiny_cnn, x, y, ThreatModel(norm, eps), torch.Generator().manual_seed(0))
    assert (lp_norm(out.x_adv - x, norm) <= eps + 1e-6).all()
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert out.x_adv.dtype == torch.float32
    assert not tiny_cnn.training
    for k, v in tiny_cnn.state_dict().items():
        assert torch.equal(v, before[k])
    assert torch.equal(out.success, tiny_cnn(out.x_adv).argmax(1) != y)


def test_attack_restores_training_mode(tiny_cnn):
    tiny_cnn.train()
    ATTACKS.get("pgd")(steps=2).run(tiny_cnn, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), ThreatModel(Norm.LINF, 0.1))
    assert tiny_cnn.training


def test_pgd_deterministic_under_seed(tiny_cnn):
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    t = ThreatModel(Norm.LINF, 0.05)
    a = ATTACKS.get("pgd")(steps=5).run(tiny_cnn, x, y, t, torch.Generator().manual_seed(3))
    b = ATTACKS.get("pgd")(steps=5).run(tiny_cnn, x, y, t, torch.Generator().manual_seed(3))
    assert torch.equal(a.x_adv, b.x_adv)


def test_pass_counts_one_forward_one_backward_per_step(tiny_cnn):
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        y = tiny_cnn(x).argmax(1)
    attack = ATTACKS.get("pgd")(steps=7)
    attack.run(tiny_cnn, x, y, ThreatModel(Norm.LINF, 1e-6))  # nothing breaks
    assert attack.counter.backward == 7 * 5
    assert attack.counter.forward == 7 * 5 + 5  # + run()'s final success check (it tests the last iterate)
    # a sample misclassified at its start is not iterated further: one pass
    y[0] = (y[0] + 1) % 10
    attack = ATTACKS.get("pgd")(steps=7)
    out = attack.run(tiny_cnn, x, y, ThreatModel(Norm.LINF, 1e-6))
    assert bool(out.success[0]) and not bool(out.success[1:].any())
    assert attack.counter.backward == 1 + 7 * 4
    assert attack.counter.forward == attack.counter.backward + 5


def test_project_is_exact_linf_and_l2():
    x = torch.full((2, 3), 0.5)
    far = torch.tensor([[0.9, 0.1, 0.5], [2.0, -1.0, 0.5]])
    p = project(far, x, ThreatModel(Norm.LINF, 0.1))
    assert torch.allclose(p, torch.tensor([[0.6, 0.4, 0.5], [0.6, 0.4, 0.5]]))
    p2 = project(torch.tensor([[0.5 + 0.3, 0.5 + 0.4, 0.5]]), x[:1], ThreatModel(Norm.L2, 0.25))
    assert torch.allclose((p2 - 0.5).norm(), torch.tensor(0.25))


def test_bad_parameters_are_usage_errors():
    with pytest.raises(UsageError):
        ATTACKS.get("pgd")(steps=0)
    with pytest.raises(UsageError, match="did you mean 'pgd'"):
        ATTACKS.get("pgdd")
