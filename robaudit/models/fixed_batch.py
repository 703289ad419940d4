"""Auditing a model that only runs at one batch size (a ``torch.export`` graph specialized to it).

``torch.export`` specializes the batch dimension unless it was exported with ``dynamic_shapes``
(and always when exported with batch 1); the graph then refuses any other batch size. robaudit
audits such a model at its own batch size B: :class:`FixedBatchModel` splits every call into
chunks of B samples and pads the last chunk with copies of its last sample, whose outputs are
dropped. In eval mode samples don't interact, so each real sample's output (and its input
gradient, Hessian-vector product, ...) is exactly what a dynamic-batch model would give. Every
call path is covered: the engine's batches, subsets an attack keeps querying (Square's unbroken
samples, APGD-T's targets, cascades), ``torch.func`` transforms of the geometry checks.

Cost: a call on n samples runs ⌈n/B⌉ graph calls of B samples; B = 1 means one call per sample.
"""
from __future__ import annotations

import torch
from torch import nn

from .wrapper import NormalizedModel

__all__ = ["FixedBatchModel", "static_batch_size"]


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
        if x.shape[0] == 0:  # no sample: run one padded chunk for the output's shape
            return super().forward(x.new_zeros(self.batch, *x.shape[1:]))[:0]
        outs = []
        for start in range(0, x.shape[0], self.batch):
            chunk = x[start:start + self.batch]
            real = chunk.shape[0]
            if real < self.batch:  # padding rows: detached copies, their outputs are dropped
                pad = chunk[-1:].detach().expand(self.batch - real, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            outs.append(super().forward(chunk)[:real])
        return torch.cat(outs) if len(outs) != 1 else outs[0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, batch={self.batch}"
