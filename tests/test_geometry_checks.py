"""The input-space geometry battery through the engine: jacobian, curvature, indicator, spectra,
surfaces, landscape — on tiny models, with JSON round trips and analytic cases."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

# register the geometry checks and their section types (the lead adds them to CHECKS' builtins)
import robaudit.checks.curvature as curvature_mod
import robaudit.checks.indicator as indicator_mod
import robaudit.checks.jacobian as jacobian_mod
import robaudit.checks.landscape as landscape_mod  # noqa: F401
import robaudit.checks.spectra as spectra_mod  # noqa: F401
import robaudit.checks.surfaces as surfaces_mod
from robaudit.checks.attacks import decode_tensor
from robaudit.config import ScanConfig, parse_attack_list
from robaudit.data.spec import DataSpec
from robaudit.engine import run_scan
from robaudit.geometry import input_jacobian, margin
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.results import ScanResult
from robaudit.threat import Norm

ALL = ("jacobian", "curvature", "indicator", "spectra", "surfaces", "landscape", "margins")


def _setup(model, n=24, shape=(1, 8, 8), classes=10, flip_every=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    if flip_every:
        y[::flip_every] = (y[::flip_every] + 1) % classes  # some misclassified samples
    data = DataSpec("synthetic", "test", x, y, tuple(str(i) for i in range(classes)), "memory")
    loaded = LoadedModel(model, ModelInfo(path="m.safetensors", format="safetensors", sha256="0" * 64, arch="tiny"))
    return loaded, data


def _cfg(checks, **kw):
    base = dict(eps=(0.05,), attacks=parse_attack_list("fgsm"), checks=checks, device="cpu", batch_size=64)
    base.update(kw)
    return ScanConfig(**base)


@pytest.fixture
def small_k(monkeypatch):
    monkeypatch.setattr(curvature_mod.CurvatureCheck, "k", 6)
    monkeypatch.setattr(landscape_mod.LandscapeCheck, "steps_1d", 7)
    monkeypatch.setattr(landscape_mod.LandscapeCheck, "steps_2d", 5)
    monkeypatch.setattr(surfaces_mod.SurfacesCheck, "steps", 11)


def _round_trip(result: ScanResult) -> None:
    text = result.to_json()
    back = ScanResult.from_dict(json.loads(text))
    assert back == result
    assert back.to_json() == text


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_battery_runs_consistently_and_round_trips(tiny_cnn, small_k, norm):
    loaded, data = _setup(tiny_cnn)
    eps = (0.05,) if norm is Norm.LINF else (0.5,)
    weights = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    result = run_scan(loaded, data, _cfg(ALL, norm=norm, eps=eps), command_line="t")
    assert set(ALL) <= set(result.sections)
    _round_trip(result)
    clean = result.section("clean")
    n_correct = sum(clean.correct)
    d = 64

    # jacobian: per-sample norms are ordered and the summaries match them
    jac = result.section("jacobian")
    for st in (jac.margin, jac.ce):
        assert len(st.l1) == data.n
        for a, b, c, z in zip(st.linf, st.l2, st.l1, st.zero_fraction):
            assert a <= b * (1 + 1e-5) and b <= c * (1 + 1e-5) and 0.0 <= z <= 1.0
        assert st.mean_l1 == pytest.approx(sum(st.l1) / len(st.l1), rel=1e-4)
    m = margin(tiny_cnn(data.x), data.y).detach()
    assert len(jac.heatmaps) == min(4, n_correct)
    margins = [h.margin for h in jac.heatmaps]
    assert margins == sorted(margins) and all(v > 0 for v in margins)
    h0 = jac.heatmaps[0]
    _, g = input_jacobian(tiny_cnn, data.x[h0.index : h0.index + 1], data.y[h0.index : h0.index + 1], "margin")
    assert torch.allclose(decode_tensor(h0.gradient, h0.shape), g[0], atol=1e-6)
    assert float(m[h0.index]) == pytest.approx(h0.margin, rel=1e-4)
    assert "jacobian.margin.l1_mean" in result.metrics()

    # curvature: a ReLU net -> exact Hessian J^T A J of rank <= C-1, every other eigenvalue exactly 0
    cur = result.section("curvature")
    assert cur.n_samples == min(6, n_correct) and len(cur.indices) == cur.n_samples
    assert all(clean.correct[i] for i in cur.indices)
    assert cur.piecewise_linear and cur.exact_method == "gauss-newton" and cur.dtype == "float64"
    ex, fd = cur.exact, cur.finite_difference
    assert ex.complete and fd.complete
    for nz in ex.near_zero_fraction:
        assert nz >= (d - 9) / d
    for spec in (ex, fd):
        assert len(spec.lambda_max) == cur.n_samples
        assert all(a >= b for a, b in zip(spec.lambda_max, spec.lambda_min))
        assert all(0.0 <= a <= 1.0 + 1e-9 for a in spec.alignment)
        assert len(spec.profile_ranks) == len(spec.profile_mean) == len(spec.profile_q25) == d
        assert spec.profile_mean[0] >= spec.profile_mean[-1]
        assert spec.lambda_max_median == pytest.approx(float(torch.tensor(spec.lambda_max).median()))
    # GN form is PSD; Hutchinson's exact ||H||_F agrees with the spectrum's within a few standard errors
    assert min(ex.lambda_min) >= -1e-12
    for f_sp, f_h, se in zip(ex.frobenius, cur.frobenius_exact, cur.frobenius_exact_se):
        assert abs(f_sp - f_h) <= 5 * se + 1e-6 * f_sp
    assert all(h >= 0 for h in cur.hz_fd + cur.hz_exact)
    step = 0.05 * 8 if norm is Norm.LINF else 0.5  # FGSM corner: eps*sqrt(nnz) under l-inf; eps under l2
    assert all(s <= step * (1 + 1e-6) for s in cur.cure_step)

    # indicator: bounds ordered, fractions in [0,1], Spearman in [-1,1]
    ind = result.section("indicator")
    assert ind.indices == cur.indices
    for key in ("finite_difference", "exact"):
        res = ind.theorem1[key]
        for lo, up, lo2, upc in zip(res.lower, res.upper, res.lower_bracket, res.upper_bracket):
            assert lo <= up * (1 + 1e-9) and lo2 <= lo * (1 + 1e-9) and up <= upc * (1 + 1e-9)
        assert res.fraction_within is None or 0.0 <= res.fraction_within <= res.fraction_within_bracket + 1e-12
    assert all(math.log(2) - 1e-9 <= t <= math.log(10) for t in ind.t)
    for rho in (ind.spearman_linf, ind.spearman_l2):
        assert rho is None or -1.0 <= rho <= 1.0
    assert "DeepFool" in ind.radii_l2_source
    assert all(r is None or r > 0 for r in ind.radius_linf)

    # spectra: one entry per weight matrix, conv reshaped out x (in*k*k)
    sp = result.section("spectra")
    assert [layer.name for layer in sp.layers] == ["conv.weight", "fc.weight"]
    assert sp.layers[0].matrix_shape == (4, 9) and sp.layers[0].count == 4

    # surfaces: the centre of every grid is the sample itself
    srf = result.section("surfaces")
    c = srf.steps // 2
    assert srf.axis[c] == 0.0 and srf.extent == pytest.approx(2 * eps[0])
    assert len(srf.samples) == min(2, n_correct)
    for s in srf.samples:
        assert s.margin == pytest.approx(float(m[s.index]), rel=1e-4, abs=1e-5)
        assert [p.name for p in s.planes] == list(surfaces_mod.PLANES)
        for p in s.planes:
            assert len(p.margin) == srf.steps and all(len(r) == srf.steps for r in p.margin)
            assert p.margin[c][c] == pytest.approx(s.margin, rel=1e-4, abs=1e-5)
            assert 0.0 <= p.fraction_misclassified_within_eps <= 1.0
            assert p.min_margin_within_eps <= p.margin[c][c] + 1e-9
        df = s.planes[-1]
        assert df.predictions is not None and df.predictions[c][c] == s.label

    # landscape: weights untouched, centre = the model's own loss on the batch
    land = result.section("landscape")
    assert land.weights_restored
    for k, v in tiny_cnn.state_dict().items():
        assert torch.equal(v, weights[k]), k
    ce = nn.functional.cross_entropy(tiny_cnn(data.x), data.y).item()
    assert land.center_loss == pytest.approx(ce, rel=1e-4)
    assert land.loss_1d[len(land.loss_1d) // 2] == pytest.approx(land.center_loss)
    assert land.loss_2d[2][2] == pytest.approx(land.center_loss, rel=1e-5)


def test_same_seed_same_json(tiny_cnn, small_k):
    """Same seed, same memory format → same JSON (an automatic format is timed: test_engine_results)."""
    loaded, data = _setup(tiny_cnn, n=12)
    checks = ("curvature", "surfaces", "landscape")
    d1 = run_scan(loaded, data, _cfg(checks, seed=5, channels_last=False), command_line="t").to_dict()
    d2 = run_scan(loaded, data, _cfg(checks, seed=5, channels_last=False), command_line="t").to_dict()
    d1.pop("timings"), d2.pop("timings")
    assert json.dumps(d1) == json.dumps(d2)


class _Diag(nn.Module):
    """conv 1x2 stride 2 (kernel [[3, 4]] and zeros) then a Linear with a diagonal weight."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, (1, 2), stride=(1, 2), bias=False)
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[3.0, 4.0]]], [[[0.0, 0.0]]]]))
            self.fc.weight.copy_(torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5])))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_spectra_of_known_matrices():
    model = _Diag().eval()
    loaded, data = _setup(model, n=4, shape=(1, 1, 4), classes=4, flip_every=0)
    result = run_scan(loaded, data, _cfg(("spectra",)), command_line="t")
    _round_trip(result)
    conv, fc = result.section("spectra").layers
    assert conv.name == "conv.weight" and conv.shape == (2, 1, 1, 2) and conv.matrix_shape == (2, 2)
    assert conv.values == (5.0, 0.0) and conv.sigma_max == 5.0 and conv.ratio is None
    assert fc.values == (3.0, 2.0, 1.0, 0.5)
    assert (fc.sigma_max, fc.sigma_min, fc.ratio, fc.count) == (3.0, 0.5, 6.0, 4)
    assert fc.mean == pytest.approx(1.625) and fc.std == pytest.approx(
        float(torch.tensor([3.0, 2, 1, 0.5]).std(unbiased=False))
    )
    assert result.metrics()["spectra.fc.sigma_max"] == 3.0


