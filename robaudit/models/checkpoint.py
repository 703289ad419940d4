"""``load_model`` / ``save_model``: every supported checkpoint format in, one ``LoadedModel`` out.

Formats (detected by content, see ``detect_format``) and the trust model (``_trust``, docs/security.md):
safetensors (robaudit's own format, with metadata) and torch.save pickles (``weights_only=True``)
are data and load without a flag; TorchScript and torch.export archives carry code (their own
graph, so no ``--arch``) and load only with ``trust_checkpoint``, as do pickles of arbitrary objects.
An architecture named in a file's metadata must be a registry name; a ``file.py:Class`` is only
ever the caller's ``arch`` argument.

Metadata keys (safetensors header, a pickle's top-level dict, a ``robaudit.json`` extra file in
TorchScript/torch.export archives, an ONNX model's ``metadata_props``), all strings: ``robaudit.arch``, ``robaudit.arch_kwargs`` (JSON
object), ``robaudit.num_classes``, ``robaudit.input_shape`` (JSON [C,H,W]), ``robaudit.mean``,
``robaudit.std`` (JSON lists), ``robaudit.class_names`` (JSON list), ``robaudit.version``.
"""
from __future__ import annotations

import json
import os
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UsageError
from ._formats import check_exists, detect_format, sha256_file
from ._onnx import read_onnx
from ._pickle_load import load_pickle
from ._trust import metadata_architecture, quiet_loading, refuse_code
from ._state_dict import (
    classifier_key, extract_weights, first_conv_key, fit_keys, is_state_dict, load_strict, nonfinite_warning,
)
from .architectures import ARCHITECTURES, build_architecture, parse_arch_kwargs
from .sources import architecture_preprocessing, named_weights, parse_arch, weights_is_file
from .spec import LoadedModel, ModelInfo, Preprocessing
from .wrapper import NormalizedModel

__all__ = ["load_model", "open_model", "OpenedModel", "save_model", "detect_format", "metadata_strings", "EXTRA_FILE"]

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
    path: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    weights: str | None = None,
    arch_kwargs: dict[str, Any] | str | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    trust_checkpoint: bool = False,
    download: bool = False,
    device: str | torch.device = "cpu",
    default_num_classes: int | None = None,
    default_input_shape: Sequence[int] | None = None,
) -> LoadedModel:
    """Load a checkpoint (or published weights named by ``arch``/``weights``) into a ``NormalizedModel``
    (eval mode, [0,1] inputs) plus its ``ModelInfo``: :func:`open_model` then :meth:`OpenedModel.build`.

    ``default_*`` (the dataset's values) are used only when neither the arguments, the metadata nor
    the weights say otherwise.
    """
    opened = open_model(
        path, arch=arch, weights=weights, arch_kwargs=arch_kwargs, num_classes=num_classes, input_shape=input_shape,
        mean=mean, std=std, trust_checkpoint=trust_checkpoint, download=download,
    )
    return opened.build(default_num_classes=default_num_classes, default_input_shape=default_input_shape, device=device)


