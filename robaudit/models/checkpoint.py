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
``robaudit.std`` (JSON lists), ``robaudit.class_names`` (JSON list), ``robaudit.version``; read and
written by :mod:`._metadata`. Each format's reader: :mod:`._readers`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UsageError
from ._formats import check_exists, detect_format, sha256_file
from ._metadata import (
    Settings,
    buffer_values,
    check_stats,
    merge_settings,
    metadata_class_names,
    metadata_preprocessing,
    metadata_strings,
    parse_floats,
    parse_metadata,
    parse_shape,
    sort_safetensors_metadata,
)
from ._readers import (
    EXTRA_FILE,
    Contents,
    read_export,
    read_onnx_model,
    read_pickle,
    read_safetensors,
    read_torchscript,
)
from ._state_dict import (
    classifier_key,
    first_conv_key,
    fit_keys,
    load_strict,
    nonfinite_warning,
)
from ._trust import metadata_architecture
from .architectures import ARCHITECTURES, build_architecture, parse_arch_kwargs
from .sources import architecture_preprocessing, named_weights, parse_arch, weights_is_file
from .spec import LoadedModel, ModelInfo, Preprocessing
from .wrapper import NormalizedModel

__all__ = ["load_model", "open_model", "OpenedModel", "save_model", "detect_format", "metadata_strings", "EXTRA_FILE"]


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
        path,
        arch=arch,
        weights=weights,
        arch_kwargs=arch_kwargs,
        num_classes=num_classes,
        input_shape=input_shape,
        mean=mean,
        std=std,
        trust_checkpoint=trust_checkpoint,
        download=download,
    )
    return opened.build(default_num_classes=default_num_classes, default_input_shape=default_input_shape, device=device)


