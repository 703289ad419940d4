"""DataSpec: what every dataset loader returns. Tensors in pixel space [0,1], never normalized."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["DataSpec", "DataRequest"]


@dataclass(frozen=True)
class DataRequest:
    """What the user asked for. ``n=None`` means the whole split; ``n`` takes the first N
    samples in the dataset's own order (as RobustBench does), so it is deterministic."""

    split: str = "test"
    n: int | None = None
    data_dir: str | None = None
    download: bool = False
    seed: int = 0
    image_size: int | None = None  # imagefolder only: resize the short side, then centre-crop a square


@dataclass(frozen=True)
class DataSpec:
    """A labelled sample of images.

    x: float32 [N, C, H, W] in [0, 1] (pixel space; normalization lives inside the model).
    y: int64 [N], in 0..num_classes-1.
    mean/std: the dataset's conventional per-channel normalization, informative only (a model
    carries its own in its metadata).
    """

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    class_names: tuple[str, ...]
    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x.shape[1:])  # type: ignore[return-value]
