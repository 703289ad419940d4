"""Battery units. Each check writes one ScanResult section; built-ins register like plugins do."""
from . import attacks, clean, margins, minimal, sanity  # noqa: F401  (register built-in checks and section types)
from .base import CHECKS, Check

__all__ = ["CHECKS", "Check"]
