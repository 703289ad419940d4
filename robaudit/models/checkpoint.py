"""``load_model`` / ``save_model``: every supported checkpoint format in, one ``LoadedModel`` out.

Formats (detected by content, see ``detect_format``): safetensors (robaudit's own format, with
metadata), torch.save pickles (loaded with ``weights_only=True``; arbitrary objects only with
``trust_checkpoint``), TorchScript and torch.export archives (which carry their own code, so no
``--arch``). Nothing from an untrusted checkpoint is ever executed.

Metadata keys (safetensors header, or a ``robaudit.json`` extra file in TorchScript/torch.export
archives), all strings: ``robaudit.arch``, ``robaudit.arch_kwargs`` (JSON object),
``robaudit.num_classes``, ``robaudit.input_shape`` (JSON [C,H,W]), ``robaudit.mean``,
``robaudit.std`` (JSON lists), ``robaudit.class_names`` (JSON list), ``robaudit.version``.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UnsafeCheckpointError, UsageError
from ._formats import check_exists, detect_format, sha256_file
from ._pickle_load import load_pickle
from ._safe_export import unsafe_export_members
from ._state_dict import (
    classifier_key, extract_weights, first_conv_key, fit_keys, is_state_dict, load_strict, nonfinite_warning,
)
from .architectures import ARCHITECTURES, build_architecture, parse_arch_kwargs
from .spec import LoadedModel, ModelInfo
from .wrapper import NormalizedModel

__all__ = ["load_model", "save_model", "detect_format", "metadata_strings", "EXTRA_FILE"]

META = "robaudit."
EXTRA_FILE = "robaudit.json"  # metadata inside TorchScript / torch.export archives


@dataclass
class _Contents:
    """What a file holds: weights (state dict) or a ready module, plus metadata and notes."""

    weights: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    input_shape: tuple[int, int, int] | None = None


@dataclass
class _Settings:
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | str | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    default_num_classes: int | None = None,
    default_input_shape: Sequence[int] | None = None,
) -> LoadedModel:
    """Load a checkpoint into a ``NormalizedModel`` (eval mode, [0,1] inputs) plus its ``ModelInfo``.

    Explicit arguments override the checkpoint's metadata. ``default_*`` (the dataset's values)
    are used only when neither the arguments, the metadata nor the weights say otherwise.
    """
    if isinstance(arch_kwargs, str):
        arch_kwargs = parse_arch_kwargs(arch_kwargs)
    given = _Settings(arch, arch_kwargs, num_classes, _shape(input_shape, "--input-shape"), _floats(mean), _floats(std))
    default_shape = _shape(default_input_shape, "default_input_shape")
    p = check_exists(path)
    fmt = detect_format(p)
    reader = {"safetensors": _read_safetensors, "pickle": _read_pickle, "torchscript": _read_torchscript,
              "torch-export": _read_export}[fmt]
    contents = reader(p, trust_checkpoint)
    s = _merge(given, _parse_metadata(contents.metadata, p), contents.input_shape)
    notes = list(contents.warnings)

    if contents.module is not None:
        net = contents.module
        if arch is not None:
            notes.append(f"--arch {arch} ignored: {p.name} contains a complete model")
            s.arch = None
        channels = s.input_shape[0] if s.input_shape else None
    else:
        assert contents.weights is not None
        if not s.arch:
            raise UsageError(
                f"checkpoint {p} has no architecture metadata; pass --arch NAME "
                f"(built-ins: {', '.join(ARCHITECTURES.names())}) or --arch path/to/net.py:Class"
            )
        net, s.num_classes, channels = _build_and_load(p, s, contents.weights, default_num_classes, default_shape)
    nonfinite = nonfinite_warning(net.state_dict())
    if nonfinite:
        notes.append(nonfinite)
    _check_stats(s, channels)
    try:
        model = NormalizedModel(net, s.mean, s.std)
    except ValueError as exc:
        raise UsageError(f"--mean/--std: {exc}") from None
    info = ModelInfo(
        path=str(p), format=fmt, sha256=sha256_file(p), arch=s.arch, arch_kwargs=dict(s.arch_kwargs or {}),
        num_classes=s.num_classes, input_shape=s.input_shape, mean=s.mean, std=s.std,
        metadata=dict(contents.metadata), warnings=tuple(notes),
    )
    return LoadedModel(model.to(device).eval(), info)


def save_model(
    path: str | os.PathLike[str],
    net: nn.Module,
    *,
    arch: str,
    arch_kwargs: dict[str, Any] | None = None,
    num_classes: int,
    input_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> str:
    """Write ``net``'s weights and robaudit metadata as safetensors, atomically; return the file's sha256.

    ``net`` is the raw model; a ``NormalizedModel`` is unwrapped (its mean/std are used unless given).
    """
    from safetensors.torch import save_file

    if isinstance(net, NormalizedModel):
        mean = mean if mean is not None else _buffer(net.mean)
        std = std if std is not None else _buffer(net.std)
        net = net.inner
    meta = metadata_strings(arch=arch, arch_kwargs=arch_kwargs, num_classes=num_classes, input_shape=input_shape,
                            mean=mean, std=std, class_names=class_names)
    for key, value in (extra_metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UsageError(f"extra_metadata must map str to str; got {key!r}: {type(value).__name__}")
        if key in meta:
            raise UsageError(f"extra_metadata must not override {key}")
        meta[key] = value
    # clone: safetensors refuses shared or non-contiguous storage (tied weights, views)
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in net.state_dict().items()}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        _sort_safetensors_metadata(tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def _sort_safetensors_metadata(path: str) -> None:
    """Rewrite a safetensors header with its ``__metadata__`` keys sorted, in place.

    The safetensors writer stores metadata from a hash map, so the same weights and metadata give
    different bytes (and sha256) on every save; sorting makes the file a function of its content,
    so provenance hashes (``robaudit.harden.parent_sha256``) and resumed runs compare equal.
    """
    import json
    import struct

    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n).decode("utf-8"))
        data = fh.read()
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.write(data)


def metadata_strings(
    *, arch: str | None = None, arch_kwargs: dict[str, Any] | None = None, num_classes: int | None = None,
    input_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, str]:
    """The ``robaudit.*`` metadata as strings (also usable as a ``robaudit.json`` extra file)."""
    from .. import __version__

    meta = {f"{META}version": __version__}
    if arch is not None:
        meta[f"{META}arch"] = str(arch)
    if arch_kwargs:
        meta[f"{META}arch_kwargs"] = json.dumps(arch_kwargs, sort_keys=True)
    if num_classes is not None:
        meta[f"{META}num_classes"] = str(int(num_classes))
    if input_shape is not None:
        meta[f"{META}input_shape"] = json.dumps(list(_shape(input_shape, "input_shape") or ()))
    for key, values in (("mean", mean), ("std", std)):
        if values is not None:
            meta[f"{META}{key}"] = json.dumps([float(v) for v in values])
    if class_names is not None:
        meta[f"{META}class_names"] = json.dumps([str(c) for c in class_names])
    return meta


# --- readers ---------------------------------------------------------------------------------


def _read_safetensors(p: Path, trust: bool) -> _Contents:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
        raise CheckpointError(f"{p} is not a valid safetensors file (truncated or corrupt): {_first_line(exc)}") from None
    return _Contents(weights=weights, metadata=metadata)


def _read_pickle(p: Path, trust: bool) -> _Contents:
    obj = load_pickle(p, trust=trust)
    found = extract_weights(obj, str(p), allow_module=trust)
    metadata = {}
    if isinstance(obj, Mapping) and not is_state_dict(obj):  # e.g. epoch, best_acc next to the weights
        metadata = {str(k): str(v) for k, v in obj.items() if isinstance(v, (str, int, float, bool))}
    if isinstance(found, nn.Module):
        return _Contents(module=found, metadata=metadata)
    return _Contents(weights=found, metadata=metadata)


def _read_torchscript(p: Path, trust: bool) -> _Contents:
    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():  # supported on purpose; torch marks TorchScript deprecated
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
            net = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{p} is not a loadable TorchScript archive: {_first_line(exc)}") from None
    return _Contents(module=net, metadata=_extra_meta(extra[EXTRA_FILE]))


def _read_export(p: Path, trust: bool) -> _Contents:
    problems = unsafe_export_members(p)
    if problems and not trust:
        raise UnsafeCheckpointError(
            f"{p} needs arbitrary Python objects or native code to load ({'; '.join(problems[:3])}) and could run code; "
            f"re-export it without them, save a state dict or safetensors, or pass --trust-checkpoint if you trust its source"
        )
    extra = {EXTRA_FILE: ""}
    try:
        with open(p, "rb") as f:
            program = torch.export.load(f, extra_files=extra)
        net = program.module()
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{p} is not a loadable torch.export archive: {_first_line(exc)}") from None
    contents = _Contents(module=net, metadata=_extra_meta(extra[EXTRA_FILE]))
    _describe_export(net, contents)
    return contents


def _describe_export(net: nn.Module, contents: _Contents) -> None:
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
            f"exported in training mode ({', '.join(train_ops)} use batch statistics/randomness); "
            f"re-export after model.eval()"
        )


_TRAIN_ARG = {  # op name -> position of its `training` flag
    "aten.batch_norm.default": 5, "aten.native_batch_norm.default": 5, "aten._native_batch_norm_legit.default": 5,
    "aten._native_batch_norm_legit_functional.default": 5, "aten.dropout.default": 2,
    "aten.native_dropout.default": 2, "aten.feature_dropout.default": 2, "aten.alpha_dropout.default": 2,
}


def _op_name(node: Any) -> str:
    return str(node.target)


def _is_train_op(node: Any) -> bool:
    pos = _TRAIN_ARG.get(_op_name(node))
    if pos is None:
        return False
    flag = node.args[pos] if len(node.args) > pos else node.kwargs.get("training", node.kwargs.get("train"))
    return flag is True


# --- building --------------------------------------------------------------------------------


def _build_and_load(
    p: Path, s: _Settings, weights: dict[str, torch.Tensor], default_classes: int | None,
    default_shape: tuple[int, int, int] | None,
) -> tuple[nn.Module, int, int]:
    """Build ``s.arch`` with the right class/channel counts (inferred from the weights if unknown) and load strictly."""
    assert s.arch is not None
    kwargs = dict(s.arch_kwargs or {})
    shape = s.input_shape or default_shape
    input_size = shape[1] if shape else None
    classes = s.num_classes
    channels = s.input_shape[0] if s.input_shape else None
    if classes is None or channels is None:
        guess_classes = classes or default_classes or 10
        guess_channels = channels or (default_shape[0] if default_shape else 3)
        probe = build_architecture(
            s.arch, num_classes=guess_classes, in_channels=guess_channels, kwargs=kwargs, input_size=input_size
        )
        own = probe.state_dict()
        fitted = fit_keys(weights, set(own))
        if classes is None:
            classes = _dim_from(fitted, own, classifier_key, 0) or guess_classes
        if channels is None:
            channels = _dim_from(fitted, own, first_conv_key, 1) or guess_channels
        net = probe if (classes, channels) == (guess_classes, guess_channels) else None
    else:
        net = None
    if net is None:
        net = build_architecture(s.arch, num_classes=classes, in_channels=channels, kwargs=kwargs, input_size=input_size)
    fitted = fit_keys(weights, set(net.state_dict()))
    load_strict(net, fitted, where=str(p), arch=s.arch)
    return net, classes, channels


def _dim_from(weights: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], finder: Any, dim: int) -> int | None:
    """Size ``dim`` of the checkpoint tensor at the key ``finder`` picks in the architecture."""
    key = finder(own)
    if key is not None and key in weights and weights[key].ndim == own[key].ndim:
        return int(weights[key].shape[dim])
    return None


# --- settings --------------------------------------------------------------------------------


def _merge(given: _Settings, meta: _Settings, file_shape: tuple[int, int, int] | None) -> _Settings:
    """Explicit values win over metadata; metadata arch_kwargs apply only to the metadata's arch."""
    same_arch = given.arch is None or given.arch == meta.arch
    return _Settings(
        arch=given.arch or meta.arch,
        arch_kwargs=given.arch_kwargs if given.arch_kwargs is not None else (meta.arch_kwargs if same_arch else None),
        num_classes=given.num_classes if given.num_classes is not None else meta.num_classes,
        input_shape=given.input_shape or meta.input_shape or file_shape,
        mean=given.mean if given.mean is not None else meta.mean,
        std=given.std if given.std is not None else meta.std,
    )


