"""Per-sample random streams: one seed, one answer at any batch size, shard or process count.

A torch.Generator shared by a batch hands sample i the numbers that follow the previous samples'
draws, so what a sample gets depends on its batch position. :class:`SampleRNG` instead gives
every row its own counter-based stream: draw number ``c`` of row r, element j, is a hash of
(scan seed, purpose tag, the row's **dataset index**, c, j). A sample therefore gets the same
random start, the same Square windows, the same SPSA probes whichever batch, shard or process
it lands in, and the draws stay batched tensor ops on the device (no per-sample Python loop).

The hash is Wellons' ``lowbias32`` (bias 0.17), applied twice per 32-bit word, computed in int64
lanes that never overflow (32-bit products are split in 16-bit halves), so the integer stream
is bit-identical on every device. Floats: uniform float32 from 24 bits, float64 from 53 bits;
normals by Box–Muller; integers below ``high`` by Lemire's multiply-shift (bias < high/2³²).

Rules for code that draws (the batch-32-vs-256 test checks them):

* a draw's ``counter`` is the stream position shared by the rows of one :class:`SampleRNG` and
  its :meth:`~SampleRNG.subset` views; every row alive at a given point of an algorithm must see
  the same sequence of calls, so make draws unconditionally, or give a conditional draw its own
  stream (:meth:`~SampleRNG.fork`) with an explicit ``counter`` (e.g. the iteration number);
* per-row shapes only: ``draw(shape)`` returns ``[rows, *shape]``.

Helpers :func:`uniform`, :func:`normal`, :func:`randint`, :func:`signs` take either a
SampleRNG or a ``torch.Generator`` (or None), so attacks keep working when called directly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["SampleRNG", "uniform", "normal", "randint", "signs", "rows", "tag_words", "is_sample_rng"]

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_LANE = 0x85EBCA6B


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for int64 x in [0, 2³²) without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _h(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 lanes holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _h_int(x: int) -> int:
    """lowbias32 on a Python int (the same function as :func:`_h`)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def tag_words(seed: int, tag: str) -> tuple[int, int, int, int]:
    """Four 32-bit words from sha256("seed:tag"): the stream family of one purpose."""
    d = hashlib.sha256(f"robaudit-rng:{seed}:{tag}".encode()).digest()
    return tuple(int.from_bytes(d[4 * i : 4 * i + 4], "little") for i in range(4))  # type: ignore[return-value]


