"""Certification (robaudit.certify, the certify check): bounds that could fail their oracles.

* a linear model: IBP and CROWN equal the analytic minimum margin over the box-clipped ball;
* small random ReLU nets (an MLP, a conv net with BatchNorm and max pooling): IBP, CROWN and
  α-CROWN ≤ the exact MILP minimum ≤ the margin at a point found by attacks, and the MILP's
  minimizer reproduces its margin in a forward pass;
* soundness: no certified sample is broken by the standard attacks or by dense random sampling;
* tracing: registry networks and a torchvision ResNet-18 trace (or name what blocks them);
* the check end to end: the bracket, metric names, gates, JSON/HTML/CSV, shards = one process,
  exact leaving nothing unresolved on a small trained net, refusals in one line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robaudit import api
from robaudit.certify import ThreatSet, UnsupportedModel, UntraceableModel, margin_spec, other_classes, spec_bounds, trace
from robaudit.certify.exact import ExactVerifier
from robaudit.cli.main import app
from robaudit.data import load_dataset
from robaudit.data.registry import DataRequest
from robaudit.models import NormalizedModel

runner = CliRunner()


def _bounds(model, x, y, eps, norm="linf", dtype=torch.float64):
    graph = trace(model, tuple(x.shape[1:]))
    threat = ThreatSet(x.to(dtype), eps, norm)
    spec = margin_spec(y, graph.num_classes, dtype)
    out = {}
    with torch.no_grad():
        for method in ("ibp", "crown", "alpha-crown"):
            out[method], boxes = spec_bounds(graph, threat, spec, method)
    return graph, out, boxes


def _margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[B, C−1]: z_y − z_j for j ≠ y, in margin_spec's order."""
    return torch.einsum("bkc,bc->bk", margin_spec(y, logits.shape[1], logits.dtype), logits)


# --- a linear model: the bounds are exact -------------------------------------------------------------


class Linear(nn.Module):
    def __init__(self, d: int, k: int):
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(d, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_linear_model_linf_bounds_equal_the_analytic_minimum():
    model = NormalizedModel(Linear(12, 4), mean=[0.4], std=[0.3]).double()
    x = torch.rand(6, 1, 3, 4, dtype=torch.float64)
    x[0] = 0.0  # the box clips the ball
    x[1] = 1.0
    y = torch.arange(6) % 4
    eps = 0.2
    _, got, _ = _bounds(model, x, y, eps)
    w = model.inner.fc.weight.double() / float(model.std)  # pixel-space weights (normalization inside)
    lo, hi = (x - eps).clamp(min=0).flatten(1), (x + eps).clamp(max=1).flatten(1)
    spec = margin_spec(y, 4, torch.float64)
    a = torch.einsum("bkc,cd->bkd", spec, w)  # margin coefficients per pixel
    const = _margins(model(torch.zeros_like(x)), y)
    exact = const + (a.clamp(min=0) * lo[:, None] + a.clamp(max=0) * hi[:, None]).sum(-1)
    for method in ("ibp", "crown", "alpha-crown"):
        torch.testing.assert_close(got[method], exact, rtol=1e-10, atol=1e-10)


def test_linear_model_l2_bounds_equal_the_analytic_minimum_inside_the_box():
    model = NormalizedModel(Linear(12, 4)).double()
    x = 0.3 + 0.4 * torch.rand(5, 1, 3, 4, dtype=torch.float64)
    y = torch.arange(5) % 4
    eps = 0.25  # the ball lies inside [0,1]: min a·x' = a·x − ε‖a‖₂
    _, got, _ = _bounds(model, x, y, eps, "l2")
    w = model.inner.fc.weight.double()
    a = torch.einsum("bkc,cd->bkd", margin_spec(y, 4, torch.float64), w)
    exact = _margins(model(x), y) - eps * a.norm(dim=-1)
    for method in ("crown", "alpha-crown"):
        torch.testing.assert_close(got[method], exact, rtol=1e-6, atol=1e-6)
    assert (got["ibp"] <= exact + 1e-9).all()  # IBP bounds the ℓ2 ball by its ℓ∞ box


def test_linear_model_l2_bound_where_the_box_clips_the_ball():
    """The dual bound is sound and tight against a direct solution of the convex problem."""
    from scipy.optimize import minimize

    model = NormalizedModel(Linear(6, 3)).double()
    x = torch.tensor([[[[0.02, 0.97, 0.5, 0.01, 0.99, 0.3]]]], dtype=torch.float64)
    y = torch.tensor([1])
    eps = 0.6
    _, got, _ = _bounds(model, x, y, eps, "l2")
    w = model.inner.fc.weight.detach().double().numpy()
    b = model.inner.fc.bias.detach().double().numpy()
    x0 = x.flatten().numpy()
    for k, j in enumerate(other_classes(y, 3)[0].tolist()):
        a, c = w[1] - w[j], b[1] - b[j]
        res = minimize(
            lambda v, a=a, c=c: a @ v + c,
            x0,
            jac=lambda v, a=a: a,
            bounds=[(0, 1)] * 6,
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": lambda v: eps**2 - ((v - x0) ** 2).sum(), "jac": lambda v: -2 * (v - x0)}],
            options={"ftol": 1e-12, "maxiter": 500},
        )
        assert res.success
        assert float(got["crown"][0, k]) <= res.fun + 1e-9
        assert float(got["crown"][0, k]) >= res.fun - 1e-4


# --- small random ReLU nets: bounds ≤ exact ≤ attacks -----------------------------------------------


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.LeakyReLU(0.1), nn.Linear(12, 4)
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(2.0)

    def forward(self, x):
        return self.net(x)


class ConvBNPool(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn(self.conv1(x))))
        return self.fc(torch.relu(self.conv2(h)).flatten(1))