@dataclass
class OpenedModel:
    """A model file read (weights or a module, metadata, what its publisher says about preprocessing)
    but no network built yet: the data can be prepared the way the model wants before :meth:`build`."""

    path: Path
    format: str
    contents: _Contents
    settings: _Settings
    notes: list[str]
    weights_label: str | None = None
    preprocessing: Preprocessing | None = None
    class_names: tuple[str, ...] | None = None
    named: Any = None  # the NamedWeights of published weights read from a cache, else None

    @property
    def image_size(self) -> int | None:
        """The square image side the model wants (the weights' crop size, else a square input shape), or None."""
        if self.preprocessing is not None and self.preprocessing.crop_size:
            return self.preprocessing.crop_size
        shape = self.settings.input_shape
        return shape[1] if shape is not None and shape[1] == shape[2] else None

    def build(
        self, *, default_num_classes: int | None = None, default_input_shape: Sequence[int] | None = None,
        device: str | torch.device = "cpu",
    ) -> LoadedModel:
        """Build the architecture with the right class/channel counts and load the weights strictly."""
        p, s, contents, notes = self.path, self.settings, self.contents, list(self.notes)
        default_shape = _shape(default_input_shape, "default_input_shape")
        if contents.module is not None:
            net = contents.module
            channels = s.input_shape[0] if s.input_shape else None
        else:
            assert contents.weights is not None
            if not s.arch:
                raise UsageError(
                    f"checkpoint {p} has no architecture metadata; pass --arch NAME "
                    f"(built-ins: {', '.join(ARCHITECTURES.names())}), torchvision:NAME, timm:NAME or --arch path/to/net.py:Class"
                )
            net, s.num_classes, channels = _cached_input(p, self.named, _build_and_load, p, s, contents.weights,
                                                         default_num_classes, default_shape)
        nonfinite = nonfinite_warning(net.state_dict())
        if nonfinite:
            notes.append(nonfinite)
        _check_stats(s, channels)
        try:
            model = NormalizedModel(net, s.mean, s.std)
        except ValueError as exc:
            raise UsageError(f"--mean/--std: {exc}") from None
        info = ModelInfo(
            path=str(p), format=self.format, sha256=sha256_file(p), arch=s.arch, arch_kwargs=dict(s.arch_kwargs or {}),
            num_classes=s.num_classes, input_shape=s.input_shape, mean=s.mean, std=s.std,
            metadata=dict(contents.metadata), warnings=tuple(notes), weights=self.weights_label,
            preprocessing=self.preprocessing, class_names=self.class_names,
        )
        return LoadedModel(model.to(device).eval(), info)


SELF_DESCRIBING = {"torchscript": "a TorchScript archive", "torch-export": "a torch.export archive", "onnx": "an ONNX model"}


def open_model(
    path: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    weights: str | None = None,
    arch_kwargs: dict[str, Any] | str | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    trust_checkpoint: bool = False,
    download: bool = False,
) -> OpenedModel:
    """Read a checkpoint, or published weights (``arch="torchvision:resnet50", weights="IMAGENET1K_V2"``,
    ``arch="timm:resnet18.a1_in1k"``; ``weights`` may also be a file, the same as ``path``).

    mean/std the model states (weights' transforms, timm's pretrained_cfg, robaudit metadata) are
    used; given ones must agree with them (UsageError otherwise). ``arch``/``arch_kwargs`` with a
    format that holds its own architecture (TorchScript, torch.export, ONNX, a pickled module) are
    a UsageError, never ignored.
    """
    if isinstance(arch_kwargs, str):
        arch_kwargs = parse_arch_kwargs(arch_kwargs)
    if weights is not None and weights_is_file(weights):
        if path is not None:
            raise UsageError(f"both a checkpoint ({path}) and --weights {weights} were given; give the weights file once")
        path, weights = weights, None
    ref = parse_arch(arch, weights) if arch else None
    if weights is not None and ref is None:
        raise UsageError(f"--weights {weights} needs --arch torchvision:NAME or timm:NAME to say whose weights they are")
    named = None
    if ref is not None and ref.weights is not None:
        if path is not None:
            raise UsageError(
                f"--arch {arch} names published weights ({ref.weights}) and a checkpoint {path} was given too; "
                f"drop one (to scan your own weights of this architecture: --arch {ref.spec})"
            )
        named = named_weights(ref, download=download)
        p = named.path
    elif path is None:
        raise UsageError(
            "no model: give a CHECKPOINT file, or published weights by name "
            "(--arch torchvision:resnet50 --weights IMAGENET1K_V2, --arch timm:resnet18.a1_in1k)"
        )
    else:
        p = check_exists(path)
    if named is not None:
        fmt, contents = _read_published(p, named)
    else:
        fmt = detect_format(p)
        if fmt in SELF_DESCRIBING and (arch or arch_kwargs):
            raise UsageError(_self_describing(p, SELF_DESCRIBING[fmt], arch, arch_kwargs))
        reader = {"safetensors": _read_safetensors, "pickle": _read_pickle, "torchscript": _read_torchscript,
                  "torch-export": _read_export, "onnx": _read_onnx}[fmt]
        contents = reader(p, trust_checkpoint)
    if contents.module is not None and (arch or arch_kwargs):
        raise UsageError(_self_describing(p, "a pickled complete model", arch, arch_kwargs))
    meta = _cached_input(p, named, _parse_metadata, contents.metadata, p)
    if contents.module is None and not arch and meta.arch:  # named by the file, not by the caller: a registry name only
        meta.arch = parse_arch(metadata_architecture(meta.arch, p)).spec
    # what the weights state (published weights' transforms, robaudit metadata) must agree with --mean/--std;
    # an architecture's default pretrained config (timm:NAME with your own file) only fills in what is not given
    pre = named.preprocessing if named is not None else _metadata_preprocessing(meta, p)
    given = _Settings(ref.spec if ref else None, arch_kwargs, num_classes, _shape(input_shape, "--input-shape"),
                      _floats(mean), _floats(std))
    stated = _Settings(meta.arch, meta.arch_kwargs, meta.num_classes or (named.num_classes if named else None),
                       meta.input_shape, pre.mean if pre else None, pre.std if pre else None)
    s = _merge(given, stated, contents.input_shape, pre.source if pre else "")
    if pre is None and ref is not None and contents.module is None:
        pre = architecture_preprocessing(ref)
        if pre is not None and given.mean is None and given.std is None:
            s.mean, s.std = pre.mean, pre.std
    class_names = named.class_names if named is not None else _metadata_class_names(contents.metadata, p)
    notes = list(contents.warnings) + (list(named.warnings) if named else [])
    return OpenedModel(p, fmt, contents, s, notes, named.label if named else None, pre, class_names, named)