class _QuadCE(nn.Module):
    """Binary classifier whose class-0 cross-entropy is exactly the quadratic
    q(x) = ½ (x−m)ᵀ A (x−m) + κ: logits (0, log(expm1(q))), so CE_0 = log(1 + e^{q} − 1) = q and the
    sample is class 0 iff q < log 2 — Theorem 1's setting with t = log 2, exactly."""

    def __init__(self, a=(40.0, 8.0), kappa=0.05):
        super().__init__()
        self.register_buffer("a", torch.tensor(a))
        self.kappa = kappa

    def forward(self, x):
        z = x.flatten(1) - 0.5
        q = 0.5 * (self.a.to(z.dtype) * z * z).sum(1) + self.kappa
        return torch.stack([torch.zeros_like(q), torch.log(torch.expm1(q))], dim=1)


def _ellipse_distance(z0: torch.Tensor, a: torch.Tensor, level: float) -> float:
    """Distance from an interior point z0 to the ellipse ½ Σ a_i z_i² = level (dense sampling)."""
    th = torch.linspace(0, 2 * math.pi, 400_001, dtype=torch.float64)
    pts = torch.stack([(2 * level / a[0]).sqrt() * th.cos(), (2 * level / a[1]).sqrt() * th.sin()], 1)
    return float((pts - z0).norm(dim=1).min())


