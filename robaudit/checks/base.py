"""Check: a battery unit that turns primitives into one ScanResult section."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from ..registry import Registry

if TYPE_CHECKING:
    from ..engine import ScanContext

__all__ = ["Check", "CHECKS"]


class Check(ABC):
    """``name`` is the section it writes; ``requires`` the checks that must run before it."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    @abstractmethod
    def run(self, ctx: "ScanContext"):
        """Return a section dataclass (registered with :func:`robaudit.results.section`)."""


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
