"""Input-space geometry: Jacobians, HVPs (exact / torch.func / finite differences), full Hessians,
Lanczos, Hutchinson, Theorem 1 bounds, Eq. 9 radius, input surfaces and parameter landscapes.

Everything runs in float64 on tiny smooth networks (d = 16..36) so the checks are tight and fast.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robaudit.geometry import (
    alignment,
    cross_entropy,
    cure_direction,
    cure_direction_norm,
    filter_normalize,
    full_hessian,
    hessian_eigvals,
    hutchinson_frobenius,
    hvp_exact,
    hvp_fd,
    hvp_func,
    hvp_operator,
    input_jacobian,
    jacobian_stats,
    lanczos,
    margin,
    near_zero_fraction,
    param_landscape,
    random_direction,
    second_order_radius,
    surface_grid,
    theorem1_bounds,
    theorem1_simplified,
)
from robaudit.models.wrapper import NormalizedModel

C = 4  # classes


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny float64 nets are dispatch-bound: one intra-op thread is ~10x faster on a busy 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class MLP(nn.Module):
    def __init__(self, d: int, act: nn.Module, hidden: int = 12, classes: int = C):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(d, hidden), act, nn.Linear(hidden, hidden), act, nn.Linear(hidden, classes)
        )

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self, act: nn.Module, classes: int = C):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.act = act
        self.fc = nn.Linear(3 * 6 * 6, classes)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


def _data(shape, B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((B, *shape), generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    return x, y


@pytest.fixture
def smooth_mlp():
    torch.manual_seed(0)
    # normalization inside: everything must come out in pixel space
    return NormalizedModel(MLP(16, nn.Softplus()).double(), mean=[0.5], std=[0.3]).eval()


@pytest.fixture
def smooth_cnn():
    torch.manual_seed(1)
    return SmallCNN(nn.Tanh()).double().eval()


@pytest.fixture
def relu_mlp():
    torch.manual_seed(2)
    return MLP(16, nn.ReLU(), hidden=16).double().eval()


def _ref_hessian(model, x1, y1, fn):
    f = margin if fn == "margin" else cross_entropy
    H = torch.autograd.functional.hessian(lambda xi: f(model(xi.unsqueeze(0)), y1.view(1)).sum(), x1)
    d = x1.numel()
    return H.reshape(d, d)


# --------------------------------------------------------------------------- Jacobian


def test_input_jacobian_is_per_sample_and_stats(smooth_mlp):
    x, y = _data((1, 4, 4), B=4)
    vals, grads = input_jacobian(smooth_mlp, x, y, fn="margin")
    assert vals.shape == (4,) and grads.shape == x.shape
    for b in range(4):  # each row equals that sample's own gradient (no 1/B, no interaction)
        v1, g1 = input_jacobian(smooth_mlp, x[b : b + 1], y[b : b + 1], fn="margin")
        torch.testing.assert_close(g1[0], grads[b], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(v1[0], vals[b])
    torch.testing.assert_close(vals, margin(smooth_mlp(x), y).detach())
    _, g_ce = input_jacobian(smooth_mlp, x, y, fn="ce")
    assert not torch.allclose(g_ce, grads)

    g = torch.tensor([[3.0, -4.0, 0.0, 5e-4], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    s = jacobian_stats(g)
    torch.testing.assert_close(s["l1"], torch.tensor([7.0005, 0.0], dtype=torch.float64))
    torch.testing.assert_close(s["l2"], torch.tensor([math.sqrt(25 + 25e-8), 0.0], dtype=torch.float64))
    torch.testing.assert_close(s["linf"], torch.tensor([4.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(s["zero_frac"], torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert jacobian_stats(g, zero_threshold=1e-4)["zero_frac"][0] == 0.25


# --------------------------------------------------------------------------- HVPs


@pytest.mark.parametrize("fn", ["ce", "margin"])
def test_double_backward_matches_torch_func(smooth_mlp, smooth_cnn, fn):
    for model, shape in ((smooth_mlp, (1, 4, 4)), (smooth_cnn, (1, 6, 6))):
        x, y = _data(shape)
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        hv = hvp_exact(model, x, y, v, fn)
        torch.testing.assert_close(hvp_func(model, x, y, v, fn, vmap=True), hv, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(hvp_func(model, x, y, v, fn, vmap=False), hv, rtol=1e-10, atol=1e-12)
        # and against the per-sample reference Hessian
        for b in range(x.shape[0]):
            H = _ref_hessian(model, x[b], y[b], fn)
            torch.testing.assert_close(hv[b].flatten(), H @ v[b].flatten(), rtol=1e-10, atol=1e-12)


def test_fd_hvp_converges_to_exact(smooth_cnn):
    x, y = _data((1, 6, 6))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    v = v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    exact = hvp_exact(smooth_cnn, x, y, v, "ce")
    scale = exact.flatten(1).norm(dim=1)

    def err(h, central=False):
        fd = hvp_fd(smooth_cnn, x, y, v, h, "ce", central=central)
        return ((fd - exact).flatten(1).norm(dim=1) / scale).max().item()

    e1, e2, e3 = err(1e-2), err(1e-3), err(1e-4)
    # forward differences: error O(h) — a 10x smaller h gives ~10x smaller error
    assert e1 < 5e-2
    assert 5 < e1 / e2 < 20 and 5 < e2 / e3 < 20
    # central differences: O(h^2)
    c1, c2 = err(1e-2, True), err(1e-3, True)
    assert c2 < c1 / 50 and c1 < e1 / 5
    # grad_at_x reuse gives the same answer; per-sample h works
    g0 = input_jacobian(smooth_cnn, x, y, "ce")[1]
    torch.testing.assert_close(hvp_fd(smooth_cnn, x, y, v, 1e-3, "ce", grad_at_x=g0), hvp_fd(smooth_cnn, x, y, v, 1e-3, "ce"))
    hs = torch.tensor([1e-3, 1e-3, 1e-3], dtype=torch.float64)
    torch.testing.assert_close(hvp_fd(smooth_cnn, x, y, v, hs, "ce"), hvp_fd(smooth_cnn, x, y, v, 1e-3, "ce"))


# --------------------------------------------------------------------------- full Hessian


@pytest.mark.parametrize("fn", ["ce", "margin"])
def test_full_hessian_matches_autograd_reference(smooth_mlp, smooth_cnn, fn):
    for model, shape in ((smooth_mlp, (1, 4, 4)), (smooth_cnn, (1, 6, 6))):
        x, y = _data(shape)
        d = x[0].numel()
        # chunk not a multiple of d: a chunk straddles two samples
        H = full_hessian(model, x, y, fn, method="exact", chunk=7)
        assert H.shape == (x.shape[0], d, d)
        for b in range(x.shape[0]):
            torch.testing.assert_close(H[b], _ref_hessian(model, x[b], y[b], fn), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(full_hessian(model, x, y, fn, method="func", chunk=50), H, rtol=1e-10, atol=1e-12)
        # fewer pairs per pass than samples: sample groups, one basis vector per pass
        torch.testing.assert_close(full_hessian(model, x, y, fn, method="func", chunk=2), H, rtol=1e-10, atol=1e-12)
        Hfd = full_hessian(model, x, y, fn, method="fd", h=1e-5, chunk=64)
        assert ((Hfd - H).norm(dim=(1, 2)) / H.norm(dim=(1, 2))).max() < 1e-3
        Hc = full_hessian(model, x, y, fn, method="fd", h=1e-4, central=True, chunk=64)
        assert ((Hc - H).norm(dim=(1, 2)) / H.norm(dim=(1, 2))).max() < 1e-6
        torch.testing.assert_close(H, H.transpose(1, 2))


def test_hessian_eigvals_sorted_descending(smooth_mlp):
    x, y = _data((1, 4, 4))
    ev = hessian_eigvals(smooth_mlp, x, y, "ce")
    assert ev.dtype == torch.float64 and ev.shape == (3, 16)
    assert (ev[:, :-1] >= ev[:, 1:]).all()
    ref = torch.linalg.eigvalsh(_ref_hessian(smooth_mlp, x[0], y[0], "ce")).flip(0)
    torch.testing.assert_close(ev[0], ref, rtol=1e-9, atol=1e-11)


def test_relu_ce_hessian_rank_and_zero_margin_hessian(relu_mlp):
    x, y = _data((1, 4, 4), B=4)
    ev = hessian_eigvals(relu_mlp, x, y, "ce")
    rank = (ev.abs() > 1e-8 * ev.abs().amax(dim=1, keepdim=True)).sum(dim=1)
    assert (rank <= C - 1).all() and (rank >= 1).all()
    assert (near_zero_fraction(ev, 1e-8, relative=True) >= 1 - (C - 1) / 16).all()
    # Jᵀ(diag p − ppᵀ)J is PSD
    assert (ev >= -1e-10 * ev.abs().amax(dim=1, keepdim=True)).all()
    # the margin of a ReLU net is piecewise linear: exact Hessian is 0, FD at finite h generally is not
    Hm = full_hessian(relu_mlp, x, y, "margin", method="exact")
    assert Hm.abs().max() == 0
    # Lanczos survives the rank deficiency (breakdown + restart) and still gets the spectrum
    op = hvp_operator(relu_mlp, x, y, "ce")
    top, bottom, _ = lanczos(op, 16, 3, 16, torch.Generator().manual_seed(0), batch=4)
    torch.testing.assert_close(top, ev[:, :3], rtol=1e-6, atol=1e-9 * ev[:, 0].max().item())
    torch.testing.assert_close(bottom, ev.flip(1)[:, :3], rtol=1e-6, atol=1e-9 * ev[:, 0].max().item())


def test_near_zero_fraction():
    ev = torch.tensor([[1.0, 1e-12, -1e-11, 0.5], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(near_zero_fraction(ev, 1e-9), torch.tensor([0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(near_zero_fraction(ev, 0.6, relative=True), torch.tensor([0.75, 1.0], dtype=torch.float64))


# --------------------------------------------------------------------------- Lanczos / Hutchinson


def test_lanczos_matches_eigvalsh(smooth_cnn):
    x, y = _data((1, 6, 6))
    d = 36
    ev = hessian_eigvals(smooth_cnn, x, y, "ce")  # descending
    op = hvp_operator(smooth_cnn, x, y, "ce", method="exact")
    k = 3
    top, bottom, vecs, info = lanczos(op, d, k, iters=d, generator=torch.Generator().manual_seed(0), batch=3, return_info=True)
    assert info["n_hvp"] == d and top.shape == (3, k) and vecs.shape == (3, k, d)
    scale = ev.abs().amax(dim=1, keepdim=True)
    assert ((top - ev[:, :k]).abs() / scale).max() < 1e-6
    assert ((bottom - ev.flip(1)[:, :k]).abs() / scale).max() < 1e-6
    # the top Ritz vector is the top eigenvector: H u = λ u
    Hu = op(vecs[:, 0])
    assert ((Hu - top[:, :1] * vecs[:, 0]).norm(dim=1) / scale[:, 0]).max() < 1e-6
    # early stopping with a tolerance uses fewer HVPs and still matches
    top2, _, _, info2 = lanczos(
        op, d, 1, iters=d, generator=torch.Generator().manual_seed(0), batch=3, tol=1e-8, which="top", return_info=True
    )
    assert info2["n_hvp"] <= d and bool(info2["converged"].all())
    assert ((top2[:, 0] - ev[:, 0]).abs() / scale[:, 0]).max() < 1e-6
    # fd operator at small h agrees to O(h)
    op_fd = hvp_operator(smooth_cnn, x, y, "ce", method="fd", h=1e-6)
    top3, _, _ = lanczos(op_fd, d, 1, iters=d, generator=torch.Generator().manual_seed(0), batch=3)
    assert ((top3[:, 0] - ev[:, 0]).abs() / scale[:, 0]).max() < 1e-4


def test_hutchinson_frobenius_within_three_standard_errors(smooth_mlp):
    x, y = _data((1, 4, 4))
    H = full_hessian(smooth_mlp, x, y, "ce")
    exact = H.pow(2).sum(dim=(1, 2))
    op = hvp_operator(smooth_mlp, x, y, "ce")
    for dist in ("rademacher", "gaussian"):
        est, se = hutchinson_frobenius(op, x.shape, 200, torch.Generator().manual_seed(5), dist=dist)
        assert est.shape == (3,) and (se > 0).all()
        assert ((est - exact).abs() <= 3 * se).all(), (dist, est, exact, se)
        assert (se < 0.2 * exact).all()


def test_cure_direction_norm(smooth_cnn):
    x, y = _data((1, 6, 6))
    g = input_jacobian(smooth_cnn, x, y, "ce")[1]
    z = cure_direction(g)
    torch.testing.assert_close(z.flatten(1).norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert torch.equal(z.sign(), g.sign())
    H = full_hessian(smooth_cnn, x, y, "ce")
    ref = torch.einsum("bij,bj->bi", H, z.flatten(1)).norm(dim=1)
    exact = cure_direction_norm(smooth_cnn, x, y, fn="ce", method="exact")
    torch.testing.assert_close(exact, ref, rtol=1e-10, atol=1e-12)
    fd = cure_direction_norm(smooth_cnn, x, y, h=1e-5, method="fd")
    assert ((fd - ref).abs() / ref).max() < 1e-3
    with pytest.raises(ValueError):
        cure_direction_norm(smooth_cnn, x, y, method="fd")


# --------------------------------------------------------------------------- bounds


def _true_radius_2d(g, Hdiag, c, n=200_001):
    """min ‖r‖ s.t. gᵀr + ½ rᵀ diag(H) r ≥ c, by brute force over directions in 2-D."""
    th = torch.linspace(0, 2 * math.pi, n, dtype=torch.float64)
    dirs = torch.stack([th.cos(), th.sin()], 1)
    a = dirs @ g  # linear coefficient along the ray
    q = (dirs**2) @ Hdiag  # curvature along the ray
    disc = a * a + 2 * q * c
    root = torch.where(disc >= 0, 2 * c / (a + disc.clamp_min(0).sqrt()), torch.full_like(a, float("inf")))
    root = torch.where(root > 0, root, torch.full_like(root, float("inf")))
    return root.min().item()


def test_theorem1_bounds_contain_true_radius():
    g = torch.tensor([1.0, 0.6], dtype=torch.float64)
    for Hdiag, c in (([2.0, 0.3], 0.7), ([0.5, 0.4], 1.3), ([3.0, -0.5], 0.2)):
        Hd = torch.tensor(Hdiag, dtype=torch.float64)
        nu = Hd.max()
        u = torch.tensor([1.0, 0.0] if Hd[0] >= Hd[1] else [0.0, 1.0], dtype=torch.float64)
        lo, up = theorem1_bounds(c, g.norm(), nu, g @ u)
        r = _true_radius_2d(g, Hd, c)
        assert lo <= r + 1e-9 and r <= up + 1e-9 and lo <= up, (Hdiag, c, lo, r, up)
        slo, sup = theorem1_simplified(c, g.norm(), nu, g @ u)
        assert slo <= lo + 1e-12 and up <= sup + 1e-12
    # g parallel to u: both bounds are the exact radius of the 1-D quadratic
    lo, up = theorem1_bounds(0.5, 2.0, 3.0, -2.0)
    exact = (-2.0 + math.sqrt(4.0 + 2 * 3.0 * 0.5)) / 3.0
    assert lo.item() == pytest.approx(exact, rel=1e-12) and up.item() == pytest.approx(exact, rel=1e-12)
    # nu -> 0 linear limits (stable, no 0/0), c < 0 -> 0, g ⟂ u with nu = 0 -> inf
    lo, up = theorem1_bounds(
        torch.tensor([0.3, -0.1, 0.3]),
        torch.tensor([2.0, 2.0, 2.0]),
        torch.tensor([0.0, 1.0, 0.0]),
        torch.tensor([0.5, 0.5, 0.0]),
    )
    assert lo[0].item() == pytest.approx(0.15) and up[0].item() == pytest.approx(0.6)
    assert lo[1] == 0 and up[1] == 0
    assert math.isinf(up[2].item())
    lo_small, up_small = theorem1_bounds(0.3, 2.0, 1e-12, 0.5)
    assert lo_small.item() == pytest.approx(0.15, rel=1e-9) and up_small.item() == pytest.approx(0.6, rel=1e-9)
    # alignment
    gg = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    uu = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(alignment(gg, uu), torch.tensor([0.8, 0.0], dtype=torch.float64))


def test_second_order_radius():
    L = torch.tensor([2.0, 2.0, -1.0, 1.0], dtype=torch.float64)
    j1 = torch.tensor([4.0, 4.0, 4.0, 0.0], dtype=torch.float64)
    lam = torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64)
    eps = second_order_radius(L, j1, lam, dim=16)
    assert eps[0].item() == pytest.approx(0.5)  # linear: L/‖J‖₁
    lhs = eps[1] * j1[1] + 0.5 * 16 * eps[1] ** 2 * lam[1]  # ‖δ‖₂² = d ε² at an ℓ∞ corner
    assert lhs.item() == pytest.approx(2.0, rel=1e-12) and 0 < eps[1] < eps[0]
    assert eps[2] == 0 and math.isinf(eps[3].item())
    e2 = second_order_radius(2.0, None, 0.5, norm="l2", j_l2=3.0)
    assert (3.0 * e2 + 0.25 * e2**2).item() == pytest.approx(2.0, rel=1e-12)


# --------------------------------------------------------------------------- surfaces


def test_surface_grid_centre_orientation_and_clip(smooth_cnn):
    x, y = _data((1, 6, 6), B=1)
    u = random_direction(x.shape[1:], torch.Generator().manual_seed(0), dtype=torch.float64)
    v = random_direction(x.shape[1:], torch.Generator().manual_seed(1), dtype=torch.float64)
    assert u.norm().item() == pytest.approx(1.0)
    for fn, ref in (("margin", margin), ("ce", cross_entropy)):
        grid, a, b = surface_grid(smooth_cnn, x, y, u, v, extent=0.5, steps=9, fn=fn, chunk=10)
        assert grid.shape == (9, 9) and a[4] == 0 and b[4] == 0
        torch.testing.assert_close(grid[4, 4], ref(smooth_cnn(x), y)[0].detach(), rtol=0, atol=1e-12)
        # an off-centre point
        torch.testing.assert_close(grid[1, 6], ref(smooth_cnn(x + a[1] * u + b[6] * v), y)[0].detach(), rtol=1e-12, atol=1e-12)
    pred, _, _ = surface_grid(smooth_cnn, x[0], int(y), u, v, 0.5, 5, fn="pred")
    assert pred.dtype == torch.int64 and pred[2, 2] == smooth_cnn(x).argmax(1)[0]

    # orientation: a linear model whose margin grows along u and is flat along v (v ⟂ u)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(36, 2, bias=False)).double()
    with torch.no_grad():
        lin[1].weight.zero_()
        lin[1].weight[0] = u.flatten()
    v_perp = v - (v.flatten() @ u.flatten()) * u
    grid, a, b = surface_grid(lin, x, 0, u, v_perp, extent=1.0, steps=7)
    assert (a[1:] > a[:-1]).all()
    assert (grid[1:, :] > grid[:-1, :]).all()  # rows = u axis: increasing
    torch.testing.assert_close(grid, grid[:, :1].expand(7, 7), rtol=0, atol=1e-12)  # flat along v
    torch.testing.assert_close(grid[:, 3] - grid[3, 3], a, rtol=0, atol=1e-12)  # slope ‖u‖² = 1
    # clip=True evaluates clipped points (differs far out), unclipped by default
    gclip, _, _ = surface_grid(lin, x, 0, u, v_perp, extent=5.0, steps=5, clip=True)
    gfree, a5, b5 = surface_grid(lin, x, 0, u, v_perp, extent=5.0, steps=5)
    pt = (x[0] + a5[0] * u + b5[0] * v_perp).clamp(0, 1)
    torch.testing.assert_close(gclip[0, 0], margin(lin(pt[None]), torch.tensor([0]))[0].detach())
    assert not torch.allclose(gclip, gfree)
    assert gclip[2, 2] == gfree[2, 2]


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, C)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_param_landscape_restores_weights_bit_identically():
    torch.manual_seed(0)
    model = _BNNet().double()
    x, y = _data((1, 6, 6), B=8)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    model.eval()
    loss = lambda m: cross_entropy(m(x), y).mean()  # noqa: E731
    base = loss(model).item()
    vals, axes = param_landscape(model, loss, 2, extent=1.0, steps=5, generator=torch.Generator().manual_seed(0))
    assert vals.shape == (5, 5) and len(axes) == 2
    assert vals[2, 2].item() == base
    assert vals.std() > 0
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k
    # train mode (BN statistics would move) and an exception mid-way: still restored exactly
    model.train()
    calls = []

    def failing(m):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return cross_entropy(m(x), y).mean()

    with pytest.raises(RuntimeError):
        param_landscape(model, failing, 1, steps=5, generator=torch.Generator().manual_seed(1))
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k
    model.eval()
    # 1-D landscape along a given direction; filter normalization rescales per filter, zeroes biases
    params = dict(model.named_parameters())
    d = {k: torch.randn_like(p) for k, p in params.items()}
    dn = filter_normalize(d, params)
    w = params["conv.weight"]
    torch.testing.assert_close(dn["conv.weight"].flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1))
    assert dn["conv.bias"].abs().max() == 0 and dn["bn.weight"].abs().max() == 0
    vals1, (a1,) = param_landscape(model, loss, [d], extent=0.5, steps=3)
    assert vals1.shape == (3,) and vals1[1].item() == base
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k
