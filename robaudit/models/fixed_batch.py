"""Auditing a model that only runs at one batch size (a ``torch.export`` graph specialized to it).

``torch.export`` specializes the batch dimension unless it was exported with ``dynamic_shapes``
(and always when exported with batch 1); the graph then refuses any other batch size. robaudit
audits such a model at its own batch size B: :class:`FixedBatchModel` splits every call into
chunks of B samples and pads the last chunk with zero images, whose outputs are dropped
(:func:`forward_in_blocks`, also behind the engine's ``--compute-block``). In eval mode samples don't interact, so each real sample's output (and its input
gradient, Hessian-vector product, ...) is exactly what a dynamic-batch model would give. Every
call path is covered: the engine's batches, subsets an attack keeps querying (Square's unbroken
samples, APGD-T's targets, cascades), ``torch.func`` transforms of the geometry checks.

Cost: a call on n samples runs ⌈n/B⌉ graph calls of B samples; B = 1 means one call per sample.
"""

from __future__ import annotations

import torch
from torch import nn

from .wrapper import NormalizedModel

__all__ = ["FixedBatchModel", "forward_in_blocks", "static_batch_size"]


def static_batch_size(model: nn.Module) -> int | None:
    """The batch size a ``torch.export`` graph was specialized to, read from its first 4-D input
    placeholder; None for a dynamic batch dimension or a model that is not an exported graph."""
    inner = model.inner if isinstance(model, NormalizedModel) else model
    if not isinstance(inner, torch.fx.GraphModule):
        return None
    for node in inner.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(val, torch.Tensor) and val.ndim == 4:
            batch = val.shape[0]
            return int(batch) if isinstance(batch, int) else None
    return None


def forward_in_blocks(forward, x: torch.Tensor, block: int) -> torch.Tensor:
    """``forward`` run on blocks of exactly ``block`` rows of ``x``, the last padded with zero
    images whose outputs are dropped; also with no row (one padded block, for the output's shape).
    In eval mode rows don't interact, so each row's output and derivatives are those of a free call."""
    n = x.shape[0]
    if n == block:
        return forward(x)
    if n == 0:
        return forward(x.new_zeros(block, *x.shape[1:]))[:0]
    outs = []
    for start in range(0, n, block):
        chunk = x[start : start + block]
        real = chunk.shape[0]
        if real < block:
            chunk = torch.cat([chunk, chunk.new_zeros((block - real, *chunk.shape[1:]))])
        outs.append(forward(chunk)[:real])
    return torch.cat(outs) if len(outs) != 1 else outs[0]


class FixedBatchModel(NormalizedModel):
    """A :class:`NormalizedModel` whose inner model accepts exactly ``batch`` samples per call:
    ``forward`` runs any number of samples in chunks of ``batch``, padding the last chunk."""

    def __init__(self, model: NormalizedModel, batch: int):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        stats = [None if t is None else t.flatten().tolist() for t in (model.mean, model.std)]
        super().__init__(model.inner, *stats)
        self.batch = int(batch)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_in_blocks(super().forward, x, self.batch)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, batch={self.batch}"