def test_theorem1_bounds_contain_the_true_radius(monkeypatch):
    monkeypatch.setattr(curvature_mod.CurvatureCheck, "k", 12)
    model = _QuadCE().eval()
    g = torch.Generator().manual_seed(3)
    # points inside the class-0 ellipse (q < log 2), scattered so g is rarely aligned with u = e_1
    z = (torch.rand(12, 2, generator=g) - 0.5) * torch.tensor([0.2, 0.45])
    x = (0.5 + z).reshape(12, 1, 1, 2)
    y = torch.zeros(12, dtype=torch.long)
    data = DataSpec("quad", "test", x, y, ("in", "out"), "memory")
    loaded = LoadedModel(model, ModelInfo(path="q", format="safetensors", sha256="0" * 64))
    result = run_scan(loaded, data, _cfg(("curvature", "indicator"), eps=(0.05,)), command_line="t")
    _round_trip(result)
    cur, ind = result.section("curvature"), result.section("indicator")
    assert cur.n_samples == 12 and not cur.piecewise_linear and cur.exact_method == "full"
    a = torch.tensor([40.0, 8.0], dtype=torch.float64)
    level = math.log(2) - 0.05
    true = [_ellipse_distance(z[i].double(), a, level) for i in range(12)]
    for lam in cur.exact.lambda_max + cur.finite_difference.lambda_max:  # FD of a quadratic is exact
        assert lam == pytest.approx(40.0, rel=1e-6)
    assert all(t == pytest.approx(math.log(2)) for t in ind.t)
    for key in ("exact", "finite_difference"):
        res = ind.theorem1[key]
        for i, r in enumerate(true):
            assert res.lower[i] * (1 - 1e-5) <= r <= res.upper[i] * (1 + 1e-5) + 1e-6, (key, i, res.lower[i], r, res.upper[i])
        assert res.lower == res.lower_bracket  # C = 2: log 2 = log C
    # attack-found radii are upper bounds on the truth (DeepFool overshoots on a curved boundary),
    # so none falls below the lower bound
    for r_att, r in zip(ind.radii_l2, true):
        assert r_att >= r * (1 - 1e-4)
    assert ind.theorem1["exact"].fraction_below_lower == 0.0


