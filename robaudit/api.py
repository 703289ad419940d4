"""The Python API: the CLI is a thin layer over these.

>>> import robaudit
>>> result = robaudit.scan(net, "fashion-mnist", eps="0.1", attacks="quick", n=500)
>>> outcome = robaudit.gate(result, ["robust_acc.ensemble.linf@0.1 >= 0.3"])
>>> html = result.to_html()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from .config import DEFAULT_CHECKS, ScanConfig
from .data import DataRequest, DataSpec, load_dataset
from .engine import run_scan
from .errors import UsageError
from .models import LoadedModel, ModelInfo, NormalizedModel, check_fits, load_model
from .results import ScanResult

__all__ = ["scan", "gate"]


def _as_data(data, n: int | None, split: str, data_dir: str | None, sample: str | None = None, seed: int = 0) -> DataSpec:
    if isinstance(data, DataSpec):
        return data
    if isinstance(data, str):
        return load_dataset(data, DataRequest(split=split, n=n, data_dir=data_dir, sample=sample, seed=seed))
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        x, y = torch.as_tensor(x), torch.as_tensor(y).long()
        if x.dtype == torch.uint8:
            x = x.float() / 255
        if x.min() < 0 or x.max() > 1:
            raise UsageError("x must be pixels in [0,1] (or uint8); normalization belongs inside the model (mean=, std=)")
        if n is not None:
            x, y = x[:n], y[:n]
        k = int(y.max()) + 1
        return DataSpec("tensors", split, x.float(), y, tuple(str(i) for i in range(k)), "in-memory tensors")
    raise UsageError("data must be a DataSpec, a dataset name/path, or an (x, y) pair of tensors")


def _as_model(model, mean, std) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(str(model), mean=mean, std=std)
    if isinstance(model, nn.Module):
        wrapped = model if isinstance(model, NormalizedModel) else NormalizedModel(model, mean, std)
        return LoadedModel(
            wrapped, ModelInfo(path=f"<{type(model).__name__}>", format="in-memory", sha256="", mean=mean, std=std)
        )
    raise UsageError("model must be an nn.Module, a LoadedModel or a checkpoint path")


def scan(
    model,
    data,
    *,
    eps: str | Sequence[float] | None = None,
    norm: str = "linf",
    attacks: str = "quick",
    checks: str | Sequence[str] = DEFAULT_CHECKS,
    ensemble: str | None = None,
    n: int | None = None,
    sample: str | None = None,
    split: str = "test",
    data_dir: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 256,
    compute_block: int | None = None,
    precision: str = "float32",
    channels_last: bool | None = None,
    progress: bool = False,
) -> ScanResult:
    """Scan ``model`` (an nn.Module taking [0,1] pixels — pass ``mean``/``std`` if it expects
    normalized inputs — or a checkpoint path) on ``data`` (a dataset name, a DataSpec or an
    ``(x, y)`` pair; ``n`` samples chosen as ``sample`` says: "first" or "stratified", default
    stratified for image folders, first otherwise). ``compute_block``: see ``--compute-block``;
    ``precision``: ``--precision`` (float32, bfloat16, float16: the attacks' forward passes);
    ``channels_last``: True = ``--channels-last``, False = ``--no-channels-last``, None (default) =
    chosen at scan start by a timed probe (docs/performance.md, "Speed and progress"); channels_last runs on a
    converted copy of the module, never the module itself (``result.provenance.memory_format`` says
    what was chosen and why).
    The module's train/eval mode, weights and memory format are left as they were."""
    was_training = model.training if isinstance(model, nn.Module) else None
    loaded = _as_model(model, mean, std)  # wrapping puts the module in eval mode
    spec = _as_data(data, n, split, data_dir, sample, seed)
    config = ScanConfig.parse(
        norm=norm,
        eps=eps,
        attacks=attacks,
        ensemble=ensemble,
        checks=checks,
        seed=seed,
        device=device,
        batch_size=batch_size,
        compute_block=compute_block,
        precision=precision,
        channels_last=channels_last,
    )
    loaded = check_fits(loaded, input_shape=spec.input_shape, num_classes=spec.num_classes, dataset_name=spec.name)
    try:
        return run_scan(loaded, spec, config, quiet=not progress, command_line="robaudit.scan()")
    finally:
        if was_training is not None:
            model.train(was_training)


def gate(result: ScanResult, thresholds: Iterable[str] | str | Path):
    """Evaluate gates: a list of ``'metric op value'`` strings or a robaudit.toml path → GateOutcome
    (``.passed``, per-gate results)."""
    from .gating import evaluate_gates, load_gate_file, parse_requires

    if isinstance(thresholds, Path) or (isinstance(thresholds, str) and Path(thresholds).is_file()):
        spec = load_gate_file(thresholds)  # a Path that is no file: "thresholds file ... not found"
    else:
        spec = parse_requires([thresholds] if isinstance(thresholds, str) else list(thresholds))
    return evaluate_gates(result, spec)
