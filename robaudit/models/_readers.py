"""Reading each checkpoint format into :class:`Contents` (weights or a module, metadata, notes):
safetensors, torch.save pickles, TorchScript, torch.export and ONNX archives. The trust rules are
applied here (code-carrying formats only with ``trust``; docs/security.md); :mod:`.checkpoint`
turns the contents into a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ._onnx import read_onnx
from ._pickle_load import load_pickle
from ._state_dict import extract_weights, is_state_dict
from ._trust import quiet_loading, refuse_code

__all__ = [
    "EXTRA_FILE",
    "Contents",
    "read_safetensors",
    "read_pickle",
    "read_torchscript",
    "read_onnx_model",
    "read_export",
    "extra_meta",
    "first_line",
]

EXTRA_FILE = "robaudit.json"  # metadata inside TorchScript / torch.export archives


@dataclass
class Contents:
    """What a file holds: weights (state dict) or a ready module, plus metadata and notes."""

    weights: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    input_shape: tuple[int, int, int] | None = None


def read_safetensors(p: Path, trust: bool) -> Contents:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
        raise CheckpointError(f"{p} is not a valid safetensors file (truncated or corrupt): {first_line(exc)}") from None
    return Contents(weights=weights, metadata=metadata)


def read_pickle(p: Path, trust: bool) -> Contents:
    obj = load_pickle(p, trust=trust)
    found = extract_weights(obj, str(p), allow_module=trust)
    metadata = {}
    if isinstance(obj, Mapping) and not is_state_dict(obj):  # e.g. epoch, best_acc next to the weights
        metadata = {str(k): str(v) for k, v in obj.items() if isinstance(v, (str, int, float, bool))}
    if isinstance(found, nn.Module):
        return Contents(module=found, metadata=metadata)
    return Contents(weights=found, metadata=metadata)


def read_torchscript(p: Path, trust: bool) -> Contents:
    if not trust:
        raise refuse_code(p, "torchscript")
    extra = {EXTRA_FILE: ""}
    try:
        with quiet_loading():  # supported on purpose; torch marks TorchScript deprecated
            net = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{p} is not a loadable TorchScript archive: {first_line(exc)}") from None
    return Contents(module=net, metadata=extra_meta(extra[EXTRA_FILE]))


def read_onnx_model(p: Path, trust: bool) -> Contents:
    """ONNX is data: converted by onnx2torch after robaudit's checks (``_onnx``), whatever ``trust`` says."""
    net, shape, warnings, metadata = read_onnx(p)
    return Contents(module=net, input_shape=shape, warnings=warnings, metadata=metadata)


def read_export(p: Path, trust: bool) -> Contents:
    if not trust:
        raise refuse_code(p, "torch-export")
    extra = {EXTRA_FILE: ""}
    try:
        with quiet_loading(), open(p, "rb") as f:
            program = torch.export.load(f, extra_files=extra)
            net = program.module()
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{p} is not a loadable torch.export archive: {first_line(exc)}") from None
    contents = Contents(module=net, metadata=extra_meta(extra[EXTRA_FILE]))
    _describe_export(net, contents)
    return contents


def _describe_export(net: nn.Module, contents: Contents) -> None:
    """Input shape, static batch size and train-mode ops of an exported graph (they are frozen in it)."""
    graph = getattr(net, "graph", None)
    if graph is None:
        return
    inputs = [n.meta.get("val") for n in graph.nodes if n.op == "placeholder"]
    val = next((v for v in inputs if isinstance(v, torch.Tensor) and v.ndim == 4), None)
    if val is not None:
        dims = list(val.shape)
        if all(isinstance(d, int) for d in dims[1:]):
            contents.input_shape = (int(dims[1]), int(dims[2]), int(dims[3]))
        if isinstance(dims[0], int):
            contents.warnings.append(
                f"exported with a static batch size of {dims[0]}: robaudit runs it in calls of exactly {dims[0]} "
                f"sample(s), slower than batching freely; re-export with "
                f"dynamic_shapes={{'x': {{0: torch.export.Dim('batch')}}}} to batch freely"
            )
    train_ops = sorted({_op_name(n) for n in graph.nodes if n.op == "call_function" and _is_train_op(n)})
    if train_ops:
        contents.warnings.append(
            f"exported in training mode ({', '.join(train_ops)} use batch statistics/randomness); re-export after model.eval()"
        )


_TRAIN_ARG = {  # op name -> position of its `training` flag
    "aten.batch_norm.default": 5,
    "aten.native_batch_norm.default": 5,
    "aten._native_batch_norm_legit.default": 5,
    "aten._native_batch_norm_legit_functional.default": 5,
    "aten.dropout.default": 2,
    "aten.native_dropout.default": 2,
    "aten.feature_dropout.default": 2,
    "aten.alpha_dropout.default": 2,
}


def _op_name(node: Any) -> str:
    return str(node.target)


def _is_train_op(node: Any) -> bool:
    pos = _TRAIN_ARG.get(_op_name(node))
    if pos is None:
        return False
    flag = node.args[pos] if len(node.args) > pos else node.kwargs.get("training", node.kwargs.get("train"))
    return flag is True


def extra_meta(raw: Any) -> dict[str, str]:
    """A ``robaudit.json`` extra file (bytes/str JSON object) as a metadata dict of strings; a
    malformed one is ignored, as a file without it would be (these archives load only when trusted)."""
    from ..errors import InputError
    from ..jsonio import parse_json

    if not raw:
        return {}
    try:
        value = parse_json(raw, EXTRA_FILE)
    except InputError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
