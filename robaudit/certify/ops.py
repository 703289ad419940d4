"""The operators a traced classifier is made of, each with what bound propagation needs.

Every operator has one or two *variable* inputs (tensors that depend on the image) and works on
batches ``[B, *shape]``. It provides

* ``forward(*xs)``: the concrete value (used to check a traced graph against the model);
* ``ibp(*bounds)``: elementwise lower/upper bounds of its output from boxes on its inputs
  (interval bound propagation, Gowal et al. 2018, Eq. 6);
* ``backward(A, ...)``: the linear bound of CROWN (Zhang et al. 2018): for a lower bound of
  ``Σ A·out`` (``A`` of shape ``[B, K, *out_shape]``, K bounds at once) it returns the
  coefficients on each input and a constant ``[B, K]`` (for a nonlinear operator, from a linear
  relaxation valid on its input box).

Parameters are read from the live modules at call time, so bounds are differentiable in the weights
(certified training backpropagates through them). Weights are cast to the bounds' dtype (float64
bounds of a float32 model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BoundOp",
    "Input",
    "Linear",
    "Conv2d",
    "ElementwiseAffine",
    "Reshape",
    "MonotoneLinear",
    "Add",
    "Sub",
    "ReLU",
    "LeakyReLU",
    "MaxPool2d",
]

Bounds = tuple[torch.Tensor, torch.Tensor]


def _flat_sum(t: torch.Tensor, keep: int = 2) -> torch.Tensor:
    """Sum over every dimension after the first ``keep`` ([B, K, ...] → [B, K])."""
    return t.flatten(keep).sum(-1)


def _pos_neg(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return A.clamp(min=0), A.clamp(max=0)


def _merge(A: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, K, *s] → [B·K, *s] (and the (B, K) to split it back)."""
    return A.reshape(A.shape[0] * A.shape[1], *A.shape[2:]), (A.shape[0], A.shape[1])


class BoundOp:
    """Base class. ``arity``: number of variable inputs; ``nonlinear``: needs input bounds (a
    relaxation) in ``backward``; ``monotone``: nondecreasing elementwise in its input, so bounds of
    its output from bounds of its input are exact (IBP needs no tightening after it).

    Every operator defines ``forward(*inputs) -> Tensor`` (one tensor per variable input) and
    ``ibp(*input_boxes) -> Bounds``, with as many arguments as its ``arity``."""

    arity: ClassVar[int] = 1
    nonlinear: ClassVar[bool] = False
    monotone: ClassVar[bool] = False
    kind: ClassVar[str] = "affine"
    forward: Callable[..., torch.Tensor]
    ibp: Callable[..., Bounds]

    def relax(self, in_bounds: Sequence[Bounds]) -> tuple:
        """Nonlinear operators: the linear relaxation on the input boxes ([B, *shape] tensors),
        computed once per sample and reused by every backward pass."""
        raise NotImplementedError

    def backward(
        self, A: torch.Tensor, relax: tuple | None = None, alpha: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor | int]:
        """(coefficients on each variable input, constant [B, K]); ``relax``: the relaxation of
        :meth:`relax`, one row per row of A (nonlinear operators only); ``alpha``: optimized lower
        slopes [B, K, *in_shape]."""
        raise NotImplementedError

    def zero_preserving(self) -> bool:
        """True when f(0) = 0 (no constant term)."""
        return False


class Input(BoundOp):
    """The image itself (node 0 of every graph): no input; its box is the threat set's."""

    arity = 0
    monotone = True

    def forward(self, *xs):
        raise TypeError("the input node is given, not computed")

    def ibp(self, *bounds):
        raise TypeError("the input node's box is the threat set's")


