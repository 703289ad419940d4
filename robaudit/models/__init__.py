"""Models: architectures, checkpoint loading/saving in every format, the normalizing wrapper, fit checks."""
from .architectures import ARCHITECTURES, build_architecture, parse_arch_kwargs
from .checkpoint import detect_format, load_model, save_model
from .spec import LoadedModel, ModelInfo
from .validate import check_fits
from .wrapper import NormalizedModel

__all__ = [
    "load_model",
    "save_model",
    "detect_format",
    "build_architecture",
    "parse_arch_kwargs",
    "ARCHITECTURES",
    "NormalizedModel",
    "check_fits",
    "LoadedModel",
    "ModelInfo",
]