def _read_published(p: Path, named: Any) -> tuple[str, "_Contents"]:
    """A cached published-weights file (torch hub cache, Hugging Face cache), judged as an input:
    it must be a safetensors file or a weights-only pickle holding a state dict. Anything else —
    TorchScript, torch.export, ONNX, a pickle that needs other globals, garbage, a truncated file —
    is a CheckpointError (exit 3) naming the cached file and the remedy; ``--trust-checkpoint``
    changes nothing (published weights are always read as data)."""
    def read() -> tuple[str, _Contents]:
        fmt = detect_format(p)
        if fmt not in ("safetensors", "pickle"):
            what = {**SELF_DESCRIBING, "torch-export": "a torch.export archive"}[fmt]
            raise CheckpointError(f"{p} is {what}, not a state dict")
        contents = (_read_safetensors if fmt == "safetensors" else _read_pickle)(p, False)
        if contents.weights is None:
            raise CheckpointError(f"{p} holds a complete model, not a state dict")
        return fmt, contents

    return _cached_input(p, named, read)


def _cached_input(p: Path, named: Any, step: Any, *args: Any) -> Any:
    """``step(*args)``; with published weights a CheckpointError is restated as one line naming the
    cached file and what to do about it (not the advice for a file of one's own, e.g. --trust-checkpoint)."""
    if named is None:
        return step(*args)
    try:
        return step(*args)
    except CheckpointError as exc:
        raise CheckpointError(_cached_file_message(p, named, str(exc))) from None


def _cached_file_message(p: Path, named: Any, message: str) -> str:
    reason = message[len(str(p)):].strip() if message.startswith(str(p)) else message
    reason = reason.split("; ")[0]
    return (f"{p}, the cached file of {named.label}, {reason}: it is not the published weights "
            f"(robaudit reads them as data only, whatever --trust-checkpoint says); {named.remedy}")


