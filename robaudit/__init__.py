"""robaudit: how robust is an image classifier, why, and did a change make it better."""

from ._version import __version__

__all__ = ["__version__", "scan", "gate", "harden", "ScanResult"]


def __getattr__(name: str):
    """The API loads torch on first use, so `import robaudit` stays cheap."""
    if name in ("scan", "gate"):
        from . import api

        return getattr(api, name)
    if name == "harden":
        from .harden import harden

        return harden
    if name == "ScanResult":
        from .results import ScanResult

        return ScanResult
    raise AttributeError(f"module 'robaudit' has no attribute {name!r}")
