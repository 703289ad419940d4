"""Clean accuracy, per class, and the clean logits every later check reuses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..results import Section, section
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


@CHECKS.register("clean")
class CleanCheck(Check):
    name = "clean"
    description = "accuracy on unperturbed inputs"

    def run(self, ctx) -> CleanSection:
        n = ctx.data.n
        logits = torch.empty(n, ctx.data.num_classes)

        def batch(x, y, sl):
            with torch.no_grad():
                out = ctx.model(x)
            if out.dim() != 2 or out.shape[1] != ctx.data.num_classes:
                from ..errors import InputError

                raise InputError(
                    f"model output has shape {list(out.shape)}, expected [batch, {ctx.data.num_classes}] for {ctx.data.name}"
                )
            logits[sl] = out.detach().float().cpu()

        ctx.map_batches(batch, description="clean accuracy")
        ctx.cache["clean_logits"] = logits
        pred = logits.argmax(1)
        correct = pred == ctx.data.y
        per_class = []
        for c in range(ctx.data.num_classes):
            mask = ctx.data.y == c
            per_class.append(float(correct[mask].double().mean()) if mask.any() else None)
        return CleanSection(
            n=n,
            accuracy=float(correct.double().mean()),
            per_class=tuple(per_class),
            correct=tuple(bool(v) for v in correct.tolist()),
            predictions=tuple(int(v) for v in pred.tolist()),
            labels=tuple(int(v) for v in ctx.data.y.tolist()),
        )
