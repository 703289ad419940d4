#!/usr/bin/env python3
"""Use robaudit's Python API inside your own training loop: log robustness after every epoch.

Trains a small CNN (robaudit's small-cnn, width 16) on Fashion-MNIST, optionally with FGSM
adversarial training (Goodfellow et al. 2015, --adv-eps), and after each epoch calls
``robaudit.scan`` on a fixed held-out slice (same images, same seed → comparable numbers), logs
clean and FGSM/PGD-20 robust accuracy and the median margin to a CSV file, and gates the final
model with ``robaudit.gate``. ``scan`` leaves the module's train/eval mode and weights as they were,
so the loop needs no bookkeeping. Falls back to robaudit's embedded 1,000 test images (800 train /
200 held out) without Debian's Fashion-MNIST. Defaults: 3 epochs of 5,000 images (~30 s on 2 cores).

    python examples/training_loop_logging.py --epochs 3 --adv-eps 0.1 --log runs/robustness.csv
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

import robaudit
from robaudit.data import DataRequest, load_dataset
from robaudit.errors import DatasetNotFoundError
from robaudit.models import build_architecture


def fashion_or_demo(train_n: int, eval_n: int):
    try:
        return (
            load_dataset("fashion-mnist", DataRequest(split="train", n=train_n)),
            load_dataset("fashion-mnist", DataRequest(split="test", n=eval_n)),
        )
    except DatasetNotFoundError:
        print("Fashion-MNIST not found: using robaudit's embedded demo sample (800 train / 200 test)")
        demo = load_dataset("demo")
        return (
            replace(demo, x=demo.x[:800][:train_n], y=demo.y[:800][:train_n]),
            replace(demo, x=demo.x[800:][:eval_n], y=demo.y[800:][:eval_n]),
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-n", type=int, default=5000)
    p.add_argument("--eval-n", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eps", type=float, default=0.1, help="evaluation radius (ℓ∞, [0,1] scale)")
    p.add_argument("--adv-eps", type=float, default=0.0, help="FGSM adversarial training radius (0: natural)")
    p.add_argument("--log", type=Path, default=Path("runs/robustness.csv"))
    p.add_argument("--require", default="clean.accuracy >= 0.5")
    args = p.parse_args()

    torch.manual_seed(0)
    train, held_out = fashion_or_demo(args.train_n, args.eval_n)
    net = build_architecture("small-cnn", num_classes=10, in_channels=1, kwargs={"width": 16, "hidden": 128})
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("w", newline="") as f:
        log = csv.writer(f)
        log.writerow(["epoch", "train_loss", "clean_acc", "fgsm_acc", "pgd_acc", "margin_median"])
        for epoch in range(1, args.epochs + 1):
            net.train()
            perm = torch.randperm(train.n)
            total = 0.0
            for i in range(0, train.n, args.batch_size):
                x, y = train.x[perm[i : i + args.batch_size]], train.y[perm[i : i + args.batch_size]]
                if args.adv_eps > 0:  # FGSM adversarial examples (the gradient w.r.t. x only)
                    xr = x.clone().requires_grad_(True)
                    (g,) = torch.autograd.grad(F.cross_entropy(net(xr), y), xr)
                    x = (x + args.adv_eps * g.sign()).clamp(0, 1).detach()
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(y)
            r = robaudit.scan(
                net, held_out, eps=[args.eps], attacks="quick", checks=("clean", "attacks", "margins"), device="cpu", seed=0
            )
            m = r.metrics()
            e = f"{args.eps:g}"
            row = [
                epoch,
                total / train.n,
                m["clean.accuracy"],
                m[f"robust_acc.fgsm.linf@{e}"],
                m[f"robust_acc.pgd.linf@{e}"],
                m["margins.median"],
            ]
            log.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row])
            f.flush()
            print("epoch {} loss {:.3f} clean {:.3f} fgsm {:.3f} pgd {:.3f} margin {:.2f}".format(*row))
    outcome = robaudit.gate(r, [args.require])
    print(f"gate {args.require!r}: {'passed' if outcome.passed else 'FAILED'}; log: {args.log}")
    raise SystemExit(0 if outcome.passed else 1)


if __name__ == "__main__":
    main()
