"""Gradient / top-eigenvector alignment |gᵀu|/‖g‖₂ (Moosavi-Dezfooli et al. 2019, Remark 3) and the
median λ_max of the input Hessian of the cross-entropy, for the exact Hessian (torch.func; the
Gauss-Newton JᵀAJ a.e. for a ReLU network) and for finite-difference Hessians at pixel-basis
steps h (pixel space [0,1]), on the first ``--k`` correctly classified Fashion-MNIST test images.

Used to check the paper's claim (CIFAR-10: 0.43 before, 0.90 after adversarial fine-tuning)
on robaudit's models; see the closing note of the geometry issue for the figures.

    python scripts/alignment_vs_fd_step.py MODEL.safetensors [MODEL2 ...] [--k 30] [--steps 1e-4,1e-2,1e-1]
"""

from __future__ import annotations

import argparse

import torch

from robaudit.data import DataRequest, load_dataset
from robaudit.geometry import cross_entropy, full_hessian
from robaudit.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--k", type=int, default=30, help="correctly classified samples per model")
    ap.add_argument("--steps", default="1e-4,1e-3,1e-2,1e-1", help="finite-difference steps h (pixel units)")
    args = ap.parse_args()
    data = load_dataset(args.dataset, DataRequest(n=max(200, 4 * args.k)))
    x, y = data.x.double(), data.y
    hs = [float(h) for h in args.steps.split(",")]
    for path in args.models:
        model = load_model(path).model.double().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            ok = (model(x).argmax(1) == y).nonzero().flatten()[: args.k]
        xs, ys = x[ok], y[ok]
        xr = xs.clone().requires_grad_(True)
        g = torch.autograd.grad(cross_entropy(model(xr), ys).sum(), xr)[0].flatten(1)
        cells = []
        for method, h in [("func", None)] + [("fd", h) for h in hs]:
            eigenvalues, vectors = torch.linalg.eigh(full_hessian(model, xs, ys, "ce", method=method, h=h, chunk=196))
            u = vectors[:, :, -1]
            align = ((g * u).sum(1).abs() / g.norm(dim=1)).mean().item()
            label = "exact" if h is None else f"fd h={h:g}"
            cells.append(f"{label}: align {align:.3f}, median λ_max {eigenvalues[:, -1].median().item():.3g}")
        print(f"{path} ({len(ok)} samples)\n  " + "\n  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