def test_curvature_lanczos_mode_matches_full(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Softplus(), nn.Linear(12, 5)).double().float().eval()
    loaded, data = _setup(model, n=6, shape=(1, 4, 4), classes=5, flip_every=0)
    monkeypatch.setattr(curvature_mod.CurvatureCheck, "k", 4)
    full = run_scan(loaded, data, _cfg(("curvature",)), command_line="t").section("curvature")
    monkeypatch.setattr(curvature_mod.CurvatureCheck, "full_max_dim", 0)
    lan = run_scan(loaded, data, _cfg(("curvature", "indicator")), command_line="t")
    _round_trip(lan)
    lz = lan.section("curvature")
    assert full.exact_method == "full" and lz.exact_method == "lanczos"
    assert not lz.exact.complete and lz.exact.near_zero_fraction is None
    assert lz.exact.profile_ranks == tuple(range(8)) + tuple(range(8, 16))
    for a, b in zip(full.exact.lambda_max, lz.exact.lambda_max):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9)
    for a, b in zip(full.exact.lambda_min, lz.exact.lambda_min):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9)
    assert lan.section("indicator").margin_hessian_near_zero_fraction is None


def test_spearman_and_boundary_loss():
    sp = indicator_mod.spearman
    assert sp([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert sp([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert sp([1, 2, None, 3], [2, 1, 5, 3]) == pytest.approx(0.5)
    assert sp([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties: average ranks
    assert sp([1, 2], [1, 2]) is None and sp([1, 1, 1], [1, 2, 3]) is None
    z = torch.tensor([[3.0, 1.0, 1.0, 1.0], [5.0, 0.0, -50.0, -50.0]])
    t = indicator_mod.boundary_loss(z, torch.tensor([0, 0]))
    assert float(t[0]) == pytest.approx(math.log(4))  # all others tie with the runner-up: log C
    assert float(t[1]) == pytest.approx(math.log(2), abs=1e-12)


def test_jacobian_zero_threshold_is_configurable(tiny_cnn, monkeypatch):
    loaded, data = _setup(tiny_cnn, n=8)
    monkeypatch.setattr(jacobian_mod.JacobianCheck, "zero_threshold", 1e9)
    sec = run_scan(loaded, data, _cfg(("jacobian",)), command_line="t").section("jacobian")
    assert sec.zero_threshold == 1e9 and sec.margin.mean_zero_fraction == 1.0


def test_indicator_reuses_the_minimal_sections_radii(tiny_cnn, small_k):
    loaded, data = _setup(tiny_cnn, n=16)
    result = run_scan(loaded, data, _cfg(("minimal", "curvature", "indicator")), command_line="t")
    ind, mini = result.section("indicator"), result.section("minimal")
    assert ind.radii_linf_source.startswith("minimal section")
    assert ind.radii_linf == tuple(mini.radii[i] for i in ind.indices)
    assert ind.radii_l2_source.startswith("DeepFool")  # the scan's norm is l-inf: l2 radii come from DeepFool
    _round_trip(result)


def test_no_correct_sample_gives_empty_but_valid_sections(tiny_cnn, small_k):
    loaded, data = _setup(tiny_cnn, n=6, flip_every=1)  # every label wrong
    result = run_scan(loaded, data, _cfg(ALL), command_line="t")
    assert result.section("clean").accuracy == 0.0
    assert result.section("curvature").n_samples == 0 and result.section("curvature").exact is None
    assert result.section("indicator").theorem1 == {} and result.section("surfaces").samples == ()
    assert result.section("jacobian").heatmaps == ()
    _round_trip(result)
