"""Certified robustness: lower bounds on the margins of a traced classifier over a threat set.

:mod:`.graph` traces the user's model into supported operators, :mod:`.ops` bounds each operator,
:mod:`.bounds` propagates IBP / CROWN / α-CROWN bounds, :mod:`.exact` verifies small networks
exactly with a mixed-integer program. One bounding engine for the ``certify`` check and for
certified training (``harden --method ibp|crown-ibp``).
"""

from .bounds import (
    METHODS,
    ThreatSet,
    crown_spec_lower,
    ibp_bounds,
    ibp_spec_lower,
    intermediate_bounds,
    margin_spec,
    other_classes,
    spec_bounds,
)
from .graph import BoundGraph, UnsupportedModel, UntraceableModel, trace

__all__ = [
    "BoundGraph",
    "ThreatSet",
    "UnsupportedModel",
    "UntraceableModel",
    "trace",
    "margin_spec",
    "other_classes",
    "ibp_bounds",
    "intermediate_bounds",
    "spec_bounds",
    "ibp_spec_lower",
    "crown_spec_lower",
    "METHODS",
]
