"""confidence-calibration: expected calibration error (ECE) of the clean predictions.

Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks* (ICML 2017), Eq. 3:
ECE = Σ_b (|B_b|/n)·|acc(B_b) − conf(B_b)| over M equal-width confidence bins (M = 15 as in the
paper); MCE = max_b |acc(B_b) − conf(B_b)|. Confidence = max softmax probability. Reuses the clean
logits of the ``clean`` check, so it costs no extra forward pass. Per-sample parts (confidence,
correct) and a combine over all of them, so it runs in sharded and ``torchrun`` scans too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robaudit.checks import Check
from robaudit.errors import UsageError
from robaudit.parts import Part
from robaudit.results import Section, section

__all__ = ["CalibrationSection", "CalibrationCheck", "calibration_bins", "bins_from", "confidence_and_correct"]

N_BINS = 15


def calibration_bins(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS):
    """(ece, mce, count[b], mean confidence[b], accuracy[b]) over equal-width bins of (0, 1];
    empty bins get NaN confidence/accuracy and don't count."""
    conf, correct = confidence_and_correct(logits, labels)
    return bins_from(conf, correct, n_bins)


def confidence_and_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the max softmax probability (float64) and whether the prediction is right."""
    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(dim=1)
    return conf, pred == labels


def bins_from(conf: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS):
    """:func:`calibration_bins` from per-sample confidences and correctness."""
    conf, correct = conf.double(), correct.double()
    # bin b holds confidences in (b/M, (b+1)/M]; confidence > 0 always (softmax)
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    nz = count > 0
    mean_conf = torch.where(nz, conf_sum / count.clamp_min(1), torch.nan)
    mean_acc = torch.where(nz, acc_sum / count.clamp_min(1), torch.nan)
    gap = (mean_acc - mean_conf).abs()
    ece = float((count[nz] / count.sum() * gap[nz]).sum())
    mce = float(gap[nz].max()) if nz.any() else 0.0
    return ece, mce, count.long(), mean_conf, mean_acc


@section("confidence-calibration")
@dataclass(frozen=True)
class CalibrationSection(Section):
    """ece/mce in [0,1]; mean_confidence and accuracy over the n samples; per bin (n_bins equal
    widths of (0,1]): bin_count, bin_confidence, bin_accuracy (None for an empty bin)."""

    n: int
    n_bins: int
    ece: float
    mce: float
    mean_confidence: float
    accuracy: float
    bin_count: tuple[int, ...]
    bin_confidence: tuple[float | None, ...]
    bin_accuracy: tuple[float | None, ...]

    def metrics(self) -> dict[str, float]:
        return {"calibration.ece": self.ece, "calibration.mce": self.mce, "calibration.mean_confidence": self.mean_confidence}


class CalibrationCheck(Check):
    """Writes the ``confidence-calibration`` section: compute() records each sample's confidence
    and correctness, combine() bins all of them (robaudit.parts)."""

    name = "confidence-calibration"
    requires = ("clean",)
    description = "expected calibration error of clean predictions (Guo et al. 2017, 15 bins)"

    bins: int = N_BINS  # a parameter: --checks confidence-calibration:bins=30

    def compute(self, ctx) -> Part:
        """Per-sample records of this process's samples (``ctx.positions``): the confidence and
        whether the clean prediction is right, from the clean check's logits (no extra pass)."""
        if self.bins < 1:
            raise UsageError("confidence-calibration: bins must be >= 1")
        conf, correct = confidence_and_correct(ctx.cache["clean_logits"], ctx.data.y[ctx.positions])
        part = Part()
        part.add("samples", ctx.positions, confidence=conf, correct=correct)
        return part

    def combine(self, tables, extras, info) -> CalibrationSection:
        """The section from every process's records (bins recomputed over all samples)."""
        t = tables["samples"]
        conf, correct = t.tensor("confidence"), t.tensor("correct", torch.bool)
        ece, mce, count, bin_conf, bin_acc = bins_from(conf, correct, self.bins)
        none_if_nan = lambda v: tuple(None if x != x else float(x) for x in v.tolist())  # noqa: E731
        return CalibrationSection(
            n=len(t),
            n_bins=self.bins,
            ece=ece,
            mce=mce,
            mean_confidence=float(conf.mean()),
            accuracy=float(correct.double().mean()),
            bin_count=tuple(int(c) for c in count.tolist()),
            bin_confidence=none_if_nan(bin_conf),
            bin_accuracy=none_if_nan(bin_acc),
        )
