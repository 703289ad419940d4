#!/usr/bin/env python3
"""Audit a torchvision classifier on your own images in an image folder (root/<class>/<image>).

Builds ``torchvision:NAME`` (e.g. resnet18) with ImageNet normalization inside the wrapped model, so
ε stays on the [0,1] pixel scale; loads your fine-tuned weights with --weights (a state dict,
loaded with weights_only=True) or keeps random weights (--weights none: no download, useful only to
check the plumbing). Images are resized on the short side and centre-cropped to --image-size.
Defaults: ℓ∞ ε = 2/255, 4/255 with FGSM + PGD-20 (Madry et al. 2018), as for ImageNet-scale
models; one 224×224 ResNet-18 PGD-20 batch of 64 costs ~40 s on 2 CPU cores.

    python examples/audit_torchvision_imagefolder.py photos/ --arch resnet18 --weights ft.pth --out runs/photos
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import robaudit
from robaudit.data import DataRequest, load_dataset
from robaudit.models import build_architecture

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--arch", default="resnet18", help="torchvision classification model name")
    p.add_argument("--weights", default="none", help="a state-dict file, or 'none' for random weights")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--eps", default="2/255,4/255")
    p.add_argument("--attacks", default="quick")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("runs/imagefolder"))
    args = p.parse_args()

    data = load_dataset(f"imagefolder:{args.folder}", DataRequest(n=args.n, image_size=args.image_size))
    print(f"{data.n} images, classes {', '.join(data.class_names)}, shape {data.input_shape}")
    net = build_architecture(f"torchvision:{args.arch}", num_classes=data.num_classes, in_channels=3)
    if args.weights != "none":
        net.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    net.eval()
    result = robaudit.scan(
        net,
        data,
        eps=args.eps,
        attacks=args.attacks,
        checks=("clean", "attacks", "margins"),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        batch_size=args.batch_size,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result.write_json(args.out / "results.json")
    (args.out / "report.html").write_text(result.to_html())
    for name, value in sorted(result.metrics().items()):
        if name.startswith(("clean.", "robust_acc.")):
            print(f"{name} = {value:.3f}")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.html'}")


if __name__ == "__main__":
    main()