class _Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class SampleRNG:
    """Random streams for the rows of a batch, keyed by their dataset indices.

    ``SampleRNG.for_indices(seed, tag, indices, device)``; ``rng[rows]`` (or :meth:`subset`) is a
    view on some rows sharing the stream position; :meth:`fork` derives independent streams.
    """

    def __init__(self, keys: torch.Tensor, indices: torch.Tensor, counter: _Counter | None = None) -> None:
        self.keys = keys  # int64 [R, 2], 32-bit words, on the draw device
        self.indices = indices  # int64 [R] dataset indices (CPU), for plugins that want them
        self._counter = counter or _Counter()

    @classmethod
    def for_indices(
        cls, seed: int, tag: str, indices: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu"
    ) -> SampleRNG:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        t = tag_words(seed, tag)
        lo = (idx & _M32).to(device)
        hi = ((idx >> 32) & _M32).to(device)
        k0 = _h(t[0] ^ _h(lo ^ t[2]) ^ _h(hi ^ _GOLDEN))
        k1 = _h(t[1] ^ _h((lo + t[3]) & _M32) ^ _h(hi ^ _LANE))
        return cls(torch.stack([k0, k1], dim=1), idx)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def subset(self, rows: Any, start: int | None = None) -> SampleRNG:
        """The streams of ``rows`` (index tensor, bool mask or slice), sharing this stream
        position — or, with ``start``, positioned at draw ``start`` on a counter of their own
        (the same logical draw split over groups of rows)."""
        if isinstance(rows, slice):
            rows = torch.arange(len(self))[rows]
        rows = (
            torch.as_tensor(rows, device=self.keys.device) if not isinstance(rows, torch.Tensor) else rows.to(self.keys.device)
        )
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        counter = self._counter
        if start is not None:
            counter = _Counter()
            counter.value = int(start)
        return SampleRNG(self.keys[rows], self.indices[rows.cpu()], counter)

    __getitem__ = subset

    def fork(self, tag: str) -> SampleRNG:
        """Independent streams for the same rows (a new family, its own position from 0)."""
        t = tag_words(0, tag)
        keys = torch.stack([_h(self.keys[:, 0] ^ t[0]), _h(self.keys[:, 1] ^ t[1])], dim=1)
        return SampleRNG(keys, self.indices)

    @property
    def position(self) -> int:
        """The counter of the next draw (shared with the views of :meth:`subset`)."""
        return self._counter.value

    def next_counter(self) -> int:
        c = self._counter.value
        self._counter.value += 1
        return c

    # --- raw words ------------------------------------------------------------------------
    def words(
        self,
        m: int,
        *,
        counter: int | None = None,
        rows: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
        lane: int = 0,
    ) -> torch.Tensor:
        """int64 ``[R', m]`` of 32-bit words: element j of row r is word ``offset[r] + j`` of draw
        ``counter`` (default: the next one) of that row's stream. ``rows`` picks (and may repeat)
        rows; ``lane`` selects an independent word sequence of the same draw."""
        c = self.next_counter() if counter is None else int(counter)
        keys = self.keys if rows is None else self.keys[rows.to(self.keys.device)]
        # the keys are hashes already: xor-ing in a hash of the counter gives each draw its own
        # row words; the two hash rounds per element below do the mixing
        c0, c1 = _h_int(c ^ 0x5BD1E995), _h_int(c * _GOLDEN + lane * _LANE + 1)
        r0 = (keys[:, 0] ^ c0)[:, None]
        r1 = (keys[:, 1] ^ c1)[:, None]
        j = torch.arange(m, device=keys.device, dtype=torch.int64)[None, :]
        if offset is not None:
            j = j + offset.to(keys.device, torch.int64)[:, None]
        v = _h((r0 + _mul32(j & _M32, _GOLDEN)) & _M32)
        return _h(v ^ r1)

    def words_block(self, m: int, start: int, count: int, lane: int = 0) -> torch.Tensor:
        """int64 ``[R, count, m]``: draws ``start .. start+count−1`` at once, row by row the same
        words as ``words(m, counter=c)`` for each c (one batched hash for many small draws:
        an attack that draws a few words per iteration precomputes a block of iterations)."""
        cs = range(int(start), int(start) + int(count))
        dev = self.keys.device
        c0 = torch.tensor([_h_int(c ^ 0x5BD1E995) for c in cs], dtype=torch.int64, device=dev)
        c1 = torch.tensor([_h_int(c * _GOLDEN + lane * _LANE + 1) for c in cs], dtype=torch.int64, device=dev)
        r0 = (self.keys[:, 0, None] ^ c0[None, :])[:, :, None]
        r1 = (self.keys[:, 1, None] ^ c1[None, :])[:, :, None]
        j = torch.arange(m, device=dev, dtype=torch.int64)[None, None, :]
        v = _h((r0 + _mul32(j, _GOLDEN)) & _M32)
        return _h(v ^ r1)

    # --- distributions --------------------------------------------------------------------
    def uniform(self, shape: Sequence[int] = (), dtype: torch.dtype = torch.float32, **kw) -> torch.Tensor:
        """U[0,1) of per-row ``shape`` → ``[R, *shape]``."""
        m = math.prod(shape)
        if dtype == torch.float64:
            a, b = self.words(2 * m, **kw).view(-1, m, 2).unbind(-1)
            u = ((a >> 5) * 67108864 + (b >> 6)).to(torch.float64) * 2.0**-53
        else:
            u = (self.words(m, **kw) >> 8).to(torch.float32) * 2.0**-24
        return u.to(dtype).reshape(u.shape[0], *shape)

    def normal(self, shape: Sequence[int] = (), dtype: torch.dtype = torch.float32, **kw) -> torch.Tensor:
        """Standard normal of per-row ``shape`` (Box–Muller on two uniforms per element)."""
        m = math.prod(shape)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        u = self.uniform((m, 2), dtype=work, **kw)
        r = torch.sqrt(-2.0 * torch.log1p(-u[..., 0]))  # 1 − u ∈ (0, 1]
        z = r * torch.cos(2 * math.pi * u[..., 1])
        return z.to(dtype).reshape(z.shape[0], *shape)

    def randint(self, high: int, shape: Sequence[int] = (), **kw) -> torch.Tensor:
        """Integers in [0, high) of per-row ``shape`` (int64)."""
        if not 1 <= high < 2**31:
            raise ValueError(f"randint: high must be in [1, 2^31), got {high}")
        m = math.prod(shape)
        w = self.words(m, **kw)
        return ((w * int(high)) >> 32).reshape(w.shape[0], *shape)

    def signs(self, shape: Sequence[int] = (), dtype: torch.dtype = torch.float32, **kw) -> torch.Tensor:
        """Uniform ±1 of per-row ``shape`` (one bit of a word each)."""
        m = math.prod(shape)
        w = self.words((m + 31) // 32, **kw)
        # the low 4 bytes of each word (little-endian int64 → bytes), 8 bits each
        octets = w.contiguous().view(torch.uint8).view(w.shape[0], -1, 8)[:, :, :4]
        bits = (octets[..., None] >> torch.arange(8, device=w.device, dtype=torch.uint8)) & 1
        bits = bits.reshape(w.shape[0], -1)[:, :m]
        return (1 - 2 * bits.to(dtype)).reshape(bits.shape[0], *shape)


def is_sample_rng(generator: Any) -> bool:
    return isinstance(generator, SampleRNG)


def rows(generator: Any, index: Any) -> Any:
    """The streams of some rows of a SampleRNG (sharing its position); any other generator as is."""
    return generator.subset(index) if isinstance(generator, SampleRNG) else generator


def _check_rows(shape: Sequence[int], rng: SampleRNG) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if not shape or shape[0] != len(rng):
        raise ValueError(f"a SampleRNG of {len(rng)} rows can't draw shape {shape}: the first dimension must be the rows")
    return shape[1:]


def uniform(
    shape: Sequence[int], generator: Any, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``torch.rand(shape)`` from a SampleRNG (one stream per row of dim 0) or a torch.Generator/None."""
    if isinstance(generator, SampleRNG):
        return generator.uniform(_check_rows(shape, generator), dtype=dtype).to(device)
    gdev = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=gdev, dtype=dtype).to(device)


def normal(
    shape: Sequence[int], generator: Any, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``torch.randn(shape)`` from a SampleRNG or a torch.Generator/None."""
    if isinstance(generator, SampleRNG):
        return generator.normal(_check_rows(shape, generator), dtype=dtype).to(device)
    gdev = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gdev, dtype=dtype).to(device)


def randint(low: int, high: int, shape: Sequence[int], generator: Any, device: torch.device | str) -> torch.Tensor:
    """``torch.randint(low, high, shape)`` (int64) from a SampleRNG or a torch.Generator/None."""
    if isinstance(generator, SampleRNG):
        return (low + generator.randint(high - low, _check_rows(shape, generator))).to(device)
    gdev = generator.device if generator is not None else device
    return torch.randint(low, high, tuple(shape), generator=generator, device=gdev).to(device)


def signs(
    shape: Sequence[int], generator: Any, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform ±1 from a SampleRNG or a torch.Generator/None."""
    if isinstance(generator, SampleRNG):
        return generator.signs(_check_rows(shape, generator), dtype=dtype).to(device)
    gdev = generator.device if generator is not None else device
    return (torch.randint(0, 2, tuple(shape), generator=generator, device=gdev) * 2 - 1).to(device=device, dtype=dtype)