def _self_describing(p: Path, what: str, arch: str | None, arch_kwargs: Any) -> str:
    given = f"--arch {arch}" if arch else "--arch-kwargs"
    return f"{given} can't apply to {p}: it is {what}, which holds its own architecture; drop {given}"


def _metadata_preprocessing(meta: _Settings, p: Path) -> Preprocessing | None:
    """mean/std and a square input size stated by robaudit metadata, as a Preprocessing (None if neither)."""
    if meta.mean is None and meta.std is None and meta.input_shape is None:
        return None
    shape = meta.input_shape
    crop = shape[1] if shape is not None and shape[1] == shape[2] else None
    return Preprocessing(source=f"the robaudit metadata in {p.name}", crop_size=crop, mean=meta.mean, std=meta.std)


def _metadata_class_names(meta: Mapping[str, str], p: Path) -> tuple[str, ...] | None:
    raw = meta.get(f"{META}class_names")
    if not raw:
        return None
    names = _metadata_json(raw, f"{META}class_names", p)
    return tuple(str(n) for n in names) if isinstance(names, list) else None


def _metadata_json(raw: Any, key: str, p: Path) -> Any:
    """A metadata value that holds JSON (safetensors header, ONNX metadata_props, a pickle's
    top-level dict), read by robaudit's one JSON reader: malformed, nested too deeply or huge is
    a CheckpointError (exit 3) naming the key."""
    from ..errors import InputError
    from ..jsonio import parse_json

    try:
        return parse_json(raw, f"{p} has malformed metadata {key}")
    except InputError as exc:
        raise CheckpointError(f"{exc}; re-save it with robaudit") from None


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
    from safetensors.torch import save

    from ..outputs import atomic_write

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
    raw = _sort_safetensors_metadata(save(tensors, metadata=meta))
    atomic_write(path, raw)  # a failed write (disk full, ...) leaves the previous file: WriteError, exit 3
    return hashlib.sha256(raw).hexdigest()


def _sort_safetensors_metadata(raw: bytes) -> bytes:
    """The safetensors bytes ``raw`` with the header's ``__metadata__`` keys sorted.

    The safetensors writer stores metadata from a hash map, so the same weights and metadata give
    different bytes (and sha256) on every save; sorting makes the file a function of its content,
    so provenance hashes (``robaudit.harden.parent_sha256``) and resumed runs compare equal.
    """
    import struct

    from ..jsonio import parse_json

    (n,) = struct.unpack("<Q", raw[:8])
    header = parse_json(raw[8:8 + n], "the safetensors header robaudit just serialized")
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the format pads the header to 8-byte alignment
    return struct.pack("<Q", len(head)) + head + raw[8 + n:]


def metadata_strings(
    *, arch: str | None = None, arch_kwargs: dict[str, Any] | None = None, num_classes: int | None = None,
    input_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, str]:
    """The ``robaudit.*`` metadata as strings (also usable as a ``robaudit.json`` extra file)."""
    from .._version import __version__

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
    if not trust:
        raise refuse_code(p, "torchscript")
    extra = {EXTRA_FILE: ""}
    try:
        with quiet_loading():  # supported on purpose; torch marks TorchScript deprecated
            net = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{p} is not a loadable TorchScript archive: {_first_line(exc)}") from None
    return _Contents(module=net, metadata=_extra_meta(extra[EXTRA_FILE]))


def _read_onnx(p: Path, trust: bool) -> _Contents:
    """ONNX is data: converted by onnx2torch after robaudit's checks (``_onnx``), whatever ``trust`` says."""
    net, shape, warnings, metadata = read_onnx(p)
    return _Contents(module=net, input_shape=shape, warnings=warnings, metadata=metadata)


def _read_export(p: Path, trust: bool) -> _Contents:
    if not trust:
        raise refuse_code(p, "torch-export")
    extra = {EXTRA_FILE: ""}
    try:
        with quiet_loading(), open(p, "rb") as f:
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
    try:
        load_strict(net, fitted, where=str(p), arch=s.arch)
    except CheckpointError as exc:
        raise CheckpointError(str(exc) + _kwargs_hint(s.arch, fitted, classes, channels, kwargs, input_size)) from None
    return net, classes, channels


