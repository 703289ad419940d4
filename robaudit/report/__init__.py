"""Renderers: they read only ScanResult."""

from .terminal import print_summary

__all__ = ["print_summary", "render_html", "write_html", "write_csv"]


def __getattr__(name: str):
    """HTML and CSV writers load on first use (jinja2, matplotlib and pandas stay out of CLI start-up)."""
    if name in ("render_html", "write_html"):
        from . import html

        return getattr(html, name)
    if name == "write_csv":
        from . import tables

        return tables.write_csv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
