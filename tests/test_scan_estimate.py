"""The estimate a scan prints before its first check (issue 15): an upper bound of the model passes
the scan then records, reached by a sample that resists every attack to its last step."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import TinyCNN

from robaudit.config import ScanConfig
from robaudit.data.spec import DataSpec
from robaudit.engine import build_checks, run_scan
from robaudit.estimate import PassPlan
from robaudit.models.spec import LoadedModel, ModelInfo

ATTACKS = (
    "fgsm,pgd:steps=4:restarts=2,apgd-ce:n_iter=5,apgd-t:n_iter=4:n_target_classes=3,"
    "fab-t:n_iter=3:n_target_classes=2,square:n_queries=12"
)
LINE = re.compile(r"estimate: ≤ ([\d,]+) model passes per sample \(([\d,]+) with a backward; [^)]*\) × (\d+) samples ≈ ")


class SmoothTinyCNN(TinyCNN):
    """TinyCNN with softplus: not piecewise linear, so curvature takes the exact Hessian's HVPs."""

    def forward(self, x):
        return self.fc(self.pool(torch.nn.functional.softplus(self.conv(x))).flatten(1))


def _setup(n: int = 6, model_class=TinyCNN):
    torch.manual_seed(0)
    model = model_class().eval()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct: all of them are attacked
    data = DataSpec("synthetic", "test", x, y, tuple(str(i) for i in range(10)), "memory")
    return LoadedModel(model, ModelInfo(path="tiny", format="in-memory", sha256="0" * 64)), data


def _scan(eps: str, capsys, quiet: bool = False):
    loaded, data = _setup()
    config = ScanConfig.parse(checks="clean,attacks", attacks=ATTACKS, eps=eps, device="cpu", batch_size=4)
    result = run_scan(loaded, data, config, quiet=quiet)
    return result, _unwrapped(capsys.readouterr().err), data.n


def _unwrapped(err: str) -> str:
    """stderr with the console's line wrapping undone."""
    return re.sub(r"\s+", " ", err)


def _recorded(result) -> tuple[int, int]:
    runs = result.section("attacks").runs
    forward = sum(round(r.forward_per_sample * r.n_attacked) for r in runs)
    backward = sum(round(r.backward_per_sample * r.n_attacked) for r in runs)
    return forward, backward


def test_estimate_is_printed_and_bounds_the_recorded_passes(capsys):
    result, err, n = _scan("0.02,0.3", capsys)
    match = LINE.search(err)
    assert match, err
    forward, backward, samples = (int(g.replace(",", "")) for g in match.groups())
    assert samples == n
    assert "not counted" not in err  # clean and every attack here bound their cost
    rec_forward, rec_backward = _recorded(result)
    assert 0 < rec_forward <= forward * n
    assert 0 < rec_backward <= backward * n
    assert result.passes["attacks"]["grad"] <= backward * n
    assert rec_forward < forward * n  # at ε = 0.3 some samples break early: the bound is not reached


def test_the_bound_is_reached_when_nothing_breaks(capsys):
    """At ε = 0 no correct sample can break, so every attack runs to its last step on every sample:
    the recorded passes equal the bound (plus the clean check's forward, counted in the bound)."""
    result, err, n = _scan("0", capsys)
    forward, backward, _ = (int(g.replace(",", "")) for g in LINE.search(err).groups())
    rec_forward, rec_backward = _recorded(result)
    assert rec_forward + n == forward * n  # + the clean check's one forward per sample
    assert rec_backward == backward * n


def test_quiet_scans_print_no_estimate(capsys):
    _, err, _ = _scan("0.02", capsys, quiet=True)
    assert "estimate" not in err


