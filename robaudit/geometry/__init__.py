"""Autodiff primitives on pixel-space inputs [0,1]: margins, input gradients, (later) HVPs."""
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
    lanczos,
    near_zero_fraction,
)
from .jacobian import input_jacobian, jacobian_stats
from .margin import cross_entropy, margin, true_class_probability
from .surfaces import filter_normalize, param_landscape, random_direction, surface_grid

__all__ = [
    "margin",
    "cross_entropy",
    "true_class_probability",
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
