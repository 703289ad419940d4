"""FAB-T: the exact box-constrained projection, the minimal perturbation of an affine model, the
invariants every attack keeps, its cost per iteration, and its place in the `standard` preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from test_attacks_basic import _binary_linear

from robaudit.attacks import ATTACKS
from robaudit.attacks.base import lp_norm
from robaudit.attacks.fab import FABTargeted, boundary_projection
from robaudit.config import ScanConfig, parse_attack_list
from robaudit.errors import UsageError
from robaudit.threat import Norm, ThreatModel


def _hyperplanes(seed: int = 1, batch: int = 24, d: int = 9):
    """Random points in the box and hyperplanes w·z = b, some coordinates with w_i = 0."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(batch, d, generator=g, dtype=torch.float64)
    w = torch.randn(batch, d, generator=g, dtype=torch.float64)
    w[0, :3] = 0.0
    b = (w * p).sum(1) + 0.7 * torch.randn(batch, generator=g, dtype=torch.float64)
    return p, w, b


def _reach(p: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """min and max of w·δ over the box δ ∈ [−p, 1−p]."""
    hi = np.where(w > 0, 1 - p, -p)
    lo = np.where(w > 0, -p, 1 - p)
    return float(w @ lo), float(w @ hi)


def test_projection_is_the_exact_box_constrained_minimum():
    """ℓ∞ against a linear program, ℓ2 against SLSQP, on rows where the box binds and where it doesn't."""
    p, w, b = _hyperplanes()
    d_inf = boundary_projection(p, w, b, Norm.LINF).numpy()
    d_two = boundary_projection(p, w, b, Norm.L2).numpy()
    checked = 0
    for i in range(p.shape[0]):
        pi, wi, ci = p[i].numpy(), w[i].numpy(), float(b[i] - (w[i] * p[i]).sum())
        lo, hi = _reach(pi, wi)
        if not lo <= ci <= hi:
            continue
        checked += 1
        dim = pi.size
        bounds = [(-pi[j], 1 - pi[j]) for j in range(dim)]
        lp = linprog(
            np.r_[np.zeros(dim), 1.0],
            A_ub=np.r_[np.c_[np.eye(dim), -np.ones(dim)], np.c_[-np.eye(dim), -np.ones(dim)]],
            b_ub=np.zeros(2 * dim),
            A_eq=np.r_[wi, 0.0][None],
            b_eq=[ci],
            bounds=bounds + [(0, None)],
        )
        assert lp.status == 0
        assert np.abs(d_inf[i]).max() == pytest.approx(lp.x[-1], abs=1e-9)
        qp = minimize(
            lambda z: (z**2).sum(),
            np.zeros(dim),
            method="SLSQP",
            bounds=bounds,
            constraints=[{"type": "eq", "fun": lambda z, wi=wi, ci=ci: wi @ z - ci}],
            options={"ftol": 1e-14, "maxiter": 500},
        )
        assert np.linalg.norm(d_two[i]) == pytest.approx(np.sqrt(qp.fun), abs=1e-7)
        for d in (d_inf[i], d_two[i]):  # on the hyperplane, inside the box
            assert wi @ d == pytest.approx(ci, abs=1e-9)
            assert (pi + d >= -1e-12).all() and (pi + d <= 1 + 1e-12).all()
    assert checked >= 15


def test_projection_out_of_reach_moves_as_far_as_the_box_allows():
    p = torch.full((1, 4), 0.5, dtype=torch.float64)
    w = torch.tensor([[1.0, 2.0, 0.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([100.0], dtype=torch.float64)  # w·z can reach at most 3.5 in the box
    for norm in (Norm.LINF, Norm.L2):
        d = boundary_projection(p, w, b, norm)
        assert torch.allclose(p + d, torch.tensor([[1.0, 1.0, 0.5, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_linear_model_minimal_perturbation(norm):
    """On an affine two-class model the linearized boundary is the boundary: FAB's smallest
    adversarial point is within 1 % above the exact minimal ‖δ‖ (never below: nothing smaller is
    adversarial), and under a threat model it succeeds just above the minimum, fails just below."""
    model, x, y, exact = _binary_linear()
    assert (exact[norm] < 0.45).all(), "box constraint must not bind for the analytic answer"
    fab = FABTargeted()
    point, size = fab.minimal_run(model, x, y, 1 - y, ThreatModel(norm, 1.0))
    assert bool((model(point).argmax(1) != y).all())
    ratio = size / exact[norm]
    assert bool((ratio >= 1 - 1e-9).all()) and bool((ratio <= 1.01).all()), ratio
    for i in range(x.shape[0]):
        r = float(exact[norm][i])
        xi, yi = x[i : i + 1], y[i : i + 1]
        assert bool(FABTargeted().run(model, xi, yi, ThreatModel(norm, 1.02 * r)).success)
        assert not bool(FABTargeted().run(model, xi, yi, ThreatModel(norm, 0.98 * r)).success)


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_invariants_ball_box_mode_weights(norm, tiny_cnn):
    torch.manual_seed(1)
    x = torch.rand(12, 1, 8, 8)
    y = torch.randint(0, 10, (12,))
    eps = 0.1 if norm is Norm.LINF else 0.5
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    tiny_cnn.train()
    out = FABTargeted(n_iter=8, n_target_classes=3, n_restarts=2).run(
        tiny_cnn, x, y, ThreatModel(norm, eps), torch.Generator().manual_seed(0)
    )
    assert tiny_cnn.training  # the mode it was in is restored
    tiny_cnn.eval()
    assert (lp_norm(out.x_adv - x, norm) <= eps + 1e-6).all()
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert out.x_adv.dtype == torch.float32
    for k, v in tiny_cnn.state_dict().items():
        assert torch.equal(v, before[k])
    assert torch.equal(out.success, tiny_cnn(out.x_adv).argmax(1) != y)


def test_one_iteration_is_one_forward_backward_and_one_forward(tiny_cnn):
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.zeros(5, dtype=torch.long)
    fab = FABTargeted(n_iter=7)
    fab.minimal_run(tiny_cnn, x, y, torch.ones(5, dtype=torch.long), ThreatModel(Norm.LINF, 0.1))
    assert (fab.counter.backward, fab.counter.forward) == (7 * 5, 2 * 7 * 5)


def test_registered_with_autoattack_defaults_and_in_the_standard_preset():
    cls = ATTACKS.get("fab-t")
    assert cls is FABTargeted
    f = cls()
    assert (f.n_iter, f.n_restarts, f.n_target_classes, f.alpha_max, f.eta, f.beta) == (100, 1, 9, 0.1, 1.05, 0.9)
    assert [s.label for s in parse_attack_list("standard")] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert ScanConfig.parse(attacks="standard").ensemble == "cascade"
    with pytest.raises(UsageError, match="beta"):
        parse_attack_list("fab-t:beta=1.5")
