"""``check_fits``: fail early, with one line saying what to do, when a model does not fit a dataset."""
from __future__ import annotations

import torch

from ..errors import InputError
from .spec import LoadedModel
from .wrapper import NormalizedModel

__all__ = ["check_fits", "align_labels"]


def check_fits(loaded: LoadedModel, *, input_shape: tuple[int, int, int], num_classes: int, dataset_name: str) -> None:
    """No-grad forwards on zeros [3, *input_shape] and [2, *input_shape] (two batch sizes, so a graph
    exported with a static batch size is caught here rather than mid-scan); raise InputError if
    shapes or class counts disagree."""
    shape = [int(d) for d in input_shape]
    info, model = loaded.info, loaded.model
    if info.input_shape is not None and list(info.input_shape) != shape:
        raise InputError(
            f"model expects inputs of shape {list(info.input_shape)} but dataset {dataset_name} has {shape}; "
            f"use the matching dataset (or --image-size), or override with --input-shape"
        )
    channels = model.channels if isinstance(model, NormalizedModel) else None
    if channels is not None and channels != shape[0]:
        raise InputError(
            f"mean/std have {channels} values but dataset {dataset_name} has {shape[0]} channels; check --mean/--std"
        )
    out = _forward(model, shape, 3, dataset_name)
    _forward(model, shape, 2, dataset_name)
    if not isinstance(out, torch.Tensor):
        raise InputError(f"model returns {type(out).__name__}, not a logits tensor [N, classes]; wrap it to return logits")
    if out.ndim != 2 or out.shape[0] != 3:
        raise InputError(f"model output has shape {list(out.shape)} for a batch of 3; expected [3, classes] logits")
    if out.shape[1] != num_classes:
        raise InputError(
            f"model outputs {out.shape[1]} classes but {dataset_name} has {num_classes}; "
            f"use the matching dataset or check --arch / --num-classes"
        )


def _forward(model: torch.nn.Module, shape: list[int], batch: int, dataset_name: str) -> object:
    device = _device(model)
    try:
        with torch.no_grad():
            return model(torch.zeros(batch, *shape, device=device))
    except Exception as exc:  # noqa: BLE001 - RuntimeError, or AssertionError from an exported graph's guards
        reason = _first_line(exc)
        if batch > 1 and _accepts_other_batch(model, shape, device, batch):
            raise InputError(
                f"model only accepts a fixed batch size ({reason}); re-export it with a dynamic batch axis "
                f"(torch.export: dynamic_shapes={{'x': {{0: torch.export.Dim('batch')}}}}; "
                f"ONNX: dynamic_axes={{'x': {{0: 'batch'}}}})"
            ) from None
        raise InputError(
            f"model does not accept inputs of shape {shape} from dataset {dataset_name}: {reason}; "
            f"check --arch / --input-shape"
        ) from None


def _accepts_other_batch(model: torch.nn.Module, shape: list[int], device: torch.device, failed: int) -> bool:
    for batch in (1, 2, 3):
        if batch == failed:
            continue
        try:
            with torch.no_grad():
                model(torch.zeros(batch, *shape, device=device))
            return True
        except Exception:  # noqa: BLE001
            continue
    return False


def _device(model: torch.nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def align_labels(data, info):
    """``data`` with its labels renumbered to the model's own classes, matched by name.

    When the weights name their classes (torchvision's meta, robaudit metadata) and every class of
    the data has one of those names (case-insensitive), label i becomes the model's index of
    ``data.class_names[i]`` and the class names become the model's: an image folder ``goldfish/``,
    ``tench/`` is scanned against ImageNet's outputs 1 and 0. Data whose classes already are the
    model's, or whose names don't match while the class counts agree (folders named by index or by
    WordNet id), is returned as it is; different class counts and unmatched names raise InputError.
    """
    from dataclasses import replace

    names = info.class_names
    if not names or tuple(data.class_names) == tuple(names):
        return data
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(str(name).lower(), i)
    missing = [c for c in data.class_names if str(c).lower() not in index]
    if missing:
        if len(names) == data.num_classes:
            return data
        shown = ", ".join(repr(c) for c in missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise InputError(
            f"the model has {len(names)} classes but {data.name} has {data.num_classes}, and its classes {shown} are not "
            f"among the model's class names; name the class folders after the model's classes (e.g. {names[0]!r}) "
            f"or use data with the model's {len(names)} classes"
        )
    order = torch.tensor([index[str(c).lower()] for c in data.class_names], dtype=torch.int64)
    return replace(data, y=order[data.y], class_names=tuple(str(n) for n in names))
