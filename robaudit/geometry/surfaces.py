"""Decision/loss surfaces in input space (Yu et al., 000 §3) and loss landscapes in parameter space
with filter normalization (Li et al. 2018, used by Xu et al., 004).

Input-space conventions: pixel space [0,1]; ``x + a·u + b·v`` is **not clipped** to [0,1] by
default (the surface is the model's function along the plane, as in the papers); pass
``clip=True`` to evaluate the clipped points instead. ``a``, ``b`` are in units of ``u``, ``v``
(use unit-ℓ2 directions, e.g. :func:`random_direction`, to make them ℓ2 distances in pixel space).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .jacobian import ScalarFn
from .margin import cross_entropy, margin, true_class_probability

__all__ = ["surface_grid", "random_direction", "filter_normalize", "param_landscape"]


def _surface_fn(fn):
    if callable(fn):
        return fn
    table = {
        "margin": margin,
        "ce": cross_entropy,
        "prob": true_class_probability,
        "pred": lambda logits, y: logits.argmax(dim=1),
    }
    try:
        return table[fn]
    except KeyError:
        raise ValueError(f"unknown surface function {fn!r}; expected one of {sorted(table)} or a callable") from None


def _axis(extent: float, steps: int, dtype, device) -> torch.Tensor:
    a = torch.linspace(-float(extent), float(extent), int(steps), dtype=dtype, device=device)
    if steps % 2 == 1:
        a[steps // 2] = 0.0  # the centre is exactly the sample itself
    return a


def surface_grid(
    model: nn.Module,
    x: torch.Tensor,
    y: int | torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    extent: float,
    steps: int,
    fn: ScalarFn = "margin",
    *,
    clip: bool = False,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grid [steps, steps], a [steps], b [steps])`` with ``grid[i, j] = fn(x + a[i]·u + b[j]·v)``.

    Orientation: the **first index (rows) moves along u**, the second (columns) along v; both axes
    are ``linspace(−extent, extent, steps)`` ascending, with an exact 0 at the centre for odd
    ``steps`` (so ``grid[steps//2, steps//2]`` is the sample's own value). For plotting with
    ``imshow``, u is the vertical axis; transpose for u horizontal.

    ``x``: one sample ``[C,H,W]`` or ``[1,C,H,W]``; ``u``, ``v`` of the same shape. ``fn``:
    ``"margin"`` (L(x), logit units; the L = 0 contour is the decision boundary), ``"ce"`` (nats),
    ``"prob"`` (true-class probability), ``"pred"`` (predicted class, int64), or a callable
    ``(logits, y) -> [N]``. Evaluated without gradients in batched forwards of ``chunk`` points;
    not clipped to [0,1] unless ``clip=True``.
    """
    f = _surface_fn(fn)
    x = x.detach()
    if x.dim() >= 4:
        if x.shape[0] != 1:
            raise ValueError(f"surface_grid takes one sample, got a batch of {x.shape[0]}")
        x = x[0]
    u = u.detach().to(x.dtype).reshape(x.shape)
    v = v.detach().to(x.dtype).reshape(x.shape)
    y_t = torch.as_tensor(y, device=x.device).reshape(-1)[:1].long()
    a = _axis(extent, steps, x.dtype, x.device)
    b = _axis(extent, steps, x.dtype, x.device)
    A, Bm = torch.meshgrid(a, b, indexing="ij")
    coeff_a, coeff_b = A.reshape(-1), Bm.reshape(-1)
    n = coeff_a.numel()
    out = []
    bshape = (-1,) + (1,) * x.dim()
    with torch.no_grad():
        for start in range(0, n, max(1, int(chunk))):
            ca = coeff_a[start : start + chunk].view(bshape)
            cb = coeff_b[start : start + chunk].view(bshape)
            pts = x.unsqueeze(0) + ca * u.unsqueeze(0) + cb * v.unsqueeze(0)
            if clip:
                pts = pts.clamp(0.0, 1.0)
            out.append(f(model(pts), y_t.expand(pts.shape[0])))
    return torch.cat(out).reshape(steps, steps), a, b