class _Weighted(BoundOp):
    """An affine operator with a weight and a bias read live from the model: ``apply(x, w, b)``
    computes it; IBP is the centre–radius rule (Gowal et al. 2018, Eq. 6): centre through the
    operator, radius through |W| without the bias."""

    def __init__(self, weight: Callable[[], torch.Tensor], bias: Callable[[], torch.Tensor | None]):
        self.weight, self.bias = weight, bias

    def apply(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _wb(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.weight(), self.bias()
        return w.to(like.dtype), (None if b is None else b.to(like.dtype))

    def forward(self, x):
        w, b = self._wb(x)
        return self.apply(x, w, b)

    def ibp(self, bounds):
        lo, hi = bounds
        w, b = self._wb(lo)
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        c, r = self.apply(mid, w, b), self.apply(rad, w.abs())
        return c - r, c + r


class Linear(_Weighted):
    """``x Wᵀ + b`` over the last dimension (``nn.Linear`` or ``F.linear`` with constant weights)."""

    @classmethod
    def of(cls, module: nn.Linear) -> Linear:
        return cls(lambda: module.weight, lambda: module.bias)

    def apply(self, x, w, b=None):
        return F.linear(x, w, b)

    def backward(self, A, relax=None, alpha=None):
        w, b = self._wb(A)
        out = A @ w
        return [out], (_flat_sum(A @ b[:, None]) if b is not None else 0)

    def unit_backward(self, neuron: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For the unit specifications e_n (one neuron n per row, [R]): the coefficients on the
        input [R, in] and the constants [R] — the weight rows themselves (1-d inputs only)."""
        w, b = self._wb(torch.empty(0, dtype=dtype))
        return w[neuron], (b[neuron] if b is not None else torch.zeros(neuron.shape, dtype=dtype, device=w.device))


class Conv2d(_Weighted):
    """A 2-d convolution with constant weights (``nn.Conv2d`` or ``F.conv2d``)."""

    def __init__(self, weight, bias, stride, padding, dilation, groups, in_shape: Sequence[int]):
        super().__init__(weight, bias)
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))  # noqa: E731
        self.stride, self.dilation, self.groups = pair(stride), pair(dilation), int(groups)
        if isinstance(padding, str):
            raise ValueError(f"padding={padding!r} (string padding) is not supported; export with integer padding")
        self.padding = pair(padding)
        self.in_shape = tuple(in_shape)

    @classmethod
    def of(cls, m: nn.Conv2d, in_shape):
        if m.padding_mode != "zeros":
            raise ValueError(f"padding_mode={m.padding_mode!r} is not supported (only zero padding)")
        return cls(lambda: m.weight, lambda: m.bias, m.stride, m.padding, m.dilation, m.groups, in_shape)

    def apply(self, x, w, b=None):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def backward(self, A, relax=None, alpha=None):
        w, b = self._wb(A)
        a, (B, K) = _merge(A)
        h, wd = self.in_shape[-2:]
        out_h, out_w = a.shape[-2:]
        kh, kw = w.shape[-2:]
        extra = []
        for size, o, s, p, d, k in (
            (h, out_h, self.stride[0], self.padding[0], self.dilation[0], kh),
            (wd, out_w, self.stride[1], self.padding[1], self.dilation[1], kw),
        ):
            extra.append(size - ((o - 1) * s - 2 * p + d * (k - 1) + 1))
        back = F.conv_transpose2d(a, w, None, self.stride, self.padding, tuple(extra), self.groups, self.dilation)
        const = _flat_sum(A.sum((-2, -1)) * b) if b is not None else 0
        return [back.reshape(B, K, *back.shape[1:])], const

    def unit_backward(self, neuron: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """For the unit specifications e_n (one output neuron n per row, [R]): the coefficients on
        the input [R, C_in, H, W] and the constants [R]. The transposed convolution of a one-hot is
        the neuron's kernel placed at its receptive field, so it is written there directly."""
        w, b = self._wb(torch.empty(0, dtype=dtype))
        c_out, c_in_g, kh, kw = w.shape
        C_in, H, W = self.in_shape
        oh_ow = neuron  # flat index into [C_out, Ho, Wo]
        R = neuron.shape[0]
        dev = w.device
        n_out_map = None
        # output geometry from the input geometry
        ho = (H + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (W + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        n_out_map = ho * wo
        c = oh_ow // n_out_map
        h = (oh_ow % n_out_map) // wo
        x = oh_ow % wo
        rows = h[:, None] * self.stride[0] - self.padding[0] + torch.arange(kh, device=dev)[None] * self.dilation[0]  # [R, kh]
        cols = x[:, None] * self.stride[1] - self.padding[1] + torch.arange(kw, device=dev)[None] * self.dilation[1]  # [R, kw]
        valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]  # [R, kh, kw]
        group = c // (c_out // self.groups)
        chans = group[:, None] * c_in_g + torch.arange(c_in_g, device=dev)[None]  # [R, c_in_g]
        flat = chans[:, :, None, None] * (H * W) + (rows[:, None, :, None] * W + cols[:, None, None, :])  # [R, c_in_g, kh, kw]
        dummy = C_in * H * W
        flat = torch.where(valid[:, None], flat, torch.full_like(flat, dummy))
        out = torch.zeros(R, dummy + 1, dtype=w.dtype, device=dev)
        out = out.scatter_add(1, flat.reshape(R, -1), w[c].reshape(R, -1))
        const = b[c] if b is not None else torch.zeros(R, dtype=w.dtype, device=dev)
        return out[:, :dummy].reshape(R, C_in, H, W), const


class ElementwiseAffine(BoundOp):
    """``x·scale + shift`` with constant tensors broadcast over one sample (BatchNorm in eval mode,
    the model's normalization, multiplication or division by a constant, adding a constant)."""

    def __init__(self, scale: Callable[[], torch.Tensor | float], shift: Callable[[], torch.Tensor | float]):
        self.scale, self.shift = scale, shift

    @classmethod
    def batch_norm(cls, m: nn.modules.batchnorm._BatchNorm, ndim: int) -> ElementwiseAffine:
        """Eval-mode BatchNorm: (x − running_mean)/√(running_var + eps)·weight + bias, per channel."""
        shape = (-1,) + (1,) * (ndim - 2)  # channel axis 1 of [B, C, ...]

        # the statistics are read at each call, never captured: certified training swaps in the clean
        # batch's (robaudit.harden.certified), and eval-mode bounds read the running ones as they are now
        def stats() -> tuple[torch.Tensor, torch.Tensor]:
            mean, var = m.running_mean, m.running_var
            assert mean is not None and var is not None  # the tracer refuses BatchNorm without running statistics
            return mean, var

        def scale() -> torch.Tensor:
            s = (stats()[1] + m.eps).rsqrt()
            return (s * m.weight if m.weight is not None else s).reshape(shape)

        def shift() -> torch.Tensor:
            s = scale().reshape(-1)
            t = -stats()[0] * s
            return (t + m.bias if m.bias is not None else t).reshape(shape)

        return cls(scale, shift)

    def _st(self, like):
        s, t = self.scale(), self.shift()
        s = s.to(like.dtype) if isinstance(s, torch.Tensor) else float(s)
        t = t.to(like.dtype) if isinstance(t, torch.Tensor) else float(t)
        return s, t

    def forward(self, x):
        s, t = self._st(x)
        return x * s + t

    def ibp(self, bounds):
        lo, hi = bounds
        s, t = self._st(lo)
        a, b = lo * s + t, hi * s + t
        return torch.minimum(a, b), torch.maximum(a, b)

    def backward(self, A, relax=None, alpha=None):
        s, t = self._st(A)
        const: torch.Tensor | int
        if isinstance(t, torch.Tensor):
            const = _flat_sum(A * t)
        else:
            const = _flat_sum(A) * t if t != 0 else 0
        return [(A * s).expand_as(A)], const


class Reshape(BoundOp):
    """flatten / view / reshape / squeeze / unsqueeze / contiguous: the same values, in the same
    (row-major) order, with another per-sample shape."""

    monotone = True

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.out_shape)

    def ibp(self, bounds):
        return tuple(b.reshape(b.shape[0], *self.out_shape) for b in bounds)

    def backward(self, A, relax=None, alpha=None):
        return [A.reshape(A.shape[0], A.shape[1], *self.in_shape)], 0

    def zero_preserving(self):
        return True


class MonotoneLinear(BoundOp):
    """A linear map with nonnegative coefficients, given as a function of one batch: average
    pooling, adaptive average pooling, a mean or sum over non-batch dimensions, permutations,
    dropout in eval mode. IBP applies it to both bounds; the backward is its vector-Jacobian
    product (autograd), exact because the map is linear."""

    monotone = True

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], in_shape: Sequence[int]):
        self.fn, self.in_shape = fn, tuple(in_shape)

    def forward(self, x):
        return self.fn(x)

    def ibp(self, bounds):
        return self.fn(bounds[0]), self.fn(bounds[1])

    def backward(self, A, relax=None, alpha=None):
        a, (B, K) = _merge(A)
        with torch.enable_grad():
            z = torch.zeros(a.shape[0], *self.in_shape, dtype=A.dtype, device=A.device, requires_grad=True)
            (back,) = torch.autograd.grad(self.fn(z), z, a, create_graph=A.requires_grad)
        return [back.reshape(B, K, *self.in_shape)], 0

    def zero_preserving(self):
        return True


class Add(BoundOp):
    """The sum of two variable tensors (a residual connection)."""

    arity = 2

    def forward(self, a, b):
        return a + b

    def ibp(self, ba, bb):
        return ba[0] + bb[0], ba[1] + bb[1]

    def backward(self, A, relax=None, alpha=None):
        return [A, A], 0

    def zero_preserving(self):
        return True


class Sub(BoundOp):
    """The difference of two variable tensors."""

    arity = 2

    def forward(self, a, b):
        return a - b

    def ibp(self, ba, bb):
        return ba[0] - bb[1], ba[1] - bb[0]

    def backward(self, A, relax=None, alpha=None):
        return [A, -A], 0

    def zero_preserving(self):
        return True


class LeakyReLU(BoundOp):
    """max(x, a·x) for 0 ≤ a < 1 (a = 0: ReLU). On an unstable neuron (l < 0 < u) the upper bound is
    the chord through (l, a·l) and (u, u); the lower bound is a line through the origin of slope
    α ∈ [a, 1] — CROWN's adaptive choice α = 1 if u ≥ −l else a (Zhang et al. 2018, §3.3), or an
    optimized α (α-CROWN, Xu et al. 2021)."""

    nonlinear = True
    monotone = True
    kind = "relu"

    def __init__(self, negative_slope: float = 0.0):
        self.a = float(negative_slope)
        if not 0.0 <= self.a < 1.0:
            raise ValueError(f"negative_slope={self.a} is outside [0, 1)")

    def forward(self, x):
        return F.leaky_relu(x, self.a) if self.a else F.relu(x)

    def ibp(self, bounds):
        return self.forward(bounds[0]), self.forward(bounds[1])

    def relax(self, in_bounds):
        """(upper slope, upper intercept, default lower slope, unstable mask), per neuron."""
        lo, hi = in_bounds[0]
        unstable = (lo < 0) & (hi > 0)
        active = lo >= 0
        width = (hi - lo).clamp(min=1e-12)
        chord = (hi - self.a * lo) / width
        up_slope = torch.where(unstable, chord, torch.where(active, torch.ones_like(lo), torch.full_like(lo, self.a)))
        up_icpt = torch.where(unstable, hi * (1 - chord), torch.zeros_like(lo))
        low_slope = torch.where(unstable, torch.where(hi >= -lo, torch.ones_like(lo), torch.full_like(lo, self.a)), up_slope)
        return up_slope, up_icpt, low_slope, unstable

    def backward(self, A, relax=None, alpha=None):
        up_slope, up_icpt, low_slope, unstable = relax
        up_slope, up_icpt = up_slope[:, None], up_icpt[:, None]
        if alpha is not None:  # [B, K, *s] optimized slopes, used on unstable neurons only
            low = torch.where(unstable[:, None], alpha, up_slope)  # the optimizer keeps α in [a, 1]
        else:
            low = low_slope[:, None]
        pos, neg = _pos_neg(A)
        return [pos * low + neg * up_slope], _flat_sum(neg * up_icpt)


class ReLU(LeakyReLU):
    def __init__(self):
        super().__init__(0.0)


class MaxPool2d(BoundOp):
    """2-d max pooling. Lower bound: the window's input with the largest lower bound (any one input
    bounds a max from below). Upper bound: that same input where its lower bound is at least every
    other input's upper bound (the max is then exactly it), else the constant max of the upper
    bounds. IBP: max-pool both bounds (exact)."""

    nonlinear = True
    monotone = True
    kind = "maxpool"

    def __init__(self, kernel_size, stride, padding, dilation, in_shape: Sequence[int], out_shape: Sequence[int]):
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))  # noqa: E731
        self.kernel, self.stride = pair(kernel_size), pair(stride if stride not in (None, ()) else kernel_size)
        self.padding, self.dilation = pair(padding), pair(dilation)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation)

    def ibp(self, bounds):
        return self.forward(bounds[0]), self.forward(bounds[1])

    def _index(self, device) -> torch.Tensor:
        """[k·k, L]: for each window offset and window, the flat index into the padded input map."""
        cached = getattr(self, "_idx", None)
        if cached is not None and cached.device == device:
            return cached
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        ph, pw = self.padding
        W = self.in_shape[-1] + 2 * pw  # the padded map's width
        oh, ow = self.out_shape[-2:]
        rows = (torch.arange(oh) * sh)[None, :, None] + (torch.arange(kh) * dh)[:, None, None]  # [kh, oh, 1]
        cols = (torch.arange(ow) * sw)[None, None, :] + (torch.arange(kw) * dw)[:, None, None]  # [kw, 1, ow]
        flat = rows[:, None] * W + cols[None]  # [kh, kw, oh, ow]
        self._idx = flat.reshape(kh * kw, oh * ow).to(device)
        return self._idx

    def _padded(self, t: torch.Tensor, fill: float) -> torch.Tensor:
        ph, pw = self.padding
        return F.pad(t, (pw, pw, ph, ph), value=fill) if ph or pw else t

    def _windows(self, t: torch.Tensor, fill: float) -> torch.Tensor:
        """[B, C, H, W] → [B, C, k·k, L] windows (padding filled with ``fill``)."""
        flat = self._padded(t, fill).flatten(-2)
        return flat[..., self._index(t.device)]

    def relax(self, in_bounds):
        """Per window: index of the input with the largest lower bound, whether it dominates the
        window, and the window's largest upper bound ([B, C, 1, L] each)."""
        return self.select(*in_bounds[0])

    def select(self, lo: torch.Tensor, hi: torch.Tensor):
        """:meth:`relax` from the input box (lo, hi)."""
        lw, hw = self._windows(lo, float("-inf")), self._windows(hi, float("-inf"))
        j = lw.argmax(2, keepdim=True)
        best_lo = lw.gather(2, j)
        others = hw.scatter(2, j, float("-inf")).amax(2, keepdim=True)
        return j, best_lo >= others, hw.amax(2, keepdim=True)

    def backward(self, A, relax=None, alpha=None):
        B, K, C = A.shape[:3]
        j, dominated, top = relax  # [B, C, 1, L]
        a = A.reshape(B, K, C, -1)
        pos, neg = _pos_neg(a)
        dom = dominated[:, None, :, 0]
        to_input = pos + torch.where(dom, neg, torch.zeros_like(neg))
        const = _flat_sum(torch.where(dom, torch.zeros_like(neg), neg) * top[:, None, :, 0])
        idx = self._index(A.device)
        target = idx.gather(0, j.reshape(-1, idx.shape[1])).reshape(B, 1, C, -1).expand(B, K, C, a.shape[-1])
        ph, pw = self.padding
        H, W = self.in_shape[-2:]
        out = torch.zeros(B, K, C, (H + 2 * ph) * (W + 2 * pw), dtype=A.dtype, device=A.device)
        out = out.scatter_add(3, target, to_input).reshape(B, K, C, H + 2 * ph, W + 2 * pw)
        return [out[..., ph : ph + H, pw : pw + W]], const
