"""Exact verification closes the bracket on a small network: certified = true = attacked.

Trains robaudit's ``mlp`` (784 → hidden → hidden → 10, ReLU; seeded) on the first --train-n
Fashion-MNIST training images, saves it with robaudit metadata, then runs

    robaudit scan MLP -d fashion-mnist -n N --checks clean,attacks,certify:method=exact --attacks standard --eps …

and prints, per ε: CROWN's certified accuracy (the same scan with certify:method=crown), exact's
certified accuracy, the attacks' worst case, exact's upper bound (attacks + counterexamples), the
unresolved count and the samples exact decided beyond the attacks. Needs Debian's
dataset-fashion-mnist (or --data-dir).

    python benchmarks/exact_small_net.py --hidden 64 --n 200 --eps 0.01,0.02,0.03
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def train(hidden: int, n: int, epochs: int, data_dir: str | None) -> nn.Module:
    from robaudit.data import load_dataset
    from robaudit.data.registry import DataRequest
    from robaudit.models.nets.mlp import MLP

    data = load_dataset("fashion-mnist", DataRequest(split="train", n=n, data_dir=data_dir))
    x, y = data.batch(torch.arange(data.n)), data.y
    torch.manual_seed(0)
    net = MLP(hidden=hidden)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for k in range(0, len(y), 128):
            idx = perm[k : k + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def scan(model: Path, method: str, args, out: Path) -> tuple[dict, float]:
    cmd = [
        sys.executable,
        "-m",
        "robaudit",
        "scan",
        str(model),
        "-d",
        "fashion-mnist",
        "-n",
        str(args.n),
        "--checks",
        f"clean,attacks,certify:method={method}:time_limit={args.time_limit}",
        "--attacks",
        "standard",
        "--eps",
        args.eps,
        "--json",
        str(out),
        "-q",
    ]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text()), time.perf_counter() - t0


def main() -> None:
    from robaudit.models import save_model
    from robaudit.threat import format_eps

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--train-n", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", default="0.01,0.02,0.03")
    ap.add_argument("--time-limit", type=float, default=30.0)
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mlp.safetensors"
        net = train(args.hidden, args.train_n, args.epochs, args.data_dir)
        save_model(path, net, arch="mlp", arch_kwargs={"hidden": args.hidden}, num_classes=10, input_shape=(1, 28, 28))
        crown, t_crown = scan(path, "crown", args, Path(tmp) / "crown.json")
        exact, t_exact = scan(path, "exact", args, Path(tmp) / "exact.json")
    print(
        f"mlp 784-{args.hidden}-{args.hidden}-10 trained on {args.train_n} images × {args.epochs} epochs; "
        f"n={args.n} Fashion-MNIST test images; clean {exact['sections']['clean']['accuracy']:.3f}; "
        f"scan with crown {t_crown:.0f} s, with exact {t_exact:.0f} s (each includes --attacks standard)"
    )
    print(
        f"{'eps':>6} {'crown cert.':>12} {'exact cert.':>12} {'attacked':>9} {'exact upper':>12} "
        f"{'unresolved':>11} {'falsified':>10} {'timeouts':>9}"
    )
    attacks = exact["sections"]["attacks"]["ensemble"]
    for c_run, e_run in zip(crown["sections"]["certify"]["runs"], exact["sections"]["certify"]["runs"]):
        key = format_eps(e_run["eps"])
        open_ = sum(s in ("timeout", "undecided", "skipped") for s in e_run["status"])
        print(
            f"{e_run['eps']:>6g} {c_run['certified_accuracy']:>12.3f} {e_run['certified_accuracy']:>12.3f} "
            f"{attacks[key]:>9.3f} {e_run['upper_accuracy']:>12.3f} {e_run['n_unresolved']:>11} "
            f"{e_run['n_falsified']:>10} {open_:>9}"
        )


if __name__ == "__main__":
    main()
