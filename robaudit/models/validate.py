"""``check_fits``: fail early, with one line saying what to do, when a model does not fit a dataset;
a model that runs at one batch size only is audited at that size (:mod:`.fixed_batch`)."""

from __future__ import annotations

import dataclasses

import torch

from ..errors import InputError
from .fixed_batch import FixedBatchModel, static_batch_size
from .spec import LoadedModel
from .wrapper import NormalizedModel

__all__ = ["check_fits", "align_labels"]

_PROBE_BATCHES = (3, 2, 1)  # the first is the one whose output is checked


def check_fits(loaded: LoadedModel, *, input_shape: tuple[int, int, int], num_classes: int, dataset_name: str) -> LoadedModel:
    """No-grad test forwards on zeros; raise InputError if shapes or class counts disagree.

    Returns the LoadedModel to audit: ``loaded`` itself, or — for a model that runs at one batch
    size B only — a copy whose model is a :class:`FixedBatchModel` and whose ``info.fixed_batch``
    is B. B is read from a torch.export graph (``static_batch_size``); any other model is run on
    batches of 3, 2 and 1, and one that runs exactly one of them (typically 1) is audited at it.
    """
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
    fixed = static_batch_size(model)
    if fixed is not None:
        batch, out = fixed, _forward_at(model, shape, fixed, dataset_name)
    else:
        batch, out, fixed = _probe(model, shape, dataset_name)
    if not isinstance(out, torch.Tensor):
        raise InputError(f"model returns {type(out).__name__}, not a logits tensor [N, classes]; wrap it to return logits")
    if out.ndim != 2 or out.shape[0] != batch:
        raise InputError(
            f"model output has shape {list(out.shape)} for a batch of {batch}; expected [{batch}, classes] logits"
        )
    if out.shape[1] != num_classes:
        raise InputError(
            f"model outputs {out.shape[1]} classes but {dataset_name} has {num_classes}; "
            f"use the matching dataset or check --arch / --num-classes"
        )
    if fixed is None:
        return loaded
    if not isinstance(model, NormalizedModel):
        raise InputError(f"model only accepts a batch of {fixed}; wrap it in robaudit.models.NormalizedModel")
    wrapped = FixedBatchModel(model, fixed).to(_device(model))
    return dataclasses.replace(loaded, model=wrapped, info=dataclasses.replace(info, fixed_batch=fixed))


def _forward_at(model: torch.nn.Module, shape: list[int], batch: int, dataset_name: str) -> object:
    """The output on a batch of the model's own fixed size (an error here is a shape problem)."""
    try:
        with torch.no_grad():
            return model(torch.zeros(batch, *shape, device=_device(model)))
    except Exception as exc:  # noqa: BLE001 - RuntimeError, or AssertionError from an exported graph's guards
        raise InputError(
            f"model was exported with a fixed batch size of {batch} but fails on {batch} input(s) of shape {shape} "
            f"from dataset {dataset_name}: {_first_line(exc)}; check --input-shape"
        ) from None


def _probe(model: torch.nn.Module, shape: list[int], dataset_name: str) -> tuple[int, object, int | None]:
    """(batch of the returned output, output, fixed batch or None) from runs at 3, 2 and 1 samples."""
    device = _device(model)
    outputs: dict[int, object] = {}
    reasons: dict[int, str] = {}
    for batch in _PROBE_BATCHES:
        try:
            with torch.no_grad():
                outputs[batch] = model(torch.zeros(batch, *shape, device=device))
        except Exception as exc:  # noqa: BLE001 - RuntimeError, or AssertionError from an exported graph's guards
            reasons[batch] = _first_line(exc)
    first = _PROBE_BATCHES[0]
    if not reasons:
        return first, outputs[first], None
    if len(outputs) == 1:  # one batch size runs (typically 1): audit the model at that size
        (batch,) = outputs
        return batch, outputs[batch], batch
    if not outputs:
        raise InputError(
            f"model does not accept inputs of shape {shape} from dataset {dataset_name}: {reasons[first]}; "
            f"check --arch / --input-shape"
        )
    failed = ", ".join(str(b) for b in sorted(reasons))
    raise InputError(
        f"model runs batches of {', '.join(str(b) for b in sorted(outputs))} samples but not {failed} "
        f"({next(iter(reasons.values()))}); re-export it with a dynamic batch axis (torch.export: "
        f"dynamic_shapes={{'x': {{0: torch.export.Dim('batch')}}}}; ONNX: dynamic_axes={{'x': {{0: 'batch'}}}})"
    )


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
