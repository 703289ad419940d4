"""Margin statistics of the clean samples (ICML 2020 paper, 003: margin distributions).

L(x) = Z_y(x) − max_{i≠y} Z_i(x) in logit units (> 0 correct). Also the true-class probability
softmax(Z)_y and the cross-entropy loss in nats, whose histograms the report draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..geometry.margin import cross_entropy, margin, true_class_probability
from ..results import Section, section
from .base import CHECKS, Check

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@section("margins")
@dataclass(frozen=True)
class MarginSection(Section):
    """Summary of L(x) over all n samples (logit units), of softmax(Z)_y and of the CE loss (nats)."""

    function: str
    mean: float
    median: float
    std: float
    quantiles: dict[str, float]
    fraction_negative: float
    per_class_mean: tuple[float | None, ...]
    mean_true_class_probability: float
    mean_loss: float
    margins: tuple[float, ...]
    true_class_probability: tuple[float, ...]
    loss: tuple[float, ...]
    # With --train-n: the same on the first N training samples, and the generalization gap
    # mean test CE − mean train CE (nats), as in the ICML 2020 paper's margin/loss-gap analysis.
    train_n: int = 0
    train_median: float | None = None
    train_mean_loss: float | None = None
    loss_gap: float | None = None
    train_margins: tuple[float, ...] = ()
    per_sample_fields: ClassVar = ("margins", "true_class_probability", "loss")  # what the JSON reader checks (results.Section)
    per_class_fields: ClassVar = ("per_class_mean",)

    def metrics(self) -> dict[str, float]:
        out = {
            "margins.mean": self.mean,
            "margins.median": self.median,
            "margins.fraction_negative": self.fraction_negative,
            "margins.mean_loss": self.mean_loss,
        }
        out.update({f"margins.q{k}": v for k, v in self.quantiles.items()})
        if self.loss_gap is not None:
            out["margins.loss_gap"] = self.loss_gap
            out["margins.train_median"] = self.train_median
        return out


@CHECKS.register("margins")
class MarginCheck(Check):
    name = "margins"
    requires = ("clean",)
    description = "distribution of the logit margin L(x), true-class probability and loss"

    def run(self, ctx) -> MarginSection:
        logits = ctx.cache["clean_logits"].double()
        y = ctx.data.y
        m = margin(logits, y)
        p = true_class_probability(logits, y)
        loss = cross_entropy(logits, y)
        q = torch.quantile(m, torch.tensor(QUANTILES, dtype=m.dtype))
        per_class = []
        for c in range(ctx.data.num_classes):
            mask = y == c
            per_class.append(float(m[mask].mean()) if mask.any() else None)
        train = self._train(ctx)
        return MarginSection(
            function="L(x) = Z_y - max_{i!=y} Z_i on logits, pixel-space inputs [0,1]",
            mean=float(m.mean()),
            median=float(m.median()),
            std=float(m.std()) if m.numel() > 1 else 0.0,
            quantiles={f"{int(k * 100):02d}": float(v) for k, v in zip(QUANTILES, q)},
            fraction_negative=float((m < 0).double().mean()),
            per_class_mean=tuple(per_class),
            mean_true_class_probability=float(p.mean()),
            mean_loss=float(loss.mean()),
            margins=tuple(round(float(v), 6) for v in m),
            true_class_probability=tuple(round(float(v), 6) for v in p),
            loss=tuple(round(float(v), 6) for v in loss),
            **train,
        )

    @staticmethod
    def _train(ctx) -> dict:
        data = ctx.train_data
        if data is None:
            return {}
        logits = torch.empty(data.n, data.num_classes, dtype=torch.float64)

        def batch(x, y, sl):
            with torch.no_grad():
                logits[sl] = ctx.model(x).double().cpu()

        ctx.map_batches(batch, description="margins: training samples", data=data)
        m = margin(logits, data.y)
        train_loss = float(cross_entropy(logits, data.y).mean())
        test_loss = float(cross_entropy(ctx.cache["clean_logits"].double(), ctx.data.y).mean())
        return {
            "train_n": data.n,
            "train_median": float(m.median()),
            "train_mean_loss": train_loss,
            "loss_gap": test_loss - train_loss,
            "train_margins": tuple(round(float(v), 6) for v in m),
        }
