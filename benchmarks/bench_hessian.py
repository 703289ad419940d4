"""Benchmark: full input-Hessian spectrum, batched vs. per-column autograd, and Lanczos HVP counts.

1. A 1×28×28 input (d = 784) through a small softplus CNN, cross-entropy (float64 by default):
   * batched ``robaudit.geometry.full_hessian`` — ``func`` (torch.func forward-over-reverse, primal
     shared, jvp vmapped over ``chunk`` basis vectors), ``exact`` (``chunk`` replicated inputs per
     batched double backward) and ``fd`` (one batched gradient per chunk, h = 1e-4) — each
     followed by ``eigvalsh``;
   * per-column loop — one ``torch.autograd.grad`` call per column on a retained
     double-backward graph (the usual loop) + ``eigvalsh``.
   Prints the times (best of ``--repeats``), the ratios (target ≥ 10×) and the max difference.
2. A 3×32×32 input (d = 3072): how many HVPs Lanczos (full reorthogonalization) needs for the
   top-k eigenvalues to reach relative Ritz residual ``tol``; unless ``--no-verify`` the result is
   compared with ``eigvalsh`` of the batched full Hessian.

Timings on a shared machine are noisy: the script prints the load average; compare ratios taken
in the same run and thread setting.

Run:  python benchmarks/bench_hessian.py [--threads N] [--dtype float64|float32] [--chunk 64]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from robaudit.geometry import cross_entropy, full_hessian, hvp_operator, lanczos


class BenchCNN(nn.Module):
    """conv 3×3 (8) → softplus → conv 3×3 stride 2 (16) → softplus → avgpool 4×4 → linear (10)."""

    def __init__(self, in_channels: int, classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(16 * 16, classes)
        self.act = nn.Softplus()

    def forward(self, x):
        return self.fc(self.pool(self.act(self.c2(self.act(self.c1(x))))).flatten(1))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def per_column_hessian(model, x, y) -> torch.Tensor:
    """Reference: ``torch.autograd.grad`` once per column on a retained create_graph gradient."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(cross_entropy(model(x), y).sum(), x, create_graph=True)
    g = g.flatten()
    d = g.numel()
    rows = [torch.autograd.grad(g[i], x, retain_graph=True)[0].flatten() for i in range(d)]
    H = torch.stack(rows)
    return 0.5 * (H + H.T)


def _best(fn, repeats, device):
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--chunk", type=int, default=64, help="basis vectors per batched pass (memory bound)")
    ap.add_argument("--repeats", type=int, default=3, help="best-of repeats for each timing")
    ap.add_argument("--k", type=int, default=5, help="top-k eigenvalues for Lanczos")
    ap.add_argument("--tol", type=float, default=1e-6, help="relative Ritz residual for Lanczos")
    ap.add_argument("--max-iters", type=int, default=400)
    ap.add_argument("--no-verify", action="store_true", help="skip the d=3072 full-Hessian check")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, {args.dtype} model, "
        f"CE loss, eigvalsh in float64, best of {args.repeats}"
    )
    if hasattr(os, "getloadavg"):
        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    # ---------------------------------------------------------------- 1. d = 784
    torch.manual_seed(args.seed)
    model = BenchCNN(1).to(device, dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 1, 28, 28, dtype=dtype, device=device)
    y = torch.tensor([3], device=device)
    d = x.numel()
    eig = lambda H: torch.linalg.eigvalsh(H.to(torch.float64)).flip(-1)  # noqa: E731

    for method in ("func", "exact"):  # warm-up (torch.func decompositions, allocator)
        full_hessian(model, x[:, :, :8, :8].contiguous(), y, "ce", method=method, chunk=64)
    eig(torch.eye(d, dtype=torch.float64, device=device))

    t_loop, H_l = _best(lambda: per_column_hessian(model, x, y), args.repeats, device)
    t_eig, ev_l = _best(lambda: eig(H_l), args.repeats, device)
    passes = -(-d // args.chunk)
    print(f"\n[d={d}: 1x28x28, small CNN]  eigvalsh of a {d}x{d} matrix: {t_eig:.3f} s")
    print(f"  per-column autograd loop ({d} grad calls): {t_loop:8.3f} s   spectrum {t_loop + t_eig:8.3f} s")
    for method, h in (("func", None), ("exact", None), ("fd", 1e-4)):
        t_h, H = _best(lambda: full_hessian(model, x, y, "ce", method=method, h=h, chunk=args.chunk)[0], args.repeats, device)  # noqa: B023 - called within this iteration
        ev = eig(H)
        rel = ((H - H_l).abs().max() / H_l.abs().max()).item()
        erel = ((ev - ev_l).abs().max() / ev_l.abs().max()).item()
        tag = f"batched {method}" + (f" h={h:g}" if h else "") + f" ({passes} passes)"
        print(
            f"  {tag:41s}: {t_h:8.3f} s   spectrum {t_h + t_eig:8.3f} s   speed-up {t_loop / t_h:5.1f}x "
            f"(spectrum {(t_loop + t_eig) / (t_h + t_eig):5.1f}x)   max|dH|/max|H| {rel:.1e}, max|dλ|/λmax {erel:.1e}"
        )
    print(f"  lambda_max = {ev_l[0].item():.6e}, lambda_min = {ev_l[-1].item():.6e}  (target speed-up >= 10x)")

    # ---------------------------------------------------------------- 2. d = 3072, Lanczos
    torch.manual_seed(args.seed + 1)
    model3 = BenchCNN(3).to(device, dtype).eval()
    for p in model3.parameters():
        p.requires_grad_(False)
    x3 = torch.rand(1, 3, 32, 32, dtype=dtype, device=device)
    y3 = torch.tensor([7], device=device)
    d3 = x3.numel()
    op = hvp_operator(model3, x3, y3, "ce", method="exact")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    _sync(device)
    t0 = time.perf_counter()
    top, _, _, info = lanczos(
        op,
        d3,
        args.k,
        iters=args.max_iters,
        generator=gen,
        dtype=torch.float64,
        device=device,
        tol=args.tol,
        which="top",
        return_info=True,
    )
    _sync(device)
    t_lz = time.perf_counter() - t0
    print(f"\n[d={d3}: 3x32x32, small CNN] Lanczos top-{args.k}, tol {args.tol:g} (relative Ritz residual), exact HVPs")
    print(f"  HVPs needed: {info['n_hvp']} of d={d3} (converged: {bool(info['converged'].all())}), {t_lz:.3f} s")
    print(f"  top-{args.k}: {', '.join(f'{v:.6e}' for v in top[0].tolist())}")
    if not args.no_verify:
        t0 = time.perf_counter()
        ev3 = eig(full_hessian(model3, x3, y3, "ce", method="func", chunk=args.chunk)[0])
        _sync(device)
        t_full = time.perf_counter() - t0
        err = ((top[0] - ev3[: args.k]).abs() / ev3.abs().max()).max().item()
        print(
            f"  full Hessian (func) + eigvalsh for comparison: {t_full:.3f} s; "
            f"max |λ_lanczos − λ_eigvalsh| / λmax over top-{args.k}: {err:.2e}"
        )


if __name__ == "__main__":
    main()
