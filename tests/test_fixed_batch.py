"""Models that run at one batch size only (torch.export graphs specialized to it) are audited at that size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.engine import ScanContext, fit_batch_size
from robaudit.errors import InputError, RuntimeFailure
from robaudit.models import NormalizedModel, check_fits, load_model
from robaudit.models.fixed_batch import FixedBatchModel, static_batch_size
from robaudit.models.spec import LoadedModel, ModelInfo

runner = CliRunner()
SHAPE = (1, 28, 28)

# Every check that runs the model on its own batches: cascades (APGD-CE → APGD-T's targets →
# Square's remaining samples), a sweep over two ε, margins, Jacobians (vmap-free autograd), the
# curvature check's batched HVPs (torch.func) and the minimal-perturbation search.
CHECKS = "clean,sanity,attacks,margins,jacobian,minimal,curvature:k=2:n_probes=2"
ATTACKS = "apgd-ce:n_iter=5,apgd-t:n_iter=5:n_target_classes=2,square:n_queries=40"


def _export(net: nn.Module, path, batch: int | None, example_batch: int = 2) -> None:
    example = (torch.zeros(batch or example_batch, *SHAPE),)
    dyn = None if batch else {"x": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(net, example, dynamic_shapes=dyn), str(path))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The demo model exported with a dynamic batch, with a fixed batch of 1 and of 4."""
    d = tmp_path_factory.mktemp("fixed")
    net = load_model(str(DEMO_MODEL)).model.inner.eval()
    for name, batch in (("dynamic", None), ("b1", 1), ("b4", 4)):
        _export(net, d / f"{name}.pt2", batch)
    return d


def _scan_json(path, out, *extra) -> tuple[dict, str]:
    res = runner.invoke(
        app,
        [
            "scan",
            str(path),
            "--dataset",
            "demo",
            "--trust-checkpoint",
            "--eps",
            "0.05,0.1",
            "--attacks",
            ATTACKS,
            "--ensemble",
            "cascade",
            "--checks",
            CHECKS,
            "--json",
            str(out),
            *map(str, extra),
        ],
    )
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


# --- the wrapper -------------------------------------------------------------------------------


class _OnlyBatch(nn.Module):
    """Refuses every batch size but ``batch`` (what a specialized export does), else the inner model."""

    def __init__(self, inner: nn.Module, batch: int):
        super().__init__()
        self.inner, self.batch = inner, batch

    def forward(self, x):
        if x.shape[0] != self.batch:
            raise RuntimeError(f"Guard failed: x.size()[0] == {self.batch}")
        return self.inner(x)


@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_model_gives_the_free_model_outputs_and_derivatives(tiny_cnn, batch):
    free = NormalizedModel(tiny_cnn, mean=[0.3], std=[0.4])
    fixed = FixedBatchModel(NormalizedModel(_OnlyBatch(tiny_cnn, batch), mean=[0.3], std=[0.4]), batch)
    x = torch.rand(7, *SHAPE, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fixed(x), free(x), atol=1e-6)
    assert fixed(x[:0]).shape == (0, 10)

    def grad_and_hvp(model):
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xr).logsumexp(1).sum(), xr, create_graph=True)
        (hv,) = torch.autograd.grad((g * x).sum(), xr)
        return g.detach(), hv

    for a, b in zip(grad_and_hvp(fixed), grad_and_hvp(free)):
        assert torch.allclose(a, b, atol=1e-5)

    # torch.func: per-sample gradients through vmap (each sample a 1-sample call), padded inside
    def per_sample(model):
        return torch.func.vmap(torch.func.grad(lambda xi: model(xi.unsqueeze(0)).logsumexp(1).sum()))(x)

    assert torch.allclose(per_sample(fixed), per_sample(free), atol=1e-5)


def test_static_batch_is_read_from_the_exported_graph(exports):
    for name, batch in (("dynamic", None), ("b1", 1), ("b4", 4)):
        loaded = load_model(exports / f"{name}.pt2", trust_checkpoint=True)
        assert static_batch_size(loaded.model) == batch
        fitted = check_fits(loaded, input_shape=SHAPE, num_classes=10, dataset_name="demo")
        assert fitted.info.fixed_batch == batch
        assert isinstance(fitted.model, FixedBatchModel) == (batch is not None)
        assert (fitted is loaded) == (batch is None)
        if batch:
            assert any(f"static batch size of {batch}" in w and "dynamic_shapes" in w for w in loaded.info.warnings)
    assert static_batch_size(NormalizedModel(nn.Linear(3, 2))) is None  # not an exported graph


def test_a_model_that_runs_one_sample_only_is_probed_and_audited_at_one(tiny_cnn):
    loaded = LoadedModel(NormalizedModel(_OnlyBatch(tiny_cnn, 1)), ModelInfo(path="m", format="in-memory", sha256=""))
    fitted = check_fits(loaded, input_shape=SHAPE, num_classes=10, dataset_name="demo")
    assert fitted.info.fixed_batch == 1 and isinstance(fitted.model, FixedBatchModel)
    assert fitted.model(torch.rand(5, *SHAPE)).shape == (5, 10)
    with pytest.raises(InputError, match=r"does not accept inputs of shape \[3, 28, 28\]"):
        check_fits(loaded, input_shape=(3, 28, 28), num_classes=10, dataset_name="cifar")