@pytest.mark.parametrize("net, shape, eps", [(MLP, (1, 4, 4), 0.08), (ConvBNPool, (1, 8, 8), 0.03)])
def test_bounds_below_the_exact_minimum_below_the_attacks(net, shape, eps):
    from robaudit.attacks.pgd import PGD
    from robaudit.threat import Norm, ThreatModel

    model = NormalizedModel(net(), mean=[0.5], std=[0.25]).double().eval()
    torch.manual_seed(2)
    x = torch.rand(4, *shape, dtype=torch.float64)
    y = model(x).argmax(1)
    graph, got, boxes = _bounds(model, x, y, eps)
    verifier = ExactVerifier(graph, model, time_limit=60)
    others = other_classes(y, graph.num_classes)
    # an attack's point: PGD on the margin loss, many steps
    out = PGD(steps=100, restarts=2, loss="cw").run(model, x, y, ThreatModel(Norm.LINF, eps), torch.Generator().manual_seed(0))
    with torch.no_grad():
        attacked = _margins(model(out.x_adv), y).min(1).values
    tight = 0
    for b in range(x.shape[0]):
        sample_boxes = [(lo[b], hi[b]) for lo, hi in boxes]
        exact = []
        for k, j in enumerate(others[b].tolist()):
            value, dual, point = verifier.minimize(x[b], int(y[b]), j, eps, sample_boxes)
            assert value is not None and point is not None
            # the minimizer is in the threat set and reproduces its margin in a forward pass
            assert (point - x[b]).abs().max() <= eps + 1e-6 and point.min() >= 0 and point.max() <= 1
            with torch.no_grad():
                z = model(point[None].double())[0]
            assert abs(float(z[y[b]] - z[j]) - value) <= 1e-4 * (1 + abs(value))
            for method in ("ibp", "crown", "alpha-crown"):
                assert float(got[method][b, k]) <= value + 1e-6, (method, b, j)
            assert float(got["crown"][b, k]) <= float(got["alpha-crown"][b, k]) + 1e-9
            tight += float(got["crown"][b, k]) > float(got["ibp"][b, k])
            exact.append(value)
        assert min(exact) <= float(attacked[b]) + 1e-5  # the exact minimum is below any found point
    assert tight > 0  # CROWN is tighter than IBP on some margin


def test_exact_decides_every_sample_of_a_small_net():
    model = NormalizedModel(MLP(), mean=[0.5], std=[0.25]).eval()
    torch.manual_seed(5)
    x = torch.rand(24, 1, 4, 4)
    y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4  # some misclassified samples
    y[-4:] = torch.arange(4)  # every class present (an in-memory dataset's classes are 0..max(y))
    result = api.scan(model, (x, y), eps=[0.05, 0.12], checks="clean,attacks,certify:method=exact", attacks="standard")
    sec = result.section("certify")
    for run in sec.runs:
        assert set(run.status) <= {"certified", "falsified", "incorrect", "broken"}
        assert run.n_unresolved == 0
        assert run.certified_accuracy == pytest.approx(run.upper_accuracy)
        # falsified samples are misclassified by the float32 model at a point within ε
    assert any(r.n_falsified for r in sec.runs) or any(r.n_certified for r in sec.runs)
    assert not [f for f in result.flags if f.code == "certified-but-broken"]


