"""Rebuild the embedded demo model: a small natural CNN trained on Fashion-MNIST.

Deterministic (fixed seed, deterministic algorithms, single thread) from Debian's
dataset-fashion-mnist (/usr/share/datasets/fashion-mnist). Writes
robaudit/models/assets/demo_fashion_mnist_small_cnn.safetensors with robaudit metadata, so
`robaudit scan` needs no architecture flags for it.

    python scripts/build_demo_model.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robaudit.data import DataRequest, load_dataset
from robaudit.models import build_architecture, save_model

OUT = Path(__file__).resolve().parent.parent / "robaudit" / "models" / "assets" / "demo_fashion_mnist_small_cnn.safetensors"
ARCH_KWARGS = {"width": 16, "hidden": 128}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    train = load_dataset("fashion-mnist", DataRequest(split="train", data_dir=args.data_dir))
    test = load_dataset("fashion-mnist", DataRequest(split="test", data_dir=args.data_dir))
    net = build_architecture("small-cnn", num_classes=10, in_channels=1, kwargs=ARCH_KWARGS)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    steps_per_epoch = (train.n + 127) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.epochs * steps_per_epoch)
    for epoch in range(args.epochs):
        t0 = time.time()
        net.train()
        perm = torch.randperm(train.n, generator=g)
        for i in range(0, train.n, 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(net(train.x[idx]), train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            acc = (
                sum((net(test.x[i : i + 1000]).argmax(1) == test.y[i : i + 1000]).sum().item() for i in range(0, test.n, 1000))
                / test.n
            )
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f} ({time.time() - t0:.0f}s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sha = save_model(
        args.out,
        net,
        arch="small-cnn",
        arch_kwargs=ARCH_KWARGS,
        num_classes=10,
        input_shape=(1, 28, 28),
        class_names=test.class_names,
        extra_metadata={"robaudit.training": f"natural, Adam one-cycle max lr 2e-3, {args.epochs} epochs, batch 128, seed 0"},
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB, sha256 {sha[:12]}), test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
