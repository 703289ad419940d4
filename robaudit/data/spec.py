"""DataSpec: what every dataset loader returns. Pixels in [0,1], never normalized, read lazily.

A DataSpec is a labelled sequence of images in the scan's order (*positions* 0..n−1). Its images
are either held in memory (a float32 tensor in [0,1] or a uint8 tensor of 0..255 pixels: the
embedded demo, tensor files, the built-in datasets) or read on demand from a map-style
``torch.utils.data.Dataset`` whose item ``p`` is image ``p`` as float32 ``[C,H,W]`` in [0,1] (image
folders). Labels are always in memory. ``indices[p]`` is the sample's index in the full split (its
*dataset index*): what the result records and what keys every per-sample random draw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import RobauditError

__all__ = ["DataSpec", "DataRequest", "SAMPLE_MODES", "as_positions"]

SAMPLE_MODES = ("first", "stratified")


@dataclass(frozen=True)
class DataRequest:
    """What the user asked for. ``n=None`` means the whole split. ``sample``: how ``n`` samples are
    chosen — ``first`` (the first N in the dataset's own order, as RobustBench does),
    ``stratified`` (a seeded, class-stratified subset, see :func:`robaudit.data.sampling.select`),
    or None: the dataset's default (stratified for image folders, first for everything else).
    ``class_map``: image folders only, a file mapping folder names to the model's class indices.
    ``resize``: image folders only, the short side before the ``image_size`` centre crop (the
    ImageNet convention is resize 256, crop 224); default ``image_size``."""

    split: str = "test"
    n: int | None = None
    data_dir: str | None = None
    download: bool = False
    seed: int = 0
    image_size: int | None = None  # imagefolder only: resize the short side, then centre-crop a square
    sample: str | None = None
    class_map: str | None = None
    resize: int | None = None


def as_positions(positions: Any, n: int) -> torch.Tensor:
    """Positions as an int64 CPU tensor (from a tensor, a range, a slice or a sequence of ints)."""
    if isinstance(positions, slice):
        return torch.arange(n)[positions]
    if isinstance(positions, torch.Tensor):
        return positions.detach().to(device="cpu", dtype=torch.long).reshape(-1)
    return torch.as_tensor(list(positions), dtype=torch.long).reshape(-1)


@dataclass(frozen=True, init=False)
class DataSpec:
    """A labelled sample of images.

    images: float32 ``[N, C, H, W]`` in [0, 1], uint8 ``[N, C, H, W]`` (pixels 0..255), or a lazy
    map-style Dataset whose item p is float32 ``[C, H, W]`` in [0, 1] (it must also have
    ``sample_shape``, the ``(C, H, W)`` of every item). Constructors accept ``x=`` for ``images``
    (the name before images could be lazy). y: int64 [N], in 0..num_classes-1.
    indices: the dataset index of each sample (None: 0..N−1). sample: how they were chosen.
    mean/std: the dataset's conventional per-channel normalization, informative only (a model
    carries its own in its metadata).
    """

    name: str
    split: str
    images: Any
    y: torch.Tensor
    class_names: tuple[str, ...]
    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: dict = field(default_factory=dict)
    indices: tuple[int, ...] | None = None
    sample: str = "first"

    def __init__(
        self,
        name: str,
        split: str,
        images: Any = None,
        y: torch.Tensor | None = None,
        class_names: Sequence[str] = (),
        source: str = "",
        mean=None,
        std=None,
        extra: dict | None = None,
        indices: Sequence[int] | None = None,
        sample: str = "first",
        *,
        x: Any = None,
    ) -> None:
        if x is not None:  # ``x=`` (and dataclasses.replace(spec, x=...)) predates lazy images
            images = x
        if images is None or y is None:
            raise TypeError("DataSpec needs images (x) and labels (y)")
        values = dict(
            name=name,
            split=split,
            images=images,
            y=y,
            class_names=tuple(class_names),
            source=source,
            mean=mean,
            std=std,
            extra=dict(extra or {}),
            indices=None if indices is None else tuple(int(i) for i in indices),
            sample=sample,
        )
        for key, value in values.items():
            object.__setattr__(self, key, value)

    # --- shape ------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        if isinstance(self.images, torch.Tensor):
            return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]
        return tuple(int(s) for s in self.images.sample_shape)  # type: ignore[return-value]

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, torch.Tensor)

    @property
    def dataset_indices(self) -> torch.Tensor:
        """int64 [N]: each sample's index in the full split (keys its random draws)."""
        if self.indices is None:
            return torch.arange(self.n)
        return torch.tensor(self.indices, dtype=torch.long)

    # --- pixels -----------------------------------------------------------------------------
    def batch(self, positions: Any) -> torch.Tensor:
        """Images at ``positions`` as float32 ``[k, C, H, W]`` in [0,1] on the CPU (a few samples:
        a gallery, the k samples of a geometry check; batches of a scan go through :meth:`batches`)."""
        pos = as_positions(positions, self.n)
        if isinstance(self.images, torch.Tensor):
            return _to_unit(self.images[pos])
        if pos.numel() == 0:
            return torch.empty(0, *self.input_shape)
        return torch.stack([self.images[int(p)] for p in pos.tolist()])

    @property
    def x(self) -> torch.Tensor:
        """All images as one float32 ``[N, C, H, W]`` tensor in [0,1]. Reads a lazy dataset whole
        (N·C·H·W·4 bytes): for small data and training loops; scans read batches instead."""
        if isinstance(self.images, torch.Tensor) and self.images.dtype == torch.float32:
            return self.images
        return self.batch(slice(None))

    def batches(
        self, positions: Any, batch_size: int, *, workers: int = 0, pin_memory: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x [b,C,H,W] float32 in [0,1], y [b])`` on the CPU for consecutive chunks of
        ``positions``, in order. A lazy dataset is read by a DataLoader with ``workers`` worker
        processes (pinned memory when asked); in-memory images are indexed directly."""
        pos = as_positions(positions, self.n)
        if isinstance(self.images, torch.Tensor):
            for start in range(0, pos.numel(), batch_size):
                sel = pos[start : start + batch_size]
                xb = _to_unit(self.images[sel])
                yield (xb.pin_memory() if pin_memory else xb), self.y[sel]
            return
        from torch.utils.data import DataLoader

        chunks = [pos[s : s + batch_size].tolist() for s in range(0, pos.numel(), batch_size)]
        loader = DataLoader(
            self.images,
            batch_sampler=chunks,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
        )
        try:
            for chunk, xb in zip(chunks, loader):
                yield xb, self.y[torch.tensor(chunk, dtype=torch.long)]
        except RobauditError as exc:  # raised in a worker: the DataLoader wraps its traceback in the message
            message = str(exc).strip().splitlines()[-1]
            raise type(exc)(message.split(f"{type(exc).__name__}: ", 1)[-1]) from None

    # --- subsets ----------------------------------------------------------------------------
    def subset(self, positions: Any, sample: str | None = None) -> DataSpec:
        """The samples at ``positions`` (in that order), their dataset indices carried along."""
        pos = as_positions(positions, self.n)
        images: Any
        if isinstance(self.images, torch.Tensor):
            images = self.images[pos]
        else:
            images = _LazySubset(self.images, pos.tolist())
        return DataSpec(
            self.name,
            self.split,
            images,
            self.y[pos],
            self.class_names,
            self.source,
            self.mean,
            self.std,
            self.extra,
            indices=self.dataset_indices[pos].tolist(),
            sample=sample or self.sample,
        )


def _to_unit(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    return t.to(torch.float32)


class _LazySubset(torch.utils.data.Dataset):
    """Items ``keep[p]`` of a lazy dataset, as positions 0..len(keep)−1."""

    def __init__(self, base, keep: list[int]) -> None:
        self.base, self.keep = base, keep
        self.sample_shape = base.sample_shape

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, p: int) -> torch.Tensor:
        return self.base[self.keep[p]]