class ConvZoo(nn.Module):
    """Padding, stride, dilation, groups, max pooling with padding, BatchNorm: what patches must get right."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.c1 = nn.Conv2d(2, 4, 3, padding=2, dilation=2)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.c3 = nn.Conv2d(6, 4, 2)
        self.fc = nn.Linear(4 * 2 * 2, 5)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.running_mean.uniform_(-0.2, 0.2)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn(self.c1(x))))
        h = torch.relu(self.c3(torch.relu(self.c2(h))))
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("norm, eps", [("linf", 0.02), ("l2", 0.1)])
def test_local_windows_equal_the_dense_computation(monkeypatch, norm, eps):
    import robaudit.certify.bounds as bounds_module
    from robaudit.certify import intermediate_bounds

    model = NormalizedModel(ConvZoo(), mean=[0.5, 0.4], std=[0.2, 0.3]).double().eval()
    x = torch.rand(5, 2, 12, 12, dtype=torch.float64)
    graph = trace(model, (2, 12, 12))
    threat = ThreatSet(x, eps, norm)
    with torch.no_grad():
        local = intermediate_bounds(graph, threat, "crown")
        monkeypatch.setattr(bounds_module, "USE_PATCHES", False)
        dense = intermediate_bounds(graph, threat, "crown")
    tightened = 0
    for (l1, u1), (l2, u2), (li, ui) in zip(local, dense, bounds_module.ibp_bounds(graph, threat)):
        torch.testing.assert_close(l1, l2, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(u1, u2, rtol=1e-9, atol=1e-9)
        tightened += int(((l1 > li + 1e-9) | (u1 < ui - 1e-9)).sum())
    assert tightened > 0  # CROWN did tighten some boxes


# --- soundness by sampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("norm, eps", [("linf", 0.03), ("l2", 0.05)])
def test_no_certified_sample_is_broken_by_attacks_or_sampling(norm, eps):
    model = NormalizedModel(ConvBNPool(), mean=[0.5], std=[0.25]).eval()
    torch.manual_seed(7)
    x = torch.rand(32, 1, 8, 8)
    y = model(x).argmax(1)
    y[-4:] = torch.arange(4)  # every class present (an in-memory dataset's classes are 0..max(y))
    result = api.scan(
        model, (x, y), eps=[eps], norm=norm, checks="clean,attacks,certify:method=crown:skip_broken=false", attacks="standard"
    )
    run = result.section("certify").runs[0]
    robust = result.section("attacks").ensemble_robust[next(iter(result.section("attacks").ensemble_robust))]
    certified = torch.tensor(run.certified)
    assert certified.any(), "the test needs certified samples"
    assert not (certified & ~torch.tensor(robust)).any()
    # dense random sampling in the set (ℓ∞: the box's corners too)
    gen = torch.Generator().manual_seed(0)
    xs = x[certified]
    ys = y[certified]
    with torch.no_grad():
        for _ in range(40):
            d = torch.rand((xs.shape[0], 64, *xs.shape[1:]), generator=gen) * 2 - 1
            if norm == "linf":
                d = torch.where(torch.rand(d.shape, generator=gen) < 0.5, d.sign(), d) * eps
            else:
                d = (
                    d
                    / d.flatten(2).norm(dim=-1)[..., None, None, None]
                    * eps
                    * torch.rand(d.shape[:2], generator=gen)[..., None, None, None]
                )
            pts = (xs[:, None] + d).clamp(0, 1).flatten(0, 1)
            pred = model(pts).argmax(1).reshape(xs.shape[0], -1)
            assert (pred == ys[:, None]).all()


# --- tracing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, kwargs, shape",
    [
        ("small-cnn", {"width": 4, "hidden": 16}, (1, 28, 28)),
        ("yu-convnet", {}, (3, 32, 32)),
        ("resnet18", {}, (3, 32, 32)),
        ("preact-resnet18", {}, (3, 32, 32)),
        ("wrn-28-10", {"depth": 10, "widen_factor": 1}, (3, 32, 32)),
        ("mlp", {"hidden": 8}, (1, 28, 28)),
    ],
)
def test_registry_networks_trace(arch, kwargs, shape):
    from robaudit.models.architectures import ARCHITECTURES

    net = ARCHITECTURES.get(arch)(num_classes=10, in_channels=shape[0], **kwargs)
    model = NormalizedModel(net, mean=[0.5] * shape[0], std=[0.25] * shape[0]).eval()
    try:
        graph = trace(model, shape)
    except UnsupportedModel as exc:
        assert exc.blocking and all("(" in b for b in exc.blocking)  # named layers
        return
    x = torch.rand(2, *shape)
    torch.testing.assert_close(graph.forward(x), model(x), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        low, _ = spec_bounds(graph, ThreatSet(x, 1 / 255), margin_spec(model(x).argmax(1), 10), "ibp")
    assert torch.isfinite(low).all()


def test_torchvision_resnet18_traces_and_bounds():
    import torchvision

    torch.manual_seed(0)
    model = NormalizedModel(torchvision.models.resnet18(num_classes=10), mean=[0.5] * 3, std=[0.25] * 3).eval()
    graph = trace(model, (3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(graph.forward(x), model(x), rtol=1e-4, atol=1e-4)
    kinds = {type(n.op).__name__ for n in graph.nodes[1:]}
    assert {"Conv2d", "ElementwiseAffine", "MaxPool2d", "Add", "MonotoneLinear", "Linear", "ReLU"} <= kinds
    y = model(x).argmax(1)
    with torch.no_grad():
        low, _ = spec_bounds(graph, ThreatSet(x, 1e-4), margin_spec(y, 10), "crown", intermediate="ibp")
        margins = _margins(model(x), y)
    assert (low <= margins + 1e-4).all()


class WithSiLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(16, 8), nn.SiLU(), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx can't trace it
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


def test_unsupported_and_untraceable_models_are_named():
    with pytest.raises(UnsupportedModel) as info:
        trace(NormalizedModel(WithSiLU()), (1, 4, 4))
    assert info.value.blocking == ["inner.act (SiLU)"]
    with pytest.raises(UntraceableModel, match="torch.fx cannot trace"):
        trace(NormalizedModel(Branchy()), (1, 4, 4))


def test_blocked_model_leaves_the_rest_of_the_scan(tmp_path):
    model = NormalizedModel(WithSiLU()).eval()
    x = torch.rand(8, 1, 4, 4)
    y = torch.arange(8) % 4
    result = api.scan(model, (x, y), eps=[0.05], checks="clean,attacks,certify")
    sec = result.section("certify")
    assert sec.blocked_by == ("inner.act (SiLU)",) and sec.runs == ()
    assert result.section("attacks").runs
    assert not any(k.startswith("certified_acc.") for k in result.metrics())


# --- the check through the CLI --------------------------------------------------------------------------


def _train_mlp(epochs: int) -> nn.Module:
    """A 784-24-10 MLP trained full-batch on the embedded Fashion-MNIST sample (seeded)."""
    data = load_dataset("demo", DataRequest(split="test"))
    x, y = data.batch(torch.arange(data.n)), data.y
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 24), nn.ReLU(), nn.Linear(24, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


@pytest.fixture(scope="module")
def small_mlp_file(tmp_path_factory):
    """The MLP after 60 full-batch steps, pickled whole: loaded with --trust-checkpoint (a file this test wrote)."""
    path = tmp_path_factory.mktemp("certify") / "mlp.pt"
    torch.save(_train_mlp(60), path)
    return path


def _cli_scan(path, *args):
    res = runner.invoke(app, ["scan", str(path), "--trust-checkpoint", "-d", "demo", "-q", *map(str, args)])
    return res.exit_code, res.output


def test_cli_bracket_json_html_csv_gate(small_mlp_file, tmp_path):
    out = tmp_path / "r.json"
    code, text = _cli_scan(
        small_mlp_file,
        "-n",
        40,
        "--checks",
        "clean,attacks,certify",
        "--attacks",
        "fgsm,pgd",
        "--eps",
        "0.005,0.02",
        "--json",
        out,
        "--html",
        tmp_path / "r.html",
        "--csv",
        tmp_path / "csv",
        "--require",
        "certified_acc.crown.linf@0.005 >= 0.0",
    )
    assert code == 0, text
    data = json.loads(out.read_text())
    sec = data["sections"]["certify"]
    attacks = data["sections"]["attacks"]
    for run in sec["runs"]:
        key = [k for k in attacks["ensemble"] if abs(float(k) - run["eps"]) < 1e-12][0]
        robust = attacks["ensemble_robust"][key]
        assert sum(run["certified"]) == run["n_certified"]
        assert run["n_unresolved"] == sum(r and not c for r, c in zip(robust, run["certified"]))
        assert run["certified_accuracy"] <= run["upper_accuracy"] == attacks["ensemble"][key]
        assert all(r for r, c in zip(robust, run["certified"]) if c)
    assert sec["runs"][0]["n_certified"] > 0  # a small net at ε = 0.005 certifies something
    assert "certified_acc.crown.linf@0.005" in data["intervals"]["metrics"]
    html = (tmp_path / "r.html").read_text()
    assert "Certified robust accuracy: the bracket" in html and "Certified and attacked robust accuracy versus epsilon" in html
    header = (tmp_path / "csv" / "samples.csv").read_text().splitlines()[0]
    assert "certified.crown.linf@0.005" in header and "certified_lower.crown.linf@0.02" in header
    # the gate reads the certified accuracy with its interval
    code, text = _cli_scan(
        small_mlp_file,
        "-n",
        40,
        "--checks",
        "clean,certify",
        "--eps",
        "0.005",
        "--require",
        "lower(certified_acc.crown.linf@0.005) >= 0.99",
    )
    assert code == 1, text


def test_list_metrics_names_the_certified_accuracies(small_mlp_file):
    code, text = _cli_scan(
        small_mlp_file, "--checks", "clean,attacks,certify:method=ibp", "--eps", "0.01,8/255", "--list-metrics"
    )
    assert code == 0, text
    for name in (
        "certified_acc.ibp.linf@0.01",
        "certified_acc.ibp.linf@8/255",
        "certify.unresolved.ibp.linf@0.01",
        "certify.upper.ibp.linf@8/255",
    ):
        assert name in text


def test_exact_refusals_are_one_line(small_mlp_file):
    code, text = _cli_scan(small_mlp_file, "--checks", "clean,certify:method=exact", "--norm", "l2", "--eps", "0.1")
    assert code == 2 and "works with --norm linf only" in text and len(text.strip().splitlines()) == 1
    code, text = _cli_scan(
        small_mlp_file,
        "-n",
        20,
        "--checks",
        "clean,attacks,certify:method=exact:max_unstable=1",
        "--eps",
        "0.05",
        "--attacks",
        "standard",
    )
    assert code == 2 and "max_unstable=1" in text and len(text.strip().splitlines()) == 1
    code, text = _cli_scan(small_mlp_file, "--checks", "certify:method=magic")
    assert code == 2 and "certify:method='magic'" in text


def test_shards_merge_to_the_single_process_result(small_mlp_file, tmp_path):
    args = [
        "-n",
        24,
        "--checks",
        "clean,attacks,certify:radius=true:radius_steps=6",
        "--attacks",
        "fgsm",
        "--eps",
        "0.005,0.01",
    ]
    code, text = _cli_scan(small_mlp_file, *args, "--json", tmp_path / "one.json")
    assert code == 0, text
    for k in range(2):
        code, text = _cli_scan(small_mlp_file, *args, "--shard", f"{k}/2", "--json", tmp_path / f"part{k}.json")
        assert code == 0, text
    res = runner.invoke(
        app, ["merge", str(tmp_path / "part0.json"), str(tmp_path / "part1.json"), "-o", str(tmp_path / "m.json"), "-q"]
    )
    assert res.exit_code == 0, res.output
    one = json.loads((tmp_path / "one.json").read_text())["sections"]["certify"]
    merged = json.loads((tmp_path / "m.json").read_text())["sections"]["certify"]
    assert len(one["runs"]) == len(merged["runs"]) == 2
    for a, b in zip(one["runs"], merged["runs"]):
        assert a["certified"] == b["certified"] and a["status"] == b["status"]
        np.testing.assert_allclose(
            [v for v in a["lower"] if v is not None], [v for v in b["lower"] if v is not None], rtol=1e-5, atol=1e-5
        )
    assert one["radius"] == merged["radius"]
    radii = [r for r in one["radius"] if r is not None]
    assert radii and all(0 <= r <= one["radius_max"] for r in radii)
    # a sample certified at ε has a certified radius of at least ε (to the bisection's resolution)
    for c, r in zip(one["runs"][0]["certified"], one["radius"]):
        if c:
            assert r >= one["runs"][0]["eps"] - one["radius_max"] / 2**6


def test_compare_guards_certified_accuracy(small_mlp_file, tmp_path):
    """A less trained model certifies fewer samples; compare --max-drop flags certified_acc."""
    from robaudit.compare import compare_results
    from robaudit.results import ScanResult

    worse = tmp_path / "worse.pt"
    torch.save(_train_mlp(8), worse)
    args = ["-n", 40, "--checks", "clean,certify", "--eps", "0.005"]
    assert _cli_scan(small_mlp_file, *args, "--json", tmp_path / "a.json")[0] == 0
    assert _cli_scan(worse, *args, "--json", tmp_path / "b.json")[0] == 0
    before, after = ScanResult.read_json(tmp_path / "a.json"), ScanResult.read_json(tmp_path / "b.json")
    name = "certified_acc.crown.linf@0.005"
    assert before.metrics()[name] - after.metrics()[name] > 0.01  # the premise
    assert name in {d.metric for d in compare_results(before, after).regressions(0.01)}
    res = runner.invoke(app, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--max-drop", "0.01"])
    assert res.exit_code == 1 and name in res.output, res.output
