"""``NormalizedModel``: the model robaudit attacks. Inputs are pixel space [0,1]; normalization is inside."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["NormalizedModel"]


def _stats(values: Sequence[float] | None, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty list of floats")
    return t.view(1, -1, 1, 1)


class NormalizedModel(nn.Module):
    """``forward(x) = inner((x - mean) / std)`` with ``mean``/``std`` as [1,C,1,1] buffers (None = identity).

    Works for plain modules, TorchScript modules and ``torch.export`` GraphModules. The
    constructor puts the model in eval mode and leaves ``requires_grad`` of the parameters as it
    is. Exported programs are frozen in the mode they were exported in: ``train()``/``eval()``
    only flip this wrapper's flag for them (torch raises NotImplementedError on those modules).
    The buffers are non-persistent, so ``state_dict()`` holds only ``inner.*`` weights.
    """

    mean: torch.Tensor | None  # buffers [1,C,1,1] (registered in __init__)
    std: torch.Tensor | None

    def __init__(self, inner: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.inner = inner
        std_t = _stats(std, "std")
        if std_t is not None and bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {list(std or ())}")
        self.register_buffer("mean", _stats(mean, "mean"), persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return self.inner(x)

    def train(self, mode: bool = True) -> NormalizedModel:
        self.training = mode
        try:
            self.inner.train(mode)
        except NotImplementedError:  # torch.export GraphModule: frozen in its export mode
            pass
        return self

    @property
    def channels(self) -> int | None:
        """How many channels mean/std were given for (None when both are identity or scalar)."""
        sizes = {t.shape[1] for t in (self.mean, self.std) if t is not None and t.shape[1] > 1}
        return sizes.pop() if len(sizes) == 1 else None

    def extra_repr(self) -> str:
        fmt = lambda t: "None" if t is None else str([round(v, 4) for v in t.flatten().tolist()])  # noqa: E731
        return f"mean={fmt(self.mean)}, std={fmt(self.std)}"