@dataclass
class OpenedModel:
    """A model file read (weights or a module, metadata, what its publisher says about preprocessing)
    but no network built yet: the data can be prepared the way the model wants before :meth:`build`."""

    path: Path
    format: str
    contents: Contents
    settings: Settings
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
        self,
        *,
        default_num_classes: int | None = None,
        default_input_shape: Sequence[int] | None = None,
        device: str | torch.device = "cpu",
    ) -> LoadedModel:
        """Build the architecture with the right class/channel counts and load the weights strictly."""
        p, s, contents, notes = self.path, self.settings, self.contents, list(self.notes)
        default_shape = parse_shape(default_input_shape, "default_input_shape")
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
            net, s.num_classes, channels = _cached_input(
                p, self.named, _build_and_load, p, s, contents.weights, default_num_classes, default_shape
            )
        nonfinite = nonfinite_warning(net.state_dict())
        if nonfinite:
            notes.append(nonfinite)
        check_stats(s, channels)
        try:
            model = NormalizedModel(net, s.mean, s.std)
        except ValueError as exc:
            raise UsageError(f"--mean/--std: {exc}") from None
        info = ModelInfo(
            path=str(p),
            format=self.format,
            sha256=sha256_file(p),
            arch=s.arch,
            arch_kwargs=dict(s.arch_kwargs or {}),
            num_classes=s.num_classes,
            input_shape=s.input_shape,
            mean=s.mean,
            std=s.std,
            metadata=dict(contents.metadata),
            warnings=tuple(notes),
            weights=self.weights_label,
            preprocessing=self.preprocessing,
            class_names=self.class_names,
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
        reader = {
            "safetensors": read_safetensors,
            "pickle": read_pickle,
            "torchscript": read_torchscript,
            "torch-export": read_export,
            "onnx": read_onnx_model,
        }[fmt]
        contents = reader(p, trust_checkpoint)
    if contents.module is not None and (arch or arch_kwargs):
        raise UsageError(_self_describing(p, "a pickled complete model", arch, arch_kwargs))
    meta = _cached_input(p, named, parse_metadata, contents.metadata, p)
    if contents.module is None and not arch and meta.arch:  # named by the file, not by the caller: a registry name only
        meta.arch = parse_arch(metadata_architecture(meta.arch, p)).spec
    # what the weights state (published weights' transforms, robaudit metadata) must agree with --mean/--std;
    # an architecture's default pretrained config (timm:NAME with your own file) only fills in what is not given
    pre = named.preprocessing if named is not None else metadata_preprocessing(meta, p)
    given = Settings(
        ref.spec if ref else None,
        arch_kwargs,
        num_classes,
        parse_shape(input_shape, "--input-shape"),
        parse_floats(mean),
        parse_floats(std),
    )
    stated = Settings(
        meta.arch,
        meta.arch_kwargs,
        meta.num_classes or (named.num_classes if named else None),
        meta.input_shape,
        pre.mean if pre else None,
        pre.std if pre else None,
    )
    s = merge_settings(given, stated, contents.input_shape, pre.source if pre else "")
    if pre is None and ref is not None and contents.module is None:
        pre = architecture_preprocessing(ref)
        if pre is not None and given.mean is None and given.std is None:
            s.mean, s.std = pre.mean, pre.std
    class_names = named.class_names if named is not None else metadata_class_names(contents.metadata, p)
    notes = list(contents.warnings) + (list(named.warnings) if named else [])
    return OpenedModel(p, fmt, contents, s, notes, named.label if named else None, pre, class_names, named)


def _read_published(p: Path, named: Any) -> tuple[str, Contents]:
    """A cached published-weights file (torch hub cache, Hugging Face cache), judged as an input:
    it must be a safetensors file or a weights-only pickle holding a state dict. Anything else —
    TorchScript, torch.export, ONNX, a pickle that needs other globals, garbage, a truncated file —
    is a CheckpointError (exit 3) naming the cached file and the remedy; ``--trust-checkpoint``
    changes nothing (published weights are always read as data)."""

    def read() -> tuple[str, Contents]:
        fmt = detect_format(p)
        if fmt not in ("safetensors", "pickle"):
            what = {**SELF_DESCRIBING, "torch-export": "a torch.export archive"}[fmt]
            raise CheckpointError(f"{p} is {what}, not a state dict")
        contents = (read_safetensors if fmt == "safetensors" else read_pickle)(p, False)
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
    reason = message[len(str(p)) :].strip() if message.startswith(str(p)) else message
    reason = reason.split("; ")[0]
    return (
        f"{p}, the cached file of {named.label}, {reason}: it is not the published weights "
        f"(robaudit reads them as data only, whatever --trust-checkpoint says); {named.remedy}"
    )


def _self_describing(p: Path, what: str, arch: str | None, arch_kwargs: Any) -> str:
    given = f"--arch {arch}" if arch else "--arch-kwargs"
    return f"{given} can't apply to {p}: it is {what}, which holds its own architecture; drop {given}"


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
        mean = mean if mean is not None else buffer_values(net.mean)
        std = std if std is not None else buffer_values(net.std)
        net = net.inner
    meta = metadata_strings(
        arch=arch,
        arch_kwargs=arch_kwargs,
        num_classes=num_classes,
        input_shape=input_shape,
        mean=mean,
        std=std,
        class_names=class_names,
    )
    for key, value in (extra_metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UsageError(f"extra_metadata must map str to str; got {key!r}: {type(value).__name__}")
        if key in meta:
            raise UsageError(f"extra_metadata must not override {key}")
        meta[key] = value
    # clone: safetensors refuses shared or non-contiguous storage (tied weights, views)
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in net.state_dict().items()}
    raw = sort_safetensors_metadata(save(tensors, metadata=meta))
    atomic_write(path, raw)  # a failed write (disk full, ...) leaves the previous file: WriteError, exit 3
    return hashlib.sha256(raw).hexdigest()


# --- building --------------------------------------------------------------------------------


def _build_and_load(
    p: Path,
    s: Settings,
    weights: dict[str, torch.Tensor],
    default_classes: int | None,
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
