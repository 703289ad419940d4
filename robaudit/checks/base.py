"""Check: a battery unit that turns primitives into one ScanResult section."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..registry import Registry

if TYPE_CHECKING:
    from ..config import ScanConfig
    from ..engine import ScanContext

__all__ = ["Check", "CHECKS", "MetricPlan"]


@dataclass(frozen=True)
class MetricPlan:
    """What a scan is about to do, known before any forward pass: enough to name its metrics.

    eps: the radii it will use (pixel scale [0,1]); model: the loaded, wrapped model (its parameter
    names), or None when not loaded; train_n: ``--train-n`` or None."""

    config: "ScanConfig"
    eps: tuple[float, ...]
    input_shape: tuple[int, ...]
    num_classes: int
    train_n: int | None = None
    model: Any = None


class Check(ABC):
    """``name`` is the section it writes; ``requires`` the checks that must run before it."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    @abstractmethod
    def run(self, ctx: "ScanContext"):
        """Return a section dataclass (registered with :func:`robaudit.results.section`)."""

    def metric_names(self, plan: MetricPlan) -> tuple[str, ...] | None:
        """Every metric name :meth:`run`'s section can have, predicted without running it (used by
        ``scan --list-metrics`` and to reject unknown gate names before a scan). None: this check
        can't tell in advance, so names under its prefix are checked only after the scan."""
        return None


CHECKS: Registry[type[Check]] = Registry(
    "check",
    "robaudit.checks",
    builtin_modules=(
        "robaudit.checks.clean",
        "robaudit.checks.sanity",
        "robaudit.checks.attacks",
        "robaudit.checks.margins",
        "robaudit.checks.minimal",
        "robaudit.checks.jacobian",
        "robaudit.checks.curvature",
        "robaudit.checks.indicator",
        "robaudit.checks.spectra",
        "robaudit.checks.surfaces",
        "robaudit.checks.landscape",
    ),
)
