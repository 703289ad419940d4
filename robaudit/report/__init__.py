"""Renderers: they read only ScanResult."""
from .terminal import print_summary

__all__ = ["print_summary"]
