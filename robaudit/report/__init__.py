"""Renderers: they read only ScanResult."""
from .terminal import print_summary

__all__ = ["print_summary", "render_html", "write_html", "write_csv"]

_LAZY = {"render_html": "html", "write_html": "html", "write_csv": "tables"}


def __getattr__(name: str):
    """HTML and CSV writers load on first use (jinja2, matplotlib and pandas stay out of CLI start-up)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
