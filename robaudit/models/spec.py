"""What a loaded checkpoint is: the wrapped model plus what robaudit knows about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["ModelInfo", "LoadedModel", "Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """How the model's weights expect images to be prepared, as their publisher states it.

    ``resize_size``: the short side is resized to this many pixels, then a ``crop_size`` square is
    cut from the centre (torchvision's ``ImageClassification`` transforms, timm's
    ``pretrained_cfg``: crop = input size, resize = crop / crop_pct). ``interpolation``: the resize
    filter's name. mean/std: per-channel normalization on the [0,1] pixel scale (robaudit applies it
    inside the wrapped model). ``source``: where these values come from, for messages.
    """

    source: str
    crop_size: int | None = None
    resize_size: int | None = None
    interpolation: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelInfo:
    """Provenance and shape facts about a checkpoint.

    format: "safetensors" | "torch-export" | "torchscript" | "pickle" | "onnx" | "in-memory".
    weights: the published weights' name when they were chosen by name (``--weights``):
    ``torchvision:ResNet50_Weights.IMAGENET1K_V2``, ``timm:resnet18.a1_in1k``; ``path``/``sha256``
    are then the cached file's.
    mean/std: the normalization the wrapper applies inside the model (None = identity);
    inputs to the wrapped model are always pixel space [0,1].
    preprocessing: what the weights' publisher says about image size and normalization (None if
    nothing). class_names: the weights' own class names (torchvision meta, robaudit metadata).
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
    weights: str | None = None
    preprocessing: Preprocessing | None = None
    class_names: tuple[str, ...] | None = None
    fixed_batch: int | None = None


@dataclass(frozen=True)
class LoadedModel:
    """``model`` is a NormalizedModel in eval mode taking [0,1] inputs; ``info`` describes it."""

    model: nn.Module
    info: ModelInfo