def test_the_bound_covers_every_counted_check(capsys):
    """sanity, margins, minimal, jacobian and spectra are counted: every gradient pass the scan records is within the bound."""
    loaded, data = _setup()
    config = ScanConfig.parse(
        checks="clean,sanity,attacks,margins,minimal,jacobian,spectra",
        attacks="pgd:steps=3",
        eps="0.02",
        device="cpu",
        batch_size=4,
    )
    result = run_scan(loaded, data, config, quiet=False)
    _, backward, _ = (int(g.replace(",", "")) for g in LINE.search(_unwrapped(capsys.readouterr().err)).groups())
    recorded = sum(c["grad"] + c["hvp"] for c in result.passes.values())
    assert result.passes["jacobian"]["grad"] > 0 and result.passes["minimal"]["grad"] > 0
    assert recorded <= backward * data.n


GEOMETRY = (
    "clean,curvature:k=2:n_probes=2:full_max_dim={full},indicator,surfaces:n_samples=1:steps=3,"
    "landscape:n_samples=4:steps_1d=4:steps_2d=2"
)


@pytest.mark.parametrize("model_class", [TinyCNN, SmoothTinyCNN])
@pytest.mark.parametrize("full_max_dim", [4096, 16])  # d = 64: full spectra (shared sweep), then Lanczos
def test_the_bound_covers_the_geometry_checks(capsys, monkeypatch, full_max_dim, model_class):
    """curvature, indicator, surfaces and landscape are counted, and no check makes more model passes
    than its bound: every pass (a forward of a row) counted by a hook on the model that charges it to
    the check computing at the time, and the passes with a backward by the ledger's input gradients
    (ScanResult.passes "grad": one per backward of a row; its "hvp" counts a finite-difference HVP
    once more on top of that gradient, so it is not a pass count)."""
    loaded, data = _setup(model_class=model_class)
    config = ScanConfig.parse(checks=GEOMETRY.format(full=full_max_dim), eps="0.02", device="cpu", batch_size=4)
    checks = {c.name: c for c in build_checks(config)}
    plan = PassPlan(config=config, eps=(0.02,), input_shape=data.input_shape, num_classes=10, n=data.n, data_n=data.n)
    bounds = {name: checks[name].max_passes(plan) for name in ("curvature", "indicator", "surfaces", "landscape")}
    current, forwards = [None], {}
    for name, check in checks.items():

        def compute(self, ctx, _name=name, _compute=type(check).compute):  # noqa: B008 - bound per loop iteration
            current[0] = _name
            try:
                return _compute(self, ctx)
            finally:
                current[0] = None

        monkeypatch.setattr(type(check), "compute", compute)
    loaded.model.register_forward_hook(
        lambda module, args, out: forwards.__setitem__(current[0], forwards.get(current[0], 0) + args[0].shape[0])
    )
    result = run_scan(loaded, data, config, quiet=False)
    err = _unwrapped(capsys.readouterr().err)
    assert LINE.search(err) and "not counted" not in err
    for name, (forward, backward) in bounds.items():  # bounds are per sample: × n, to 6 decimals
        assert 0 < forwards[name] <= round(forward * data.n, 6), name
        assert result.passes[name]["grad"] <= round(backward * data.n, 6), name
    assert result.passes["curvature"]["hvp"] > 0 and result.passes["indicator"]["grad"] > 0
    assert forwards["landscape"] == (4 + 2**2 + 1) * 4  # even steps_1d: one more forward for the centre


def test_uncounted_checks_are_named(capsys, monkeypatch):
    """A check without a bound (a plugin's; here a built-in with its bound taken away)."""
    from robaudit.checks.base import Check
    from robaudit.checks.surfaces import SurfacesCheck

    monkeypatch.setattr(SurfacesCheck, "max_passes", Check.max_passes)
    loaded, data = _setup()
    config = ScanConfig.parse(checks="clean,attacks,surfaces", attacks="pgd:steps=2", eps="0.02", device="cpu", batch_size=8)
    run_scan(loaded, data, config, quiet=False)
    assert "not counted: surfaces" in _unwrapped(capsys.readouterr().err)
