"""Autodiff primitives on pixel-space inputs [0,1]: margins, norms, input gradients, Hessian-vector
products, Hessian spectra (full, Gauss-Newton, finite-difference, Lanczos), bounds, surfaces."""

from .bounds import alignment, second_order_radius, theorem1_bounds, theorem1_simplified
from .hessian import (
    cure_direction,
    cure_direction_norm,
    full_hessian,
    hessian_eigvals,
    hutchinson_frobenius,
    hvp_exact,
    hvp_fd,
    hvp_func,
    hvp_operator,
    near_zero_fraction,
)
from .jacobian import input_jacobian, jacobian_stats
from .lanczos import lanczos
from .margin import cross_entropy, margin, true_class_probability
from .norms import ball_step, lp_norm
from .spectra import analysis_model, fd_spectrum, full_spectra, gauss_newton_spectrum, is_piecewise_linear, spectrum_stats
from .surfaces import filter_normalize, param_landscape, random_direction, surface_grid

__all__ = [
    "margin",
    "cross_entropy",
    "true_class_probability",
    "lp_norm",
    "ball_step",
    # input gradients
    "input_jacobian",
    "jacobian_stats",
    # Hessians
    "hvp_exact",
    "hvp_func",
    "hvp_fd",
    "hvp_operator",
    "full_hessian",
    "hessian_eigvals",
    "lanczos",
    "hutchinson_frobenius",
    "cure_direction",
    "cure_direction_norm",
    "near_zero_fraction",
    # spectra
    "analysis_model",
    "is_piecewise_linear",
    "gauss_newton_spectrum",
    "full_spectra",
    "fd_spectrum",
    "spectrum_stats",
    # bounds
    "theorem1_bounds",
    "theorem1_simplified",
    "alignment",
    "second_order_radius",
    # surfaces
    "surface_grid",
    "random_direction",
    "filter_normalize",
    "param_landscape",
]
