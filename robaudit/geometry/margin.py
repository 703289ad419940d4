"""Per-sample decision functions of the logits (Yu et al., 000 §3: L(x) = Z_y(x) − max_{i≠y} Z_i(x)).

All functions return one value per sample (shape [B]); never a batch mean, so that the gradient
of their sum w.r.t. the input is each sample's own gradient (no 1/B scaling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["margin", "cross_entropy", "true_class_probability", "best_other_class"]


def best_other_class(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Index of the highest logit among the classes other than y (ties → lowest index)."""
    masked = logits.detach().clone()
    masked.scatter_(1, y[:, None], float("-inf"))
    return masked.argmax(dim=1)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L(x) = Z_y − max_{i≠y} Z_i in logit units; > 0 correct, < 0 misclassified, 0 on the boundary."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return z_y - other


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy in nats."""
    return F.cross_entropy(logits, y, reduction="none")


def true_class_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """softmax(Z)_y, the model's estimated probability of the true class."""
    return logits.softmax(dim=1).gather(1, y[:, None]).squeeze(1)
