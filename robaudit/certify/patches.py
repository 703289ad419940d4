"""Local coefficient windows ("patches") for CROWN's intermediate bounds on convolutional layers.

The bound of one neuron of a convolutional layer depends only on its receptive field: walking back
from it, the coefficients are nonzero on a window that grows by one kernel per layer. Stored
densely they cost a full feature map per neuron (e.g. 16×28×28 values for a neuron whose
coefficients cover 16×10×10), and every backward step costs a full transposed convolution.
A :class:`Patch` keeps only the window — ``A`` [R, K, C, h, w] whose top-left corner sits at map
position (``oy``, ``ox``) of row r — through the operators that keep windows local (Conv2d,
MaxPool2d, ReLU/LeakyReLU, channel-wise affine maps); any other operator gets the dense tensor.
The values are exactly those of the dense computation (tests/test_certify.py checks both paths).

Positions of a window outside the map (a convolution's zero padding) always hold 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops

__all__ = ["Patch", "patch_backward", "unit_patch"]


@dataclass
class Patch:
    """Coefficients ``A`` [R, K, C, h, w] at map rows oy..oy+h−1, columns ox..ox+w−1 of row r's own
    map of size (H, W); zero everywhere else."""

    A: torch.Tensor
    oy: torch.Tensor
    ox: torch.Tensor
    H: int
    W: int

    def positions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Map rows [R, h], columns [R, w], and whether each (row, column) lies in the map [R, h, w]."""
        h, w = self.A.shape[-2:]
        dev = self.A.device
        rows = self.oy[:, None] + torch.arange(h, device=dev)[None]
        cols = self.ox[:, None] + torch.arange(w, device=dev)[None]
        inside = ((rows >= 0) & (rows < self.H))[:, :, None] & ((cols >= 0) & (cols < self.W))[:, None, :]
        return rows, cols, inside

    def masked(self) -> Patch:
        _, _, inside = self.positions()
        return Patch(self.A * inside[:, None, None].to(self.A.dtype), self.oy, self.ox, self.H, self.W)

    def gather(self, maps: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Values of per-sample maps [B, C, H, W] (or constant maps [C, H, W] with ``rows`` None) at
        every window position: [R, C, h, w] (positions outside the map read index 0; their
        coefficients are 0)."""
        r_idx, c_idx, inside = self.positions()
        r_idx = r_idx.clamp(0, self.H - 1)
        c_idx = c_idx.clamp(0, self.W - 1)
        flat = r_idx[:, :, None] * self.W + c_idx[:, None, :]  # [R, h, w]
        C = maps.shape[-3]
        R = flat.shape[0]
        chan = torch.arange(C, device=maps.device)[None, :, None, None]
        if rows is None:
            index = chan * (self.H * self.W) + flat[:, None]
        else:
            index = (rows[:, None, None, None] * C + chan) * (self.H * self.W) + flat[:, None]
        return maps.reshape(-1)[index.reshape(R, -1)].reshape(R, C, *flat.shape[1:])

    def dense(self) -> torch.Tensor:
        """The coefficients as a dense tensor [R, K, C, H, W]."""
        R, K, C, h, w = self.A.shape
        r_idx, c_idx, inside = self.positions()
        flat = r_idx.clamp(0, self.H - 1)[:, :, None] * self.W + c_idx.clamp(0, self.W - 1)[:, None, :]
        values = self.A * inside[:, None, None].to(self.A.dtype)
        out = torch.zeros(R, K, C, self.H * self.W, dtype=self.A.dtype, device=self.A.device)
        index = flat.reshape(R, 1, 1, -1).expand(R, K, C, h * w)
        out = out.scatter_add(3, index, values.reshape(R, K, C, -1))
        return out.reshape(R, K, C, self.H, self.W)


def unit_patch(op: ops.Conv2d, neuron: torch.Tensor, dtype, scale: torch.Tensor) -> tuple[Patch, torch.Tensor]:
    """The unit specifications ±e_n of a Conv2d's output neurons n ([R]) pushed through the
    convolution: its kernel at the neuron's receptive field, as a patch [R, 2, C_in, kh', kw']
    (kh' = dilation·(kh−1)+1), and the constant ±scale·bias."""
    w, b = op._wb(torch.empty(0, dtype=dtype))
    c_out, c_in_g, kh, kw = w.shape
    C_in, H, W = op.in_shape
    (sh, sw), (ph, pw), (dh, dw) = op.stride, op.padding, op.dilation
    ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    c = neuron // (ho * wo)
    y = (neuron % (ho * wo)) // wo
    x = neuron % wo
    R = neuron.shape[0]
    kernel = torch.zeros(R, C_in, dh * (kh - 1) + 1, dw * (kw - 1) + 1, dtype=w.dtype, device=w.device)
    group = c // (c_out // op.groups)
    chans = group[:, None] * c_in_g + torch.arange(c_in_g, device=w.device)[None]  # [R, c_in_g]
    kernel[torch.arange(R, device=w.device)[:, None], chans, ::dh, ::dw] = w[c]
    kernel = kernel * scale.reshape(-1, 1, 1, 1)
    sign = torch.tensor([1.0, -1.0], dtype=w.dtype, device=w.device).reshape(1, 2, 1, 1, 1)
    patch = Patch(kernel[:, None] * sign, y * sh - ph, x * sw - pw, H, W).masked()
    const = (b[c] if b is not None else torch.zeros(R, dtype=w.dtype, device=w.device)) * scale
    return patch, const[:, None] * sign.reshape(1, 2)


def patch_backward(
    op: ops.BoundOp, patch: Patch, relax: tuple | None, rows: torch.Tensor, in_shape: tuple[int, ...]
) -> tuple[Patch, torch.Tensor | int] | None:
    """The operator's backward step on a patch (coefficients on its input as a patch, constant
    [R, K]), or None when the operator does not keep windows local (the caller densifies)."""
    if isinstance(op, ops.Conv2d):
        return _conv(op, patch)
    if isinstance(op, ops.LeakyReLU) and relax is not None:
        return _relu(op, patch, relax, rows)
    if isinstance(op, ops.MaxPool2d) and relax is not None:
        return _maxpool(op, patch, relax, rows, in_shape)
    if isinstance(op, ops.ElementwiseAffine):
        return _affine(op, patch)
    return None


def _conv(op: ops.Conv2d, patch: Patch) -> tuple[Patch, torch.Tensor | int] | None:
    w, b = op._wb(patch.A)
    R, K, C, h, wd = patch.A.shape
    C_in, H, W = op.in_shape
    (sh, sw), (ph, pw) = op.stride, op.padding
    back = F.conv_transpose2d(patch.A.reshape(R * K, C, h, wd), w, None, op.stride, 0, 0, op.groups, op.dilation)
    if back.shape[-2] >= H and back.shape[-1] >= W:
        return None  # the window covers the map: dense is cheaper
    const = (patch.A.sum((-2, -1)) * b).sum(-1) if b is not None else 0
    out = Patch(back.reshape(R, K, *back.shape[1:]), patch.oy * sh - ph, patch.ox * sw - pw, H, W).masked()
    return out, const


def _relu(op: ops.LeakyReLU, patch: Patch, relax: tuple, rows: torch.Tensor) -> tuple[Patch, torch.Tensor]:
    up_slope, up_icpt, low_slope, _ = (patch.gather(t.to(patch.A.dtype), rows) for t in relax)
    A = patch.A
    neg = A.clamp(max=0)
    coef = torch.where(A >= 0, low_slope[:, None], up_slope[:, None]) * A
    const = (neg * up_icpt[:, None]).flatten(2).sum(-1)
    return Patch(coef, patch.oy, patch.ox, patch.H, patch.W), const


def _maxpool(op: ops.MaxPool2d, patch: Patch, relax: tuple, rows: torch.Tensor, in_shape) -> tuple[Patch, torch.Tensor]:
    j, dominated, top = relax  # [B, C, 1, L] over the output map
    R, K, C, h, w = patch.A.shape
    Ho, Wo = patch.H, patch.W
    as_map = lambda t: t.reshape(t.shape[0], C, Ho, Wo)  # noqa: E731
    sel = patch.gather(as_map(j), rows).long()  # [R, C, h, w]: kernel offset of the selected input
    dom = patch.gather(as_map(dominated).to(patch.A.dtype), rows) > 0.5
    peak = patch.gather(as_map(top).to(patch.A.dtype), rows)
    A = patch.A
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    to_input = pos + torch.where(dom[:, None], neg, torch.zeros_like(neg))
    const = (torch.where(dom[:, None], torch.zeros_like(neg), neg) * peak[:, None]).flatten(2).sum(-1)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = op.kernel, op.stride, op.padding, op.dilation
    hi, wi = (h - 1) * sh + dh * (kh - 1) + 1, (w - 1) * sw + dw * (kw - 1) + 1
    dev = A.device
    a, bb = sel // kw, sel % kw
    local = (
        (torch.arange(h, device=dev)[None, None, :, None] * sh + a * dh) * wi
        + torch.arange(w, device=dev)[None, None, None, :] * sw
        + bb * dw
    )  # [R, C, h, w]
    out = torch.zeros(R, K, C, hi * wi, dtype=A.dtype, device=dev)
    out = out.scatter_add(3, local.reshape(R, 1, C, -1).expand(R, K, C, h * w), to_input.reshape(R, K, C, -1))
    H, W = in_shape[-2:]
    result = Patch(out.reshape(R, K, C, hi, wi), patch.oy * sh - ph, patch.ox * sw - pw, H, W).masked()
    return result, const


def _affine(op: ops.ElementwiseAffine, patch: Patch) -> tuple[Patch, torch.Tensor | int] | None:
    s, t = op._st(patch.A)
    A = patch.A
    C = A.shape[2]

    def local(v):
        if not isinstance(v, torch.Tensor):
            return v
        if v.ndim == 0 or v.shape[-2:] == (1, 1):  # a scalar or a per-channel constant
            return v.reshape(-1, 1, 1) if v.numel() > 1 else v.reshape(())
        return patch.gather(v.expand(C, patch.H, patch.W), None)[:, None]  # per pixel: read at the window

    s_l, t_l = local(s), local(t)
    coef = A * s_l
    const: torch.Tensor | int
    if isinstance(t_l, torch.Tensor):
        const = (A * t_l).flatten(2).sum(-1)
    else:
        const = A.flatten(2).sum(-1) * t_l if t_l != 0 else 0
    return Patch(coef, patch.oy, patch.ox, patch.H, patch.W), const


def concretize_patch(patch: Patch, lo: torch.Tensor, hi: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """min over the box [lo, hi] (per-sample maps [B, C, H, W]) of Σ A·x' for each row: [R, K]."""
    lw, hw = patch.gather(lo, rows)[:, None], patch.gather(hi, rows)[:, None]
    return (patch.A.clamp(min=0) * lw + patch.A.clamp(max=0) * hw).flatten(2).sum(-1)
