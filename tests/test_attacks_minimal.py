"""C&W-ℓ2, DeepFool (+ bisection refinement), SPSA, iterative least-likely: invariants and analytic
linear cases (exact minimal perturbations of a two-class affine model)."""

from __future__ import annotations

import pytest
import torch
from test_attacks_basic import _binary_linear
from torch import nn

import robaudit.attacks.cw  # noqa: F401  (registers cw-l2)
import robaudit.attacks.deepfool  # noqa: F401
import robaudit.attacks.least_likely  # noqa: F401
import robaudit.attacks.spsa  # noqa: F401
from robaudit.attacks import ATTACKS
from robaudit.attacks.base import lp_norm
from robaudit.attacks.cw import CarliniWagnerL2
from robaudit.attacks.deepfool import DeepFool, refine_minimal_perturbation
from robaudit.attacks.pgd import PGD
from robaudit.attacks.spsa import SPSA
from robaudit.errors import UsageError
from robaudit.threat import Norm, ThreatModel

# small settings so the invariant tests stay fast on 2 cores
FAST = {
    "cw-l2": dict(binary_search_steps=3, max_iterations=15),
    "deepfool": dict(max_iter=10),
    "spsa": dict(nb_iter=4, spsa_samples=16),
    "least-likely": dict(),
}
CASES = [("cw-l2", Norm.L2)] + [(n, norm) for n in ("deepfool", "spsa", "least-likely") for norm in (Norm.LINF, Norm.L2)]