def test_batch_size_is_a_multiple_of_the_fixed_batch_and_oom_halving_keeps_it():
    assert [fit_batch_size(b, 4) for b in (1, 3, 4, 6, 256)] == [4, 4, 4, 4, 256]
    assert fit_batch_size(7, None) == 7
    from robaudit.data.spec import DataSpec

    data = DataSpec(
        "synthetic",
        "test",
        torch.zeros(20, *SHAPE),
        torch.zeros(20, dtype=torch.long),
        tuple(str(i) for i in range(10)),
        "memory",
    )
    ctx = ScanContext(
        model=nn.Identity(), data=data, config=None, device=torch.device("cpu"), eps=(0.1,), batch_size=10, fixed_batch=4
    )
    assert ctx.batch_size == 8
    seen: list[int] = []

    def fn(x, y, sl):
        seen.append(x.shape[0])
        if x.shape[0] > 4:
            raise RuntimeError("CUDA out of memory")

    ctx.map_batches(fn)
    assert seen == [8, 4, 4, 4, 4, 4] and ctx.batch_size == 4

    def always_oom(x, y, sl):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeFailure, match="even at batch size 4 .the model's fixed batch"):
        ctx.map_batches(always_oom)


# --- end to end: real fixed-batch .pt2 files ---------------------------------------------------


def _same_result(a: dict, b: dict) -> None:
    """Two scans of the same function with the same calls and draws: equal decisions, close numbers."""
    assert a["sections"]["clean"]["predictions"] == b["sections"]["clean"]["predictions"]
    for ra, rb in zip(a["sections"]["attacks"]["runs"], b["sections"]["attacks"]["runs"], strict=True):
        assert (ra["attack"], ra["eps"]) == (rb["attack"], rb["eps"])
        assert ra["attacked"] == rb["attacked"] and ra["broken"] == rb["broken"], ra["attack"]
    assert a["sections"]["attacks"]["blackbox_only"] == b["sections"]["attacks"]["blackbox_only"]
    for sec, key in (("margins", "mean"), ("jacobian", "margin"), ("minimal", "median")):
        va, vb = a["sections"][sec][key], b["sections"][sec][key]
        if isinstance(va, dict):
            va, vb = va["mean_l1"], vb["mean_l1"]
        assert va == pytest.approx(vb, rel=1e-4), sec
    ha, hb = a["sections"]["curvature"]["hz_fd"], b["sections"]["curvature"]["hz_fd"]
    assert [v is None for v in ha] == [v is None for v in hb]
    assert [v for v in ha if v is not None] == pytest.approx([v for v in hb if v is not None], rel=1e-3, abs=1e-6)


@pytest.mark.slow
def test_batch_one_export_is_audited_one_sample_per_call(exports, tmp_path):
    fixed, out = _scan_json(exports / "b1.pt2", tmp_path / "b1.json", "--n", "12", "--batch-size", "1")
    free, _ = _scan_json(exports / "dynamic.pt2", tmp_path / "dyn.json", "--n", "12", "--batch-size", "1", "--quiet")
    assert fixed["provenance"]["fixed_batch"] == 1 and free["provenance"]["fixed_batch"] is None
    assert "FIXED BATCH" in out and "batch size 1 only" in out and "one model call per sample" in out
    _same_result(fixed, free)


@pytest.mark.slow
def test_batch_four_export_with_n_not_a_multiple_of_four(exports, tmp_path):
    # --batch-size 6 becomes 4; 10 samples are two full calls and one padded one
    fixed, out = _scan_json(exports / "b4.pt2", tmp_path / "b4.json", "--n", "10", "--batch-size", "6")
    free, _ = _scan_json(exports / "dynamic.pt2", tmp_path / "dyn.json", "--n", "10", "--batch-size", "4", "--quiet")
    assert fixed["provenance"]["fixed_batch"] == 4 and fixed["provenance"]["n"] == 10
    assert "batch size 4 only" in out and "padded to 4" in out
    assert len(fixed["sections"]["clean"]["correct"]) == 10
    _same_result(fixed, free)


def test_harden_refuses_a_model_that_runs_one_batch_size(tmp_path, tiny_cnn):
    # an architecture file whose forward only takes one sample (x.view(1, -1))
    arch = tmp_path / "one.py"
    arch.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class One(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(784, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.view(1, -1))\n"
    )
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(10, 784), "fc.bias": torch.zeros(10)}, str(tmp_path / "one.safetensors"))
    data = tmp_path / "tiny.npz"
    np.savez(
        data, x=np.zeros((10, 28, 28), dtype=np.uint8), y=np.arange(10), class_names=np.array([f"c{i}" for i in range(10)])
    )
    res = runner.invoke(
        app,
        [
            "harden",
            str(tmp_path / "one.safetensors"),
            "--arch",
            f"{arch}:One",
            "--dataset",
            str(data),
            "--out",
            str(tmp_path / "o.safetensors"),
            "--epochs",
            "1",
            "--train-n",
            "8",
            "--quiet",
        ],
    )
    assert res.exit_code == 3, res.output
    assert "fixed batch size of 1" in res.output
