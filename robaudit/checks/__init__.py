"""Battery units. Each check writes one ScanResult section; built-ins register like plugins do."""

from . import (  # noqa: F401  (register built-in checks and section types)
    attacks,
    certify,
    clean,
    curvature,
    indicator,
    jacobian,
    landscape,
    margins,
    minimal,
    sanity,
    spectra,
    surfaces,
)
from .base import CHECKS, Check

__all__ = ["CHECKS", "Check"]
