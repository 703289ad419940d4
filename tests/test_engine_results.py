"""Engine + ScanResult: invariants of a scan, JSON round trip, determinism, OOM back-off."""

from __future__ import annotations

import json

import pytest
import torch

from robaudit.config import ScanConfig, parse_attack_list
from robaudit.data.spec import DataSpec
from robaudit.engine import ScanContext, run_scan
from robaudit.errors import RuntimeFailure
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.results import ScanResult
from robaudit.threat import Norm


def _setup(tiny_cnn, n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = tiny_cnn(x).argmax(1)
    y[::4] = (y[::4] + 1) % 10  # some samples misclassified on purpose
    data = DataSpec("synthetic", "test", x, y, tuple(str(i) for i in range(10)), "memory")
    loaded = LoadedModel(tiny_cnn, ModelInfo(path="tiny.safetensors", format="safetensors", sha256="0" * 64, arch="tiny"))
    return loaded, data


def _config(**kw):
    base = dict(eps=(0.01, 0.05, 0.2), attacks=parse_attack_list("fgsm,pgd:steps=10"), device="cpu", batch_size=16)
    base.update(kw)
    return ScanConfig(**base)


def test_scan_invariants(tiny_cnn):
    loaded, data = _setup(tiny_cnn)
    result = run_scan(loaded, data, _config(), command_line="test")
    clean = result.section("clean")
    assert clean.accuracy == pytest.approx(sum(clean.correct) / data.n)
    assert clean.accuracy <= 0.75 + 1e-9  # every 4th label was flipped
    att = result.section("attacks")
    by_eps = {}
    for run in att.runs:
        assert run.robust_accuracy <= clean.accuracy
        robust = torch.tensor(run.robust)
        assert not (robust & ~torch.tensor(clean.correct)).any(), "a misclassified sample cannot be robust"
        by_eps.setdefault(run.attack, []).append(run.robust_accuracy)
    for eps_key, acc in att.ensemble.items():
        members = [r.robust_accuracy for r in att.runs if r.eps == pytest.approx(float(eval(eps_key)))]
        assert acc <= min(members) + 1e-12
    ens = list(att.ensemble.values())
    assert ens == sorted(ens, reverse=True), "worst-case robust accuracy must not increase with ε"
    m = result.section("margins")
    assert m.fraction_negative == pytest.approx(1 - clean.accuracy)
    assert "clean.accuracy" in result.metrics()
    assert "robust_acc.pgd[steps=10].linf@0.05" in result.metrics()


def _without_timings(result) -> dict:
    d = result.to_dict()
    d.pop("timings")
    for run in d["sections"]["attacks"]["runs"]:
        run.pop("seconds")
    return d


@pytest.mark.parametrize("channels_last", [False, True])
def test_json_round_trip_and_determinism(tiny_cnn, tmp_path, channels_last):
    """Same seed, same device, same memory format → same JSON (timings aside)."""
    loaded, data = _setup(tiny_cnn)
    r1 = run_scan(loaded, data, _config(seed=3, channels_last=channels_last), command_line="test")
    r2 = run_scan(loaded, data, _config(seed=3, channels_last=channels_last), command_line="test")
    d1, d2 = _without_timings(r1), _without_timings(r2)
    assert json.dumps(d1) == json.dumps(d2), "same seed, same device → same JSON"
    path = tmp_path / "r.json"
    r1.write_json(path)
    back = ScanResult.read_json(path)
    assert back == r1
    assert back.to_json() == r1.to_json()


def test_an_automatic_memory_format_is_repeated_by_forcing_the_recorded_one(tiny_cnn):
    """With neither --channels-last nor --no-channels-last the format is timed at scan start (it
    may differ between runs); forcing the format the result recorded repeats its sections exactly."""
    loaded, data = _setup(tiny_cnn)
    auto = run_scan(loaded, data, _config(seed=3), command_line="test")
    memory = auto.provenance.memory_format
    assert memory.how == "auto" and memory.probe_rows == 16 and memory.probe_seconds_contiguous > 0
    forced = run_scan(loaded, data, _config(seed=3, channels_last=memory.channels_last), command_line="test")
    a, f = _without_timings(auto), _without_timings(forced)
    assert json.dumps(a["sections"]) == json.dumps(f["sections"])
    assert a["provenance"].pop("memory_format")["chosen"] == f["provenance"].pop("memory_format")["chosen"]
    assert a["provenance"] == f["provenance"]


def test_batch_size_halves_on_oom(tiny_cnn):
    loaded, data = _setup(tiny_cnn, n=10)
    ctx = ScanContext(model=tiny_cnn, data=data, config=_config(), device=torch.device("cpu"), eps=(0.1,), batch_size=8)
    seen = []

    def fn(x, y, sl):
        if x.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        seen.append((sl.start, sl.stop))

    ctx.map_batches(fn)
    assert ctx.batch_size == 2
    assert seen[0] == (0, 2) and seen[-1] == (8, 10) and len(seen) == 5

    def always(x, y, sl):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeFailure, match="batch size 1"):
        ctx.map_batches(always)


def test_l2_scan(tiny_cnn):
    loaded, data = _setup(tiny_cnn, n=12)
    result = run_scan(loaded, data, _config(norm=Norm.L2, eps=(0.5,)), command_line="t")
    assert result.section("attacks").norm == "l2"
    assert "robust_acc.ensemble.l2@0.5" in result.metrics()


def test_train_margins_and_loss_gap(tiny_cnn):
    loaded, data = _setup(tiny_cnn, n=20)
    _, train = _setup(tiny_cnn, n=30)
    result = run_scan(loaded, data, _config(eps=(0.05,)), command_line="t", train_data=train)
    m = result.section("margins")
    assert m.train_n == 30 and len(m.train_margins) == 30
    assert m.loss_gap == pytest.approx(m.mean_loss - m.train_mean_loss)
    assert result.metrics()["margins.loss_gap"] == m.loss_gap
    assert ScanResult.from_dict(json.loads(result.to_json())) == result
