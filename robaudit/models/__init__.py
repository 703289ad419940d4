"""Models: architectures, checkpoint loading/saving in every format, published weights (torchvision,
timm), ONNX, the normalizing wrapper, fit checks."""

from .architectures import ARCHITECTURES, build_architecture, parse_arch_kwargs
from .checkpoint import OpenedModel, detect_format, load_model, open_model, save_model
from .sources import ModelSource, model_sources, parse_arch
from .spec import LoadedModel, ModelInfo, Preprocessing
from .validate import align_labels, check_fits
from .wrapper import NormalizedModel

__all__ = [
    "load_model",
    "open_model",
    "OpenedModel",
    "save_model",
    "detect_format",
    "build_architecture",
    "parse_arch_kwargs",
    "parse_arch",
    "ARCHITECTURES",
    "NormalizedModel",
    "check_fits",
    "align_labels",
    "LoadedModel",
    "ModelInfo",
    "Preprocessing",
    "ModelSource",
    "model_sources",
]
