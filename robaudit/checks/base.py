"""Check: a battery unit that turns primitives into one ScanResult section.

A check is computed in two steps so that a scan can be split over batches, shards and processes
(:mod:`robaudit.parts`):

* ``compute(ctx) -> Part``: per-sample records of the samples this process owns
  (``ctx.positions``), keyed by scan position, plus ``extra`` (candidates, counts); a
  ``scope = "model"`` check computes once, in the lead process, and others get an empty part;
* ``combine(tables, extras, info) -> Section``: the section from the **merged** tables of every
  part (rows sorted by position) and every part's extra. No model and no data here: everything
  comes from the parts and ``info`` (:class:`robaudit.parts.CombineInfo`).

A check that implements only ``run(ctx)`` (plugins written before parts existed) still runs in
single-process scans, with ``ctx.sections`` holding the earlier checks' sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UsageError
from ..registry import Registry

if TYPE_CHECKING:
    from ..config import ScanConfig
    from ..context import ScanContext
    from ..parts import CombineInfo, Part, Tables

__all__ = ["Check", "CHECKS", "MetricPlan", "build_check", "check_parameters"]


@dataclass(frozen=True)
class MetricPlan:
    """What a scan is about to do, known before any forward pass: enough to name its metrics.

    eps: the radii it will use (pixel scale [0,1]); model: the loaded, wrapped model (its parameter
    names), or None when not loaded; train_n: ``--train-n`` or None."""

    config: ScanConfig
    eps: tuple[float, ...]
    input_shape: tuple[int, ...]
    num_classes: int
    train_n: int | None = None
    model: Any = None


class Check:
    """``name`` is the section it writes; ``requires`` the checks that must run before it;
    ``scope`` "samples" (shardable per-sample work) or "model" (computed once, in the lead process);
    ``after`` checks it runs after when they are selected too."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    after: ClassVar[tuple[str, ...]] = ()  # run after these when they are selected too (not required)
    description: ClassVar[str] = ""
    scope: ClassVar[str] = "samples"

    def preflight(self, ctx: ScanContext) -> None:
        """Called before the first check of a scan runs (in every process): refuse settings that
        can only be judged with the model and data loaded (raise UsageError), before any work."""

    def compute(self, ctx: ScanContext) -> Part:
        """This process's part: per-sample tables for ``ctx.positions`` and an extra dict."""
        raise NotImplementedError(f"check {self.name!r} implements neither compute/combine nor run")

    def combine(self, tables: Tables, extras: list[dict], info: CombineInfo):
        """The section from every part (see the module docstring)."""
        raise NotImplementedError(f"check {self.name!r} has compute but no combine")

    def run(self, ctx: ScanContext):
        """The section of a single-process scan: compute, then combine the one part."""
        from ..parts import CombineInfo, merge_parts

        part = self.compute(ctx)
        tables, extras = merge_parts([part], self.name)
        info = CombineInfo(
            n=ctx.data.n,
            class_names=ctx.data.class_names,
            input_shape=ctx.data.input_shape,
            eps=ctx.eps,
            config=ctx.config,
            sections=ctx.sections,
            flags=ctx.flags,
        )
        for name, earlier in ctx.parts.items():
            info.tables[name] = merge_parts([earlier], name)[0]
        return self.combine(tables, extras, info)

    def max_passes(self, plan: MetricPlan) -> tuple[float, float] | None:
        """An upper bound of the (forward, backward) model passes this check costs per scanned
        sample, known before it runs (the scan's estimate, :mod:`robaudit.estimate`). None: not
        counted in advance."""
        return None

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
        "robaudit.checks.certify",
    ),
)


def check_parameters(cls) -> dict[str, object]:
    """A check's settable parameters: its annotated, non-ClassVar class attributes and their defaults."""
    out: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        for key, ann in vars(klass).get("__annotations__", {}).items():
            if "ClassVar" not in str(ann) and not key.startswith("_") and hasattr(cls, key):
                out[key] = getattr(cls, key)
    return out


def build_check(name: str, params=()):
    """The registered check ``name`` with parameter overrides (``surfaces:steps=41``) applied."""
    cls = CHECKS.get(name)
    allowed = check_parameters(cls)
    check = cls()
    for key, value in params:
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise UsageError(f"check {name!r} has no parameter {key!r}; its parameters are: {known}")
        default = allowed[key]
        if isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, (int, float)) and not isinstance(value, (int, float))
        ):
            raise UsageError(f"check {name!r}: {key}={value!r} must be {type(default).__name__} like its default {default!r}")
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        setattr(check, key, value)
    return check
