"""ScanResult: frozen dataclasses, versioned JSON. Renderers, the gate and compare read only this.

A scan's output is a set of *sections*, one per check (``clean``, ``attacks``, ``margins``, ...).
Each section type is a frozen dataclass registered under its name with :func:`section` where it is
defined (:mod:`robaudit.schema`, re-exported here for plugins), so JSON reads back into the same
types; a section written by a plugin that isn't installed reads back as a plain dict. Every section
exposes ``metrics()``: flat dotted names → floats, the vocabulary of gates and ``compare``.

Layering: this module sits above the checks (it reads back the section types they define) and
below the engine, the renderers, the gate and compare; :meth:`ScanResult.to_html`,
:meth:`ScanResult.samples` and :meth:`ScanResult.per_class` are thin facades over
:mod:`robaudit.report` (declared in pyproject.toml, ``[tool.robaudit.layers]``).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .schema import (
    Flag,
    Section,
    check_invariants,
    check_json_values,
    from_jsonable,
    json_kind,
    section,
    section_type,
    to_jsonable,
)

if typing.TYPE_CHECKING:
    from .stats import Proportion

__all__ = [
    "SCHEMA_VERSION",
    "Section",
    "section",
    "Provenance",
    "MemoryFormat",
    "Flag",
    "ScanResult",
    "to_jsonable",
    "from_jsonable",
    "check_invariants",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MemoryFormat:
    """How the model's memory format was chosen (``provenance.memory_format``).

    chosen: ``channels_last`` or ``contiguous``; how: ``auto`` (measured at scan start or kept by a
    rule), ``--channels-last`` or ``--no-channels-last``; reason: one line why. The probe (auto,
    when it ran): its rows, the seconds of one forward + one forward+backward of that batch in each
    format (the fastest of its rounds; timings, like ``timings``: they differ between runs), whether
    both formats decided the same, and the largest logit difference. converted_in_place: the module
    itself was converted (it could not be copied)."""

    chosen: str
    how: str
    reason: str
    probe_rows: int | None = None
    probe_seconds_contiguous: float | None = None
    probe_seconds_channels_last: float | None = None
    same_decisions: bool | None = None
    max_logit_difference: float | None = None
    converted_in_place: bool = False

    @property
    def channels_last(self) -> bool:
        return self.chosen == "channels_last"

    def summary(self) -> str:
        """One line for the terminal."""
        line = f"memory format: {self.chosen} ({self.how}: {self.reason})"
        if self.converted_in_place:
            line += "; the module itself was converted to channels_last (it could not be copied)"
        return line


@dataclass(frozen=True)
class Provenance:
    """Where a result came from. Same seed + same device + same inputs → same JSON (timings aside)."""

    robaudit_version: str
    torch_version: str
    device: str
    seed: int
    checkpoint: str
    checkpoint_sha256: str
    checkpoint_format: str
    arch: str | None
    dataset: str
    split: str
    n: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    data_source: str
    normalization_mean: tuple[float, ...] | None = None
    normalization_std: tuple[float, ...] | None = None
    command_line: str = ""
    weights: str | None = None  # published weights chosen by name, e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2
    # which samples: "first" N, a seeded "stratified" subset, or "all"; their dataset indices
    sample: str = "first"
    indices: tuple[int, ...] = ()
    # FixedBlockModel's block (None: the model saw the batches as they came); how it ran:
    # "1 process", "torchrun: N processes (gloo)", "merged from N shards" — like timings, not a result
    compute_block: int | None = None
    execution: str = ""
    fixed_batch: int | None = None  # the model ran at this batch size only (a fixed-batch export)
    # the dtype of the attacks' forward passes (--precision); every broken sample was re-checked in float32
    precision: str = "float32"
    # the model and its 4-d inputs ran in torch.channels_last memory format (--channels-last, or auto)
    channels_last: bool = False
    # how that format was chosen (robaudit.memory_format); None in results from before auto
    memory_format: MemoryFormat | None = None


@dataclass(frozen=True)
class ScanResult:
    provenance: Provenance
    sections: Mapping[str, Any] = field(default_factory=dict)
    flags: tuple[Flag, ...] = ()
    model_warnings: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)  # check name → wall seconds
    # check name → {"grad": input-gradient passes, "hvp": Hessian-vector products}, per sample
    # (robaudit.geometry.passes); like timings, a cost, not a result; absent from older results
    passes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def section(self, name: str):
        return self.sections.get(name)

    def metrics(self) -> dict[str, float]:
        """All sections' metrics in one flat dict (dotted names, see docs/results.md)."""
        out: dict[str, float] = {}
        for sec in self.sections.values():
            if hasattr(sec, "metrics"):
                out.update(sec.metrics())
        return out

    def samples(self):
        """A pandas DataFrame, one row per scanned sample in dataset order: index, label, prediction,
        correct, margin, true-class probability, loss, robust flags per attack and ε, and the
        per-sample geometry the sections hold (columns: robaudit.report.tables)."""
        from .report.tables import samples_table

        return samples_table(self)

    def per_class(self):
        """A pandas DataFrame, one row per class: n, clean and robust accuracy, margin / minimal
        radius / Jacobian summaries (robaudit.report.tables.per_class_table)."""
        from .report.tables import per_class_table

        return per_class_table(self)

    def metric_names(self) -> tuple[str, ...]:
        """Every metric name the sections can produce, with or without a value in this result."""
        names: dict[str, None] = {}
        for sec in self.sections.values():
            if hasattr(sec, "metric_names"):
                names.update(dict.fromkeys(sec.metric_names()))
            elif hasattr(sec, "metrics"):
                names.update(dict.fromkeys(sec.metrics()))
        names.update(dict.fromkeys(self.metrics()))
        return tuple(names)

    def outcomes(self) -> dict[str, tuple[bool, ...]]:
        """Per-sample booleans behind every proportion metric (accuracies), in dataset order."""
        out: dict[str, tuple[bool, ...]] = {}
        for sec in self.sections.values():
            if hasattr(sec, "outcomes"):
                out.update(sec.outcomes())
        return out

    def intervals(self) -> dict[str, Proportion]:
        """Metric name → k, n and the 95% Clopper–Pearson interval, for every proportion metric."""
        out: dict[str, Proportion] = {}
        for sec in self.sections.values():
            if hasattr(sec, "intervals"):
                out.update(sec.intervals())
        return out

    def to_html(self, gate_outcome=None) -> str:
        """The self-contained HTML report (robaudit.report.html.render_html)."""
        from .report.html import render_html

        return render_html(self, gate_outcome)

    # --- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "provenance": to_jsonable(self.provenance),
            "sections": {k: to_jsonable(v) for k, v in self.sections.items()},
            "flags": [to_jsonable(f) for f in self.flags],
            "model_warnings": list(self.model_warnings),
            "timings": to_jsonable(dict(self.timings)),
            "passes": to_jsonable({k: dict(v) for k, v in self.passes.items()}),
            "intervals": self._intervals_json(),
        }

    def _intervals_json(self) -> dict:
        """Derived from the per-sample outcomes, written for readers of the JSON; ignored on load."""
        from .stats import LEVEL, METHOD

        per_class = {}
        for sec in self.sections.values():
            if hasattr(sec, "per_class_intervals"):
                per_class.update(
                    {k: [None if p is None else p.to_dict() for p in v] for k, v in sec.per_class_intervals().items()}
                )
        return {
            "method": METHOD,
            "level": LEVEL,
            "metrics": {name: p.to_dict() for name, p in self.intervals().items()},
            "per_class": per_class,
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write_json(self, path: str | Path) -> None:
        """Write atomically: a reader (or a Ctrl-C) never sees a partial file."""
        from .outputs import atomic_write

        atomic_write(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Any) -> ScanResult:
        """The result from parsed JSON; InputError naming the field when its shape is wrong."""
        if not isinstance(data, dict):
            raise InputError(
                f"the top level is {json_kind(data)}, expected an object with schema_version, provenance and sections"
            )
        version = data.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise InputError(
                f"result schema version {version!r} is not supported (this robaudit reads version {SCHEMA_VERSION}); "
                "re-run the scan with this version"
            )
        check_json_values(data)
        _import_builtin_sections()
        if "provenance" not in data:
            raise InputError("missing field 'provenance'")
        raw_sections = data.get("sections", {})
        if not isinstance(raw_sections, dict):
            raise InputError(f"sections: expected an object (section name → section), got {json_kind(raw_sections)}")
        sections = {}
        for name, payload in raw_sections.items():
            if not isinstance(payload, dict):
                raise InputError(f"sections.{name}: expected an object, got {json_kind(payload)}")
            typ = section_type(name)
            sections[name] = from_jsonable(typ, payload, f"sections.{name}") if typ else payload
        hints = typing.get_type_hints(cls)
        provenance = from_jsonable(Provenance, data["provenance"], "provenance")
        if provenance.n < 0:
            raise InputError(f"provenance.n: a sample count can't be negative, got {provenance.n}")
        try:
            for name, sec in sections.items():
                if not isinstance(sec, dict):  # a plugin's section read as a plain dict declares nothing
                    check_invariants(
                        sec,
                        f"sections.{name}",
                        n=provenance.n,
                        n_classes=len(provenance.class_names),
                        input_shape=tuple(provenance.input_shape),
                    )
        except RecursionError:
            raise InputError("sections: nested too deeply") from None
        return cls(
            provenance=provenance,
            sections=sections,
            flags=from_jsonable(hints["flags"], data.get("flags", []), "flags"),
            model_warnings=from_jsonable(hints["model_warnings"], data.get("model_warnings", []), "model_warnings"),
            timings=from_jsonable(hints["timings"], data.get("timings", {}), "timings"),
            passes=from_jsonable(hints["passes"], data.get("passes", {}), "passes"),
            schema_version=version,
        )

    @classmethod
    def read_json(cls, path: str | Path) -> ScanResult:
        """Read a result file; any malformed content is an InputError (exit 3) in one line naming the field."""
        from .jsonio import read_json

        data = read_json(path, "robaudit JSON result")  # at most jsonio.MAX_FILE_BYTES, checked before parsing
        try:
            return cls.from_dict(data)
        except InputError as exc:
            raise InputError(f"{path} is not a valid robaudit result: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a section's own checks
            raise InputError(f"{path} is not a valid robaudit result ({type(exc).__name__}: {exc})") from None


def _import_builtin_sections() -> None:
    """The built-in checks define (and register) the section types: results sits above them."""
    from . import checks  # noqa: F401