def random_direction(
    shape: Sequence[int] | torch.Size,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A Gaussian direction of the given shape scaled to unit ℓ2 norm over *all* its entries."""
    gdev = generator.device if generator is not None else device
    d = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=gdev).to(device)
    return d / d.norm()


def filter_normalize(
    direction: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], ignore_biasbn: bool = True
) -> dict[str, torch.Tensor]:
    """Li et al. (2018) filter normalization: for each weight with ≥ 2 dims, every filter (slice
    along dim 0 — a conv output channel or a linear row) of the direction is rescaled to the norm
    of the same filter of the weight. 1-D parameters (biases, norm-layer affine): zeroed when
    ``ignore_biasbn`` (Li et al.'s ``--xignore biasbn``), else set to the parameter itself."""
    out = {}
    for name, d in direction.items():
        w = params[name].detach()
        d = d.detach().to(w.dtype)
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w) if ignore_biasbn else w.clone()
            continue
        dn = d.reshape(d.shape[0], -1).norm(dim=1)
        wn = w.reshape(w.shape[0], -1).norm(dim=1)
        scale = (wn / (dn + 1e-10)).view(-1, *([1] * (w.dim() - 1)))
        out[name] = d * scale
    return out


def param_landscape(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], torch.Tensor | float],
    directions: int | Sequence[Mapping[str, torch.Tensor]] = 2,
    extent: float = 1.0,
    steps: int = 21,
    *,
    generator: torch.Generator | None = None,
    normalize: bool = True,
    ignore_biasbn: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Loss landscape in parameter space (Li et al. 2018): ``loss_fn(model)`` at
    ``θ + a·d₁ (+ b·d₂)`` for ``a, b ∈ linspace(−extent, extent, steps)``.

    ``loss_fn`` evaluates the model on a fixed batch and returns a scalar (e.g. the batch-mean CE;
    it runs under ``torch.no_grad``; keep the model in eval mode). ``directions``: 1 or 2 random
    Gaussian directions (from ``generator``), or a sequence of 1–2 dicts ``{param name: tensor}``
    (missing names are not perturbed). With ``normalize`` each direction is filter-normalized
    (:func:`filter_normalize`). Returns ``(values, axes)``: values ``[steps]`` or ``[steps, steps]``
    (first index along d₁), axes the 1-D coordinate tensors.

    Weights are set to ``θ + a·d₁ + b·d₂`` from a saved copy at every point (no accumulated
    drift), and all parameters **and buffers** are restored bit-identically in a ``finally``
    block, also when ``loss_fn`` raises.
    """
    named = dict(model.named_parameters())
    original = {k: p.detach().clone() for k, p in named.items()}
    buffers = dict(model.named_buffers())
    original_buffers = {k: b.detach().clone() for k, b in buffers.items() if b is not None}
    if isinstance(directions, int):
        if directions not in (1, 2):
            raise ValueError("directions must be 1 or 2 (or a list of 1-2 direction dicts)")
        dirs = []
        for _ in range(directions):
            gdev = lambda p: generator.device if generator is not None else p.device  # noqa: E731
            dirs.append(
                {
                    k: torch.randn(p.shape, generator=generator, dtype=p.dtype, device=gdev(p)).to(p.device)
                    for k, p in original.items()
                    if p.is_floating_point()
                }
            )
    else:
        dirs = [dict(d) for d in directions]
        if not 1 <= len(dirs) <= 2:
            raise ValueError("give 1 or 2 directions")
        unknown = set().union(*dirs) - set(original)
        if unknown:
            raise ValueError(f"directions name unknown parameters: {sorted(unknown)}")
    if normalize:
        dirs = [filter_normalize(d, original, ignore_biasbn=ignore_biasbn) for d in dirs]
    axes = tuple(_axis(extent, steps, torch.float64, "cpu") for _ in dirs)
    values = torch.empty((steps,) * len(dirs), dtype=torch.float64)
    try:
        with torch.no_grad():
            for idx in torch.cartesian_prod(*[torch.arange(steps)] * len(dirs)).reshape(-1, len(dirs)).tolist():
                coeffs = [float(axes[t][i]) for t, i in enumerate(idx)]
                for name, p in named.items():
                    new = original[name].clone()
                    for c, d in zip(coeffs, dirs):
                        if name in d:
                            new.add_(d[name].to(new.dtype), alpha=c)
                    p.copy_(new)
                values[tuple(idx)] = float(loss_fn(model))
    finally:
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(original[name])
            for name, b in buffers.items():
                if name in original_buffers:
                    b.copy_(original_buffers[name])
    return values, axes