class Scaled(nn.Module):
    """The same decision function with logits multiplied by k (minimal perturbations unchanged)."""

    def __init__(self, inner: nn.Module, k: float):
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, x):
        return self.inner(x) * self.k


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: intra-op threads only add synchronisation (badly so on a busy box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cw_linear(_one_thread):
    model, x, y, exact = _binary_linear()
    attack = CarliniWagnerL2()
    x_adv, norms = attack.minimal_perturbation(model, x, y)
    return model, x, y, exact, x_adv, norms, attack


def _eps_between_radii(radii: torch.Tensor, min_rel_gap: float = 1e-3) -> list[float]:
    """Radii ε strictly between consecutive sorted values of ``radii`` (their geometric mean),
    only in gaps wide enough (relative width > ``min_rel_gap``) that float rounding of an attack
    cannot put a sample on the other side; at least a few, or the test would assert nothing."""
    r = radii.double().sort().values
    r = r[torch.isfinite(r) & (r > 0)]
    lo, hi = r[:-1], r[1:]
    wide = hi > lo * (1 + min_rel_gap)
    eps = [float((a * b).sqrt()) for a, b in zip(lo[wide], hi[wide])]
    assert len(eps) >= 3, "the test data must have gaps between radii"
    return eps


# -- invariants -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,norm", CASES)
def test_invariants_ball_box_mode_weights(name, norm, tiny_cnn):
    torch.manual_seed(1)
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    eps = 0.1 if norm is Norm.LINF else 0.5
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    out = ATTACKS.get(name)(**FAST[name]).run(tiny_cnn, x, y, ThreatModel(norm, eps), torch.Generator().manual_seed(0))
    assert (lp_norm(out.x_adv - x, norm) <= eps + 1e-6).all()
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert out.x_adv.dtype == torch.float32
    assert not tiny_cnn.training
    for k, v in tiny_cnn.state_dict().items():
        assert torch.equal(v, before[k])
    assert torch.equal(out.success, tiny_cnn(out.x_adv).argmax(1) != y)


@pytest.mark.parametrize("name,norm", CASES)
def test_deterministic_under_seed_and_training_mode_restored(name, norm, tiny_cnn):
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    t = ThreatModel(norm, 0.05 if norm is Norm.LINF else 0.3)
    a = ATTACKS.get(name)(**FAST[name]).run(tiny_cnn, x, y, t, torch.Generator().manual_seed(3))
    tiny_cnn.train()
    b = ATTACKS.get(name)(**FAST[name]).run(tiny_cnn, x, y, t, torch.Generator().manual_seed(3))
    assert tiny_cnn.training
    assert torch.equal(a.x_adv, b.x_adv)


def test_spsa_uses_the_generator(tiny_cnn):
    x, y = torch.rand(3, 1, 8, 8), torch.randint(0, 10, (3,))
    t = ThreatModel(Norm.LINF, 0.05)
    a = SPSA(nb_iter=2, spsa_samples=8).run(tiny_cnn, x, y, t, torch.Generator().manual_seed(0))
    b = SPSA(nb_iter=2, spsa_samples=8).run(tiny_cnn, x, y, t, torch.Generator().manual_seed(1))
    assert not torch.equal(a.x_adv, b.x_adv)


def test_minimal_perturbation_restores_training_mode(tiny_cnn):
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    tiny_cnn.train()
    DeepFool(max_iter=2).minimal_perturbation(tiny_cnn, x, y, "linf")
    CarliniWagnerL2(binary_search_steps=1, max_iterations=2).minimal_perturbation(tiny_cnn, x, y)
    assert tiny_cnn.training


# -- DeepFool on the affine model: exact in one step -------------------------------------------------


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_deepfool_exact_in_one_step_on_linear_model(norm):
    model, x, y, exact = _binary_linear()
    attack = DeepFool()
    x_adv, norms = attack.minimal_perturbation(model, x, y, norm)
    B = x.shape[0]
    # one linearisation (1 forward + 1 backward: a single other class), then the label check
    assert attack.counter.backward == B and attack.counter.forward == 2 * B
    assert torch.allclose(norms / (1 + attack.overshoot), exact[norm], rtol=1e-6, atol=0)
    assert (norms >= exact[norm] - 1e-6).all()
    assert (model(x_adv).argmax(1) != y).all()
    delta = x_adv - x
    w = (model.weight[1] - model.weight[0]).detach()
    s = torch.where(y == 0, 1.0, -1.0).double()[:, None]  # ∇(Z_other − Z_y)
    direction = (s * w).sign() if norm is Norm.LINF else (s * w) / (s * w).norm(dim=1, keepdim=True)
    assert torch.allclose(delta, direction * norms[:, None], rtol=1e-6, atol=1e-12)


def test_deepfool_does_not_stall_on_the_boundary():
    """Regression: without the authors' +1e-4 after the first step, clipped steps converge onto the
    boundary from inside (samples 3 and 9 here end on an exact logit tie that argmax gives to y)."""
    from conftest import TinyCNN

    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(32, 1, 8, 8)
    y = model(x).argmax(1)
    x_adv, norms = DeepFool().minimal_perturbation(model, x, y, Norm.L2)
    assert torch.isfinite(norms).all()
    assert (model(x_adv).argmax(1) != y).all()


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_deepfool_under_threat_model_matches_its_norms(norm):
    """On an affine model DeepFool steps along the optimal direction to (1 + overshoot) × the exact
    radius r; projected onto the ε-ball that point still crosses the boundary iff r < ε. Every ε
    between two consecutive radii (never on one: there rounding decides) must split the samples
    exactly there."""
    model, x, y, exact = _binary_linear()
    for eps in _eps_between_radii(exact[norm]):
        out = DeepFool().run(model, x, y, ThreatModel(norm, eps))
        assert torch.equal(out.success, exact[norm] < eps), eps


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_refinement_tightens_deepfool_on_linear_model(norm):
    model, x, y, exact = _binary_linear()
    _, upper = DeepFool().minimal_perturbation(model, x, y, norm)
    g = torch.Generator().manual_seed(0)
    refined = refine_minimal_perturbation(model, x, y, norm, upper, lambda: PGD(steps=10, random_start=False), generator=g)
    assert (refined <= upper).all()
    assert (refined >= exact[norm] - 1e-6).all(), "nothing beats the exact minimum"
    assert (refined <= 1.02 * exact[norm]).all()
    assert (refined < upper).any()


def test_refinement_never_increases_radius(tiny_cnn):
    torch.manual_seed(2)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    _, upper = DeepFool().minimal_perturbation(tiny_cnn, x, y, Norm.LINF)
    upper[0] = float("inf")  # a DeepFool failure stays a failure
    counter_attack = PGD(steps=5)
    refined = refine_minimal_perturbation(
        tiny_cnn, x, y, Norm.LINF, upper, lambda: counter_attack, steps=4, generator=torch.Generator().manual_seed(0)
    )
    assert refined[0] == float("inf")
    assert (refined <= upper).all()
    assert counter_attack.counter.forward > 0
    with pytest.raises(UsageError):
        refine_minimal_perturbation(tiny_cnn, x, y, Norm.LINF, upper, lambda: SPSA())


# -- C&W-ℓ2 on the affine model ---------------------------------------------------------------------


def test_cw_minimal_norm_close_to_exact(cw_linear):
    model, x, y, exact, x_adv, norms, attack = cw_linear
    assert torch.isfinite(norms).all()
    assert (norms >= exact[Norm.L2] - 1e-6).all(), "nothing beats the exact minimum"
    assert (norms <= 1.03 * exact[Norm.L2]).all()
    assert torch.allclose(lp_norm(x_adv - x, Norm.L2), norms)
    assert (model(x_adv).argmax(1) != y).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    consts = torch.stack(attack.last_consts)
    assert len(attack.last_consts) == attack.binary_search_steps
    assert (consts != attack.initial_const).any(dim=0).all(), "c is searched per sample, never fixed"


def test_cw_under_threat_model_counts_only_within_eps():
    model, x, y, exact = _binary_linear()
    kw = dict(binary_search_steps=3, max_iterations=20)
    _, norms = CarliniWagnerL2(**kw).minimal_perturbation(model, x, y)
    # C&W's point is projected onto the ε-ball: it certainly counts when its norm is within ε, it
    # can never count when even the exact minimum is beyond ε; in between the projection decides.
    # ε sits in a gap of both radius lists, so rounding cannot move a sample across.
    checked = 0
    for eps in _eps_between_radii(torch.cat([exact[Norm.L2], norms.double()])):
        out = CarliniWagnerL2(**kw).run(model, x, y, ThreatModel(Norm.L2, eps))
        assert out.success[norms < eps].all(), eps
        assert not out.success[exact[Norm.L2] > eps].any(), eps
        checked += int((norms < eps).sum()) > 0 and int((exact[Norm.L2] > eps).sum()) > 0
        if checked >= 3:
            break
    assert checked >= 3
    with pytest.raises(UsageError):
        CarliniWagnerL2().run(model, x, y, ThreatModel(Norm.LINF, 0.1))


@pytest.mark.parametrize("scale", [1e3, 1e-3])
def test_cw_binary_search_adapts_c_to_logit_scale(scale):
    model, x, y, exact = _binary_linear()
    idx = torch.tensor([0, 4, 9, 13])  # a spread of exact radii
    x, y, ex = x[idx], y[idx], exact[Norm.L2][idx]
    attack = CarliniWagnerL2()
    _, norms = attack.minimal_perturbation(Scaled(model, scale).eval(), x, y)
    consts = torch.stack(attack.last_consts)  # [steps, B]
    assert (norms >= ex - 1e-6).all()
    if scale > 1:  # c=1e-3 already succeeds: the search must walk c down by halving
        assert (consts[1:] < attack.initial_const).all() and (consts[-1] < attack.initial_const / 4).all()
        # halving from 1e-3 costs most of the 9 search steps, so the bracket is coarser
        assert (norms <= 1.15 * ex).all()
    else:  # c=1e-3 (effectively 1e-6) can't succeed: the search must raise c by ×10 steps
        assert (consts[-1] > attack.initial_const * 100).all()
        assert (norms <= 1.03 * ex).all()


# -- least-likely and SPSA on the affine model ----------------------------------------------------


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_least_likely_succeeds_just_above_exact_minimum(norm):
    model, x, y, exact = _binary_linear()
    for i in range(x.shape[0]):
        r = float(exact[norm][i])
        xi, yi = x[i : i + 1], y[i : i + 1]
        above = ATTACKS.get("least-likely")().run(model, xi, yi, ThreatModel(norm, 1.05 * r))
        below = ATTACKS.get("least-likely")().run(model, xi, yi, ThreatModel(norm, 0.98 * r))
        assert bool(above.success) and not bool(below.success)


def test_spsa_breaks_linear_model_linf():
    model, x, y, exact = _binary_linear()
    for i in range(0, x.shape[0], 2):
        r = float(exact[Norm.LINF][i])
        out = SPSA().run(model, x[i : i + 1], y[i : i + 1], ThreatModel(Norm.LINF, 1.05 * r), torch.Generator().manual_seed(i))
        assert bool(out.success)


# -- pass counts ---------------------------------------------------------------------------------------


def test_spsa_is_forward_only_and_counts_chunked_probes(tiny_cnn):
    x, y = torch.rand(3, 1, 8, 8), torch.randint(0, 10, (3,))
    y = tiny_cnn(x).argmax(1)  # correctly classified, and ε = 0 keeps them so: no early stop
    attack = SPSA(nb_iter=3, spsa_samples=8, spsa_batch=6)  # 12 pairs in chunks of 3 pairs
    out = attack.run(tiny_cnn, x, y, ThreatModel(Norm.LINF, 0.0), torch.Generator().manual_seed(0))
    assert not out.success.any()
    assert attack.counter.backward == 0
    assert attack.counter.forward == 3 * (3 + 3 * 8) + 3
    assert getattr(SPSA, "kind", "gradient-free") == "gradient-free"  # per iteration: check + probes; final check


def test_square_like_black_box_makes_no_backward(tiny_cnn):
    pytest.importorskip("robaudit.attacks.square")
    x, y = torch.rand(3, 1, 8, 8), torch.randint(0, 10, (3,))
    attack = ATTACKS.get("square")()
    for field in ("n_queries", "steps", "max_queries"):
        if hasattr(attack, field):
            setattr(attack, field, 20)
    attack.run(tiny_cnn, x, y, ThreatModel(Norm.LINF, 0.05), torch.Generator().manual_seed(0))
    assert attack.counter.backward == 0 and attack.counter.forward > 0


def test_deepfool_counts_one_forward_and_candidate_backwards(tiny_cnn):
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    y = tiny_cnn(x).argmax(1)
    attack = DeepFool(num_candidates=4, max_iter=1)
    attack.minimal_perturbation(tiny_cnn, x, y, Norm.L2)
    assert attack.counter.backward == 3 * 4  # num_candidates − 1 backwards of the batch
    assert attack.counter.forward == 4 + 4  # the iteration's forward + the final label check


def test_bad_parameters_are_usage_errors():
    for name, kw in [
        ("cw-l2", dict(max_iterations=0)),
        ("deepfool", dict(num_candidates=1)),
        ("spsa", dict(spsa_samples=7)),
        ("least-likely", dict(steps=0)),
    ]:
        with pytest.raises(UsageError):
            ATTACKS.get(name)(**kw)
