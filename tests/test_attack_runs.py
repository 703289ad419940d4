"""Packed runs (robaudit.attacks._runs): APGD's and FAB-T's restarts/targets sharing model calls
give exactly what the runs one after the other give, at any stagger and row cap; and an attack's
progress callback advances while it runs, not only at its end."""

from __future__ import annotations

import pytest
import torch

from robaudit.attacks import ATTACKS
from robaudit.engine import FixedBlockModel
from robaudit.rng import SampleRNG
from robaudit.threat import Norm, ThreatModel


@pytest.fixture
def batch(tiny_cnn):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(10, 1, 6, 6, generator=g)
    model = FixedBlockModel(tiny_cnn, 4)  # one call shape: a row's float sums don't depend on its batch
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


SPECS = [
    ("apgd-ce", dict(n_iter=9, n_restarts=3)),
    ("apgd-t", dict(n_iter=9, n_target_classes=3, n_restarts=2)),
    ("fab-t", dict(n_iter=5, n_target_classes=3, n_restarts=2)),
]


@pytest.mark.parametrize("name,params", SPECS)
@pytest.mark.parametrize("norm,eps", [(Norm.LINF, 0.03), (Norm.L2, 0.12)])
def test_packed_runs_equal_the_runs_one_after_the_other(batch, name, params, norm, eps):
    model, x, y = batch
    threat = ThreatModel(norm, eps)
    idx = torch.arange(10)

    def run(**runtime):
        attack = ATTACKS.get(name)(**params)
        for k, v in runtime.items():
            setattr(attack, k, v)
        return attack.run(model, x, y, threat, SampleRNG.for_indices(0, "p", idx)), attack.counter

    sequential, _ = run(stagger=-1)
    # a mix of broken and robust samples, so cancelled and finished runs both occur
    assert 0 < int(sequential.success.sum()) < 10
    for runtime in (dict(stagger=0), dict(stagger=None), dict(stagger=2, max_rows=3)):
        packed, _ = run(**runtime)
        assert torch.equal(packed.x_adv, sequential.x_adv), runtime
        assert torch.equal(packed.success, sequential.success), runtime


@pytest.mark.parametrize("name,params", [("pgd", dict(steps=6))] + SPECS + [("square", dict(n_queries=80))])
def test_progress_advances_during_the_run(batch, name, params):
    model, x, y = batch
    seen: list[float] = []
    attack = ATTACKS.get(name)(**params)
    attack.progress = seen.append
    attack.run(model, x, y, ThreatModel(Norm.LINF, 0.005), SampleRNG.for_indices(0, "p", torch.arange(10)))
    inside = [f for f in seen if 0.0 < f < 1.0]
    assert len(inside) >= 2, seen  # reported while running, not only at the end
    assert all(0.0 <= f <= 1.0 for f in seen)
    assert all(b >= a - 1e-12 for a, b in zip(seen, seen[1:])), seen  # never goes back