def _parse_metadata(meta: Mapping[str, str], p: Path) -> _Settings:
    def get(key: str, kind: type | None = None) -> Any:
        raw = meta.get(META + key)
        if raw is None:
            return None
        try:
            value = raw if kind is str else (int(raw) if kind is int else json.loads(raw))
        except (TypeError, ValueError):
            raise CheckpointError(f"{p} has malformed metadata {META}{key}={raw!r}; re-save it with robaudit") from None
        if kind not in (None, str, int) and not isinstance(value, kind):
            raise CheckpointError(f"{p} has malformed metadata {META}{key}={raw!r}; re-save it with robaudit")
        return value

    try:
        shape = get("input_shape", list)
        return _Settings(
            arch=get("arch", str), arch_kwargs=get("arch_kwargs", dict), num_classes=get("num_classes", int),
            input_shape=_shape(shape, f"{META}input_shape") if shape is not None else None,
            mean=_floats(get("mean", list)), std=_floats(get("std", list)),
        )
    except UsageError as exc:
        raise CheckpointError(f"{p} has malformed metadata: {exc}") from None


def _extra_meta(raw: Any) -> dict[str, str]:
    """A ``robaudit.json`` extra file (bytes/str JSON object) as a metadata dict of strings."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def _shape(value: Sequence[int] | None, what: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be three integers C,H,W; got {value!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise UsageError(f"{what} must be three positive integers C,H,W; got {list(dims)}")
    return dims  # type: ignore[return-value]


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise UsageError(f"mean/std must be numbers; got {values!r}") from None


def _check_stats(s: _Settings, channels: int | None) -> None:
    for name, values in (("--mean", s.mean), ("--std", s.std)):
        if values is not None and channels is not None and len(values) not in (1, channels):
            raise UsageError(f"{name} has {len(values)} values but the model takes {channels}-channel input")


def _buffer(t: torch.Tensor | None) -> tuple[float, ...] | None:
    return None if t is None else tuple(float(v) for v in t.flatten().tolist())


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
