"""Margin statistics of the clean samples (ICML 2020 paper, 003: margin distributions).

L(x) = Z_y(x) − max_{i≠y} Z_i(x) in logit units (> 0 correct). Also the true-class probability
softmax(Z)_y and the cross-entropy loss in nats, whose histograms the report draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..geometry.margin import cross_entropy, margin, true_class_probability
from ..parts import Part, to_list
from ..schema import Section, section
from .base import CHECKS, Check
from .clean import per_class_mean

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
QUANTILE_KEYS = tuple(f"{int(q * 100):02d}" for q in QUANTILES)
MARGIN_METRICS = ("margins.mean", "margins.median", "margins.fraction_negative", "margins.mean_loss") + tuple(
    f"margins.q{k}" for k in QUANTILE_KEYS
)
TRAIN_METRICS = ("margins.loss_gap", "margins.train_median")  # with --train-n


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
    per_sample_fields: ClassVar = (
        "margins",
        "true_class_probability",
        "loss",
    )  # what the JSON reader checks (results.Section)
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
            out["margins.train_median"] = self.train_median if self.train_median is not None else math.nan
        return out

    def metric_names(self) -> tuple[str, ...]:
        return MARGIN_METRICS + (TRAIN_METRICS if self.train_n else ())


@CHECKS.register("margins")
class MarginCheck(Check):
    """Per-sample records (table ``samples``): margin, p_true, loss (float64 from the float32 clean
    logits). With ``--train-n`` the lead process also records the training samples' margins and
    losses (extra ``train``); the loss gap is recomputed from both lists."""

    name = "margins"
    requires = ("clean",)
    description = "distribution of the logit margin L(x), true-class probability and loss"

    def max_passes(self, plan) -> tuple[float, float] | None:
        # the clean check's logits; --train-n's training samples are not counted
        return (0.0, 0.0) if plan.train_n is None else None

    def metric_names(self, plan) -> tuple[str, ...]:
        return MARGIN_METRICS + (TRAIN_METRICS if plan.train_n else ())

    def compute(self, ctx) -> Part:
        logits = ctx.cache["clean_logits"].double()
        y = ctx.data.y[ctx.positions]
        part = Part()
        part.add(
            "samples",
            ctx.positions,
            margin=margin(logits, y),
            p_true=true_class_probability(logits, y),
            loss=cross_entropy(logits, y),
        )
        if ctx.lead and ctx.train_data is not None:
            part.extra["train"] = self._train(ctx)
        return part

    def combine(self, tables, extras, info) -> MarginSection:
        t = tables["samples"]
        m, p, loss = t.tensor("margin"), t.tensor("p_true"), t.tensor("loss")
        y = info.clean().tensor("label", torch.long)
        q = torch.quantile(m, torch.tensor(QUANTILES, dtype=m.dtype))
        train = next((e["train"] for e in extras if "train" in e), None)
        return MarginSection(
            function="L(x) = Z_y - max_{i!=y} Z_i on logits, pixel-space inputs [0,1]",
            mean=float(m.mean()),
            median=float(m.median()),
            std=float(m.std()) if m.numel() > 1 else 0.0,
            quantiles={k: float(v) for k, v in zip(QUANTILE_KEYS, q)},
            fraction_negative=float((m < 0).double().mean()),
            per_class_mean=per_class_mean(m, y, info.num_classes),
            mean_true_class_probability=float(p.mean()),
            mean_loss=float(loss.mean()),
            margins=tuple(round(float(v), 6) for v in m),
            true_class_probability=tuple(round(float(v), 6) for v in p),
            loss=tuple(round(float(v), 6) for v in loss),
            **(self._train_fields(train, float(loss.mean())) if train is not None else {}),
        )

    @staticmethod
    def _train(ctx) -> dict:
        data = ctx.train_data
        logits = torch.empty(data.n, data.num_classes, dtype=torch.float64)

        def batch(x, y, sl):
            with torch.no_grad():
                logits[sl] = ctx.plain_model(x).double().cpu()

        ctx.map_batches(batch, description="margins: training samples", data=data)
        return {"margin": to_list(margin(logits, data.y)), "loss": to_list(cross_entropy(logits, data.y))}

    @staticmethod
    def _train_fields(train: dict, test_loss: float) -> dict:
        m = torch.tensor(train["margin"], dtype=torch.float64)
        train_loss = float(torch.tensor(train["loss"], dtype=torch.float64).mean())
        return {
            "train_n": int(m.numel()),
            "train_median": float(m.median()),
            "train_mean_loss": train_loss,
            "loss_gap": test_loss - train_loss,
            "train_margins": tuple(round(float(v), 6) for v in m),
        }
