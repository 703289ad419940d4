"""Autodiff primitives on pixel-space inputs [0,1]: margins, input gradients, (later) HVPs."""
from .margin import cross_entropy, margin, true_class_probability

__all__ = ["margin", "cross_entropy", "true_class_probability"]
