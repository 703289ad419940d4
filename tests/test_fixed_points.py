"""APGD and FAB-T stop a run at a fixed point (issue 25): where the input gradient is exactly zero
and the iterate no longer moves, every later iteration would compute exactly the same, so the run
ends there. The outputs must equal those with the early stop forced off, bit for bit — on a
model whose input gradients are all zero (input quantization) and on an ordinary one — and on the
quantized model the gradient attacks must do next to no iterations."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TinyCNN
from torch import nn

from robaudit.attacks import ATTACKS
from robaudit.attacks.base import Attack
from robaudit.config import ScanConfig
from robaudit.data.spec import DataSpec
from robaudit.engine import FixedBlockModel, run_scan
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.rng import SampleRNG
from robaudit.threat import Norm, ThreatModel


class Quantized(nn.Module):
    """``model`` on inputs rounded to 8 bits: round() has a zero derivative, so every input
    gradient is exactly zero (a common accidental gradient mask)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 255) / 255)


def _case(quantized: bool, n: int = 12):
    torch.manual_seed(0)
    net = TinyCNN().eval()
    model = Quantized(net) if quantized else net
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(3)).float() / 255
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct
    # one call shape: a row's arithmetic doesn't depend on its batch (as with --compute-block)
    return FixedBlockModel(model, 4), x, y


SPECS = [
    ("apgd-ce", dict(n_iter=30)),
    ("apgd-t", dict(n_iter=20, n_target_classes=3)),
    ("fab-t", dict(n_iter=20, n_target_classes=3)),
    ("fab-t", dict(n_iter=8, n_target_classes=2, n_restarts=2)),
]


def _run(name, params, model, x, y, threat, stop: bool):
    attack = ATTACKS.get(name)(**params)
    attack.stop_at_fixed_points = stop
    out = attack.run(model, x, y, threat, SampleRNG.for_indices(0, "fixed", torch.arange(x.shape[0])))
    return out, attack.counter


@pytest.mark.parametrize("quantized", [True, False], ids=["quantized", "ordinary"])
@pytest.mark.parametrize("name,params", SPECS)
@pytest.mark.parametrize("norm,eps", [(Norm.LINF, 0.03), (Norm.L2, 0.3)])
def test_early_stop_gives_the_same_outputs(quantized, name, params, norm, eps):
    model, x, y = _case(quantized)
    threat = ThreatModel(norm, eps)
    off, c_off = _run(name, params, model, x, y, threat, stop=False)
    on, c_on = _run(name, params, model, x, y, threat, stop=True)
    assert torch.equal(on.x_adv, off.x_adv)
    assert torch.equal(on.success, off.success)
    assert c_on.backward <= c_off.backward and c_on.forward <= c_off.forward
    if quantized:
        assert int((~off.success).sum()) >= 6, "the test needs samples that resist to the end"
        if params.get("n_restarts", 1) == 1:
            assert c_on.backward < c_off.backward / 4
        else:  # FAB's random restarts contract towards x by α_max per step, moving for ~100 steps:
            assert c_on.backward < c_off.backward  # only its runs from x end early


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_quantized_model_apgd_runs_end_at_their_start(norm):
    """Each APGD run of a robust sample takes exactly one gradient (at its random start) — at most
    one more where projecting the start rounds it by an ulp; FAB-T's runs from x end within a few
    iterations (x1 ← 0.9·x1 + 0.1·x settles to a float fixed point)."""
    model, x, y = _case(True)
    threat = ThreatModel(norm, 0.03 if norm is Norm.LINF else 0.3)
    for name, params, runs_per_sample, per_run in (
        ("apgd-ce", dict(n_iter=100), 1, 2),
        ("apgd-t", dict(n_iter=100), 9, 2),
        ("fab-t", dict(n_iter=100), 9, 10),
    ):
        out, counter = _run(name, params, model, x, y, threat, stop=True)
        robust = int((~out.success).sum())
        assert robust >= 6
        assert counter.backward <= robust * runs_per_sample * per_run + int(out.success.sum()) * runs_per_sample * 100, name
        if name.startswith("apgd"):
            assert counter.backward >= robust * runs_per_sample  # a run's start is always evaluated


def test_ordinary_model_runs_every_iteration():
    """Nothing is skipped where the gradient is not zero: the pass counts are those of the full runs."""
    model, x, y = _case(False)
    threat = ThreatModel(Norm.LINF, 1e-6)  # nothing breaks: every run goes to its end
    for name, params in SPECS:
        off, c_off = _run(name, params, model, x, y, threat, stop=False)
        on, c_on = _run(name, params, model, x, y, threat, stop=True)
        assert not bool(off.success.any())
        assert (c_on.forward, c_on.backward) == (c_off.forward, c_off.backward), name


def _scan_json(quantized: bool, monkeypatch, stop: bool) -> dict:
    monkeypatch.setattr(Attack, "stop_at_fixed_points", stop)
    torch.manual_seed(0)
    net = TinyCNN().eval()
    model = Quantized(net) if quantized else net
    x = torch.randint(0, 256, (16, 1, 8, 8), generator=torch.Generator().manual_seed(5)).float() / 255
    with torch.no_grad():
        y = model(x).argmax(1)
    data = DataSpec("synthetic", "test", x, y, tuple(str(i) for i in range(10)), "memory")
    config = ScanConfig.parse(
        checks="clean,attacks",
        eps="0.02,0.05",
        attacks="apgd-ce:n_iter=20,apgd-t:n_iter=10:n_target_classes=3,fab-t:n_iter=10:n_target_classes=3,square:n_queries=60",
        ensemble="cascade",
        device="cpu",
        batch_size=8,
        compute_block=4,
        channels_last=False,
    )
    result = run_scan(LoadedModel(model, ModelInfo(path="m", format="in-memory", sha256="0" * 64)), data, config)
    return result.to_dict()


@pytest.mark.parametrize("quantized", [True, False], ids=["quantized", "ordinary"])
def test_scan_results_equal_with_the_early_stop_off(quantized, monkeypatch):
    """A whole cascade scan: every section equal except the attacks' pass counts and seconds (the
    pass counts are those actually run)."""
    on = _scan_json(quantized, monkeypatch, True)
    off = _scan_json(quantized, monkeypatch, False)
    passes = {}
    for d in (on, off):
        for run in d["sections"]["attacks"]["runs"]:
            run.pop("seconds")
            passes.setdefault(run["attack"] + str(run["eps"]), []).append(
                (run.pop("forward_per_sample"), run.pop("backward_per_sample"))
            )
        d.pop("timings")
        d["provenance"].pop("command_line", None)
    assert json.dumps(on["sections"], sort_keys=True) == json.dumps(off["sections"], sort_keys=True)
    assert on["flags"] == off["flags"]
    gradient = {k: v for k, v in passes.items() if k.startswith(("apgd", "fab"))}
    for (_f_on, b_on), (_f_off, b_off) in gradient.values():
        assert b_on <= b_off
    if quantized:
        assert sum(v[0][1] for v in gradient.values()) < sum(v[1][1] for v in gradient.values()) / 4
