"""Speed a user feels (issue 15): the curvature and indicator checks share one finite-difference
Hessian sweep, the result counts each check's gradient passes and HVPs, and progress bars move
within a check (per attack iteration, per counted pass, per surface plane), not only at its end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import robaudit.checks.indicator as indicator_module
import robaudit.geometry.hessian as hessian_module
from robaudit.config import ScanConfig
from robaudit.data.spec import DataSpec
from robaudit.engine import build_checks, compute_parts, make_context, run_scan
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.results import ScanResult


class _Smooth(nn.Module):
    """Softplus, so the FD Hessians are not 0; 1×6×6 inputs (d = 36, full spectra)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 36, 10)

    def forward(self, x):
        return self.fc(nn.functional.softplus(self.conv(x)).flatten(1))


def _setup(n: int = 8):
    model = _Smooth().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct: every sample is a curvature sample
    data = DataSpec("synthetic", "test", x, y, tuple(str(i) for i in range(10)), "memory")
    return LoadedModel(model, ModelInfo(path="tiny", format="in-memory", sha256="0" * 64)), data


@pytest.fixture
def sweeps(monkeypatch):
    """The functions of every FD-Hessian sweep (one list per call of the column loop)."""
    calls: list[list[str]] = []
    inner = hessian_module._full_hessian_replicated

    def counted(model, x, y, fs, *a, **k):
        calls.append([getattr(f, "__name__", "?") for f in fs])
        return inner(model, x, y, fs, *a, **k)

    monkeypatch.setattr(hessian_module, "_full_hessian_replicated", counted)
    return calls


def test_curvature_and_indicator_compute_each_hessian_once(sweeps, monkeypatch):
    loaded, data = _setup()
    # the memory format forced: an automatic choice is timed, and the two scans must differ only in the cache
    config = ScanConfig.parse(checks="clean,curvature,indicator", eps="0.05", device="cpu", batch_size=8, channels_last=False)
    shared = run_scan(loaded, data, config)
    # one sweep over the points x + h·e_i for both functions, none for the margin alone
    assert sweeps == [["cross_entropy", "margin"]]
    assert shared.passes["indicator"]["hvp"] == 0
    assert shared.passes["curvature"]["hvp"] > 2 * 8 * 36  # exact + CE and margin FD columns
    assert shared.passes["indicator"]["grad"] > 0  # its input gradient and DeepFool's

    # the indicator computing its own sweep (the cache hidden) gives the same section
    sweeps.clear()
    monkeypatch.setattr(indicator_module, "MARGIN_FD_CACHE", "nothing shared")
    alone = run_scan(loaded, data, config)
    assert sweeps == [["cross_entropy", "margin"], ["margin"]]
    assert alone.passes["indicator"]["hvp"] == 8 * 36
    assert json.dumps(shared.to_dict()["sections"]) == json.dumps(alone.to_dict()["sections"])


def test_pass_counts_are_in_the_json_and_old_results_still_load():
    loaded, data = _setup(4)
    result = run_scan(loaded, data, ScanConfig.parse(checks="clean,jacobian", device="cpu"))
    assert result.passes["jacobian"]["grad"] == 2 * 4  # the margin's and the loss's gradient per sample
    d = json.loads(result.to_json())
    assert ScanResult.from_dict(d).passes == result.passes
    d.pop("passes")  # a result written before the counts existed
    assert ScanResult.from_dict(d).passes == {}


class _Recorder:
    """A progress display that keeps every task's updates."""

    console = None

    def __init__(self):
        self.tasks: dict[int, dict] = {}

    def add_task(self, description, total=None, **_):
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": 0.0, "seen": [], "open": True}
        return tid

    def update(self, tid, completed=None, **_):
        if completed is not None:
            self.tasks[tid]["completed"] = completed
            self.tasks[tid]["seen"].append(completed)

    def advance(self, tid, k=1):
        self.update(tid, completed=self.tasks[tid]["completed"] + k)

    def remove_task(self, tid):
        self.tasks[tid]["open"] = False


def test_progress_moves_within_a_check():
    loaded, data = _setup(6)
    config = ScanConfig.parse(
        checks="clean,attacks,curvature,surfaces", attacks="pgd", eps="0.05", device="cpu", batch_size=64
    )  # one batch per check: batch ticks alone would sit at 0 until the end
    ctx = make_context(loaded, data, config)
    ctx.progress = recorder = _Recorder()
    compute_parts(ctx, build_checks(config))

    def task(prefix):
        (t,) = [t for t in recorder.tasks.values() if t["description"].startswith(prefix)]
        assert not t["open"]
        return t

    for prefix in ("pgd", "curvature"):  # per attack iteration / per counted gradient pass or HVP
        t = task(prefix)
        inside = sorted({c for c in t["seen"] if 0 < c < t["total"]})
        assert len(inside) >= 5, (prefix, t["seen"])
        assert t["seen"] == sorted(t["seen"]) and t["seen"][-1] == t["total"]
    t = task("surfaces")  # per (sample, plane) grid, after the directions
    assert t["seen"][-1] == t["total"] and len(t["seen"]) == t["total"]


def test_quiet_scans_print_nothing(capsys):
    loaded, data = _setup(4)
    run_scan(loaded, data, ScanConfig.parse(checks="clean,attacks", attacks="pgd", device="cpu"), quiet=True)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
