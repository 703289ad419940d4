"""What a loaded checkpoint is: the wrapped model plus what robaudit knows about it."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["ModelInfo", "LoadedModel"]


@dataclass(frozen=True)
class ModelInfo:
    """Provenance and shape facts about a checkpoint.

    format: "safetensors" | "torch-export" | "torchscript" | "pickle".
    mean/std: the normalization the wrapper applies inside the model (None = identity);
    inputs to the wrapped model are always pixel space [0,1].
    warnings: problems that don't stop a scan (NaN/Inf weights, ...); they go into ScanResult.
    fixed_batch: the only batch size the model runs at (a torch.export graph specialized to it),
    set by ``check_fits``, which then wraps the model to run any batch in chunks of that size;
    None: any batch size.
    """

    path: str
    format: str
    sha256: str
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    metadata: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    fixed_batch: int | None = None


@dataclass(frozen=True)
class LoadedModel:
    """``model`` is a NormalizedModel in eval mode taking [0,1] inputs; ``info`` describes it."""

    model: nn.Module
    info: ModelInfo