def _kwargs_hint(arch, weights, classes, channels, kwargs, input_size) -> str:
    """' (it fits --arch-kwargs width=16)' when changing integer architecture arguments makes every
    shape fit, else a pointer to the architecture's parameters."""
    from ._kwarg_hint import suggest_arch_kwargs

    found = suggest_arch_kwargs(arch, weights, num_classes=classes, in_channels=channels, kwargs=kwargs, input_size=input_size)
    if found:
        return f" (it fits --arch-kwargs {','.join(f'{k}={v}' for k, v in found.items())})"
    return f" (see `robaudit list architectures -v` for {arch}'s --arch-kwargs)"


def _dim_from(weights: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], finder: Any, dim: int) -> int | None:
    """Size ``dim`` of the checkpoint tensor at the key ``finder`` picks in the architecture."""
    key = finder(own)
    if key is not None and key in weights and weights[key].ndim == own[key].ndim:
        return int(weights[key].shape[dim])
    return None


# --- settings --------------------------------------------------------------------------------


def _merge(given: _Settings, stated: _Settings, file_shape: tuple[int, int, int] | None, source: str) -> _Settings:
    """Explicit values win over metadata for arch, kwargs, classes and shape; mean/std stated by the
    model (``source``) must agree with given ones. Metadata arch_kwargs apply only to the metadata's arch."""
    same_arch = given.arch is None or given.arch == stated.arch
    for name, mine, theirs in (("--mean", given.mean, stated.mean), ("--std", given.std, stated.std)):
        if mine is not None and theirs is not None and not _same_stats(mine, theirs):
            raise UsageError(
                f"{name} {','.join(f'{v:g}' for v in mine)} conflicts with {','.join(f'{v:g}' for v in theirs)} "
                f"from {source}; drop --mean/--std (the model's own are used)"
            )
    return _Settings(
        arch=given.arch or stated.arch,
        arch_kwargs=given.arch_kwargs if given.arch_kwargs is not None else (stated.arch_kwargs if same_arch else None),
        num_classes=given.num_classes if given.num_classes is not None else stated.num_classes,
        input_shape=given.input_shape or stated.input_shape or file_shape,
        mean=stated.mean if stated.mean is not None else given.mean,
        std=stated.std if stated.std is not None else given.std,
    )


def _same_stats(a: Sequence[float], b: Sequence[float]) -> bool:
    """Equal up to printing precision; one value stands for every channel."""
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        return False
    n = max(len(a), len(b))
    a, b = list(a) * (n if len(a) == 1 else 1), list(b) * (n if len(b) == 1 else 1)
    return all(abs(x - y) <= 1e-4 * max(1.0, abs(y)) for x, y in zip(a, b))


def _parse_metadata(meta: Mapping[str, str], p: Path) -> _Settings:
    def get(key: str, kind: type | None = None) -> Any:
        raw = meta.get(META + key)
        if raw is None:
            return None
        if kind is None or kind not in (str, int):
            value = _metadata_json(raw, META + key, p)
        else:
            try:
                value = raw if kind is str else int(raw)
            except (TypeError, ValueError):
                raise CheckpointError(f"{p} has malformed metadata {META}{key}={_clip(raw)!r}; re-save it with robaudit") from None
        if kind not in (None, str, int) and not isinstance(value, kind):
            raise CheckpointError(f"{p} has malformed metadata {META}{key}={_clip(raw)!r}; re-save it with robaudit")
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


def _clip(raw: Any, limit: int = 80) -> Any:
    """A metadata value short enough for an error line."""
    return raw if not isinstance(raw, str) or len(raw) <= limit else raw[:limit] + "…"


def _extra_meta(raw: Any) -> dict[str, str]:
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
