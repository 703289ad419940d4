"""Clean accuracy, per class, and the clean logits every later check reuses.

Per-sample records (table ``samples``, every sample): label, prediction, correct, and the clean
margin L(x) = Z_y − max_{i≠y} Z_i (float64 from the float32 logits) that later checks' selections (the
lowest-margin samples) and the ``margins`` check read. The section is recomputed from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..geometry.margin import margin
from ..parts import Part
from ..schema import Section, section
from .base import CHECKS, Check


@section("clean")
@dataclass(frozen=True)
class CleanSection(Section):
    """accuracy: fraction in [0,1] of the n samples classified correctly; per_class: same per class
    (None for a class with no samples); correct: per sample, in dataset order."""

    n: int
    accuracy: float
    per_class: tuple[float | None, ...]
    correct: tuple[bool, ...]
    predictions: tuple[int, ...]
    labels: tuple[int, ...] = ()
    per_sample_fields: ClassVar = ("correct", "predictions", "labels")  # what the JSON reader checks (results.Section)
    per_class_fields: ClassVar = ("per_class",)

    def metrics(self) -> dict[str, float]:
        return {"clean.accuracy": self.accuracy}

    def outcomes(self) -> dict[str, tuple[bool, ...]]:
        return {"clean.accuracy": tuple(self.correct)}

    def per_class_intervals(self) -> dict[str, list]:
        """``{"clean.accuracy": [Proportion or None per class]}`` (needs ``labels``; {} without)."""
        if len(self.labels) != len(self.correct):
            return {}
        from ..stats import proportion

        out = []
        for c in range(len(self.per_class)):
            hits = [ok for ok, y in zip(self.correct, self.labels) if y == c]
            out.append(proportion(hits) if hits else None)
        return {"clean.accuracy": out}


def per_class_mean(values: torch.Tensor, labels: torch.Tensor, num_classes: int, reduce=None) -> tuple[float | None, ...]:
    """Per class c: ``reduce(values[labels == c])`` (default: the mean, float64), None when absent."""
    out: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        if not bool(mask.any()):
            out.append(None)
        else:
            v = values[mask].double()
            out.append(float(v.mean() if reduce is None else reduce(v)))
    return tuple(out)


@CHECKS.register("clean")
class CleanCheck(Check):
    name = "clean"
    description = "accuracy on unperturbed inputs"

    def metric_names(self, plan) -> tuple[str, ...]:
        return ("clean.accuracy",)

    def max_passes(self, plan) -> tuple[float, float]:
        return 1.0, 0.0

    def compute(self, ctx) -> Part:
        k = ctx.data.num_classes
        n = int(ctx.positions.numel())
        logits = torch.empty(n, k)

        def batch(x, y, sl):
            with torch.no_grad():
                out = ctx.model(x)
            if out.dim() != 2 or out.shape[1] != k:
                from ..errors import InputError

                raise InputError(f"model output has shape {list(out.shape)}, expected [batch, {k}] for {ctx.data.name}")
            logits[sl] = out.detach().float().cpu()

        ctx.map_batches(batch, description="clean accuracy")
        ctx.cache["clean_logits"] = logits  # rows aligned with ctx.positions
        labels = ctx.data.y[ctx.positions]
        pred = logits.argmax(1)
        part = Part()
        part.add(
            "samples",
            ctx.positions,
            label=labels,
            prediction=pred,
            correct=pred == labels,
            margin=margin(logits.double(), labels),
        )
        return part

    def combine(self, tables, extras, info) -> CleanSection:
        t = tables["samples"]
        labels = t.tensor("label", torch.long)
        correct = t.tensor("correct", torch.bool)
        return CleanSection(
            n=len(t),
            accuracy=float(correct.double().mean()) if len(t) else 0.0,
            per_class=per_class_mean(correct, labels, info.num_classes),
            correct=tuple(bool(v) for v in t.col("correct")),
            predictions=tuple(int(v) for v in t.col("prediction")),
            labels=tuple(int(v) for v in t.col("label")),
        )
