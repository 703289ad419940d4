"""Sweep: robust and clean accuracy after `robaudit harden`, per method, setting and epoch count.

Each run fine-tunes the parent (default: robaudit's embedded demo model, a natural small-cnn,
91.8 % clean) on the first ``--train-n`` Fashion-MNIST training images (all 60,000 by default)
for ``--epochs`` epochs, snapshots the model after every epoch (from the resume checkpoint
``harden`` writes at each epoch's end), and scans every snapshot with PGD-20 (ℓ∞, ε = 0.1,
robaudit's `pgd` defaults, seed 0) on the first ``--eval-n`` test images. Because an epoch's
learning-rate schedule does not depend on ``--epochs``, the snapshot after epoch k is the model a
k-epoch run would write. One output row per (setting, epoch): clean, PGD-20, seconds of training
per epoch (wall time of the steps only; say whether the machine was shared).

A setting is ``method[:key=value...]`` with keys from ``harden()``: gamma, h, h_ramp_epochs,
reg_weight, reg_norm, lr, lr_hold, lr_final, lr_decay, batch_size, e.g.

    python benchmarks/sweep_harden.py cure jacobian                               # the defaults
    python benchmarks/sweep_harden.py jacobian:reg_weight=0.03 cure:h_ramp_epochs=0.25 --train-n 20000 --epochs 1
    python benchmarks/sweep_harden.py cure --epochs 3 --json sweep.jsonl

Run it with OMP_NUM_THREADS=2 (or --threads) and one sweep at a time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

import robaudit
from robaudit.cli.demo import DEMO_MODEL
from robaudit.harden import harden
from robaudit.harden.checkpointing import ckpt_path_for, load_state
from robaudit.models import load_model

FLOAT_KEYS = {"gamma", "h", "h_ramp_epochs", "reg_weight", "lr", "lr_hold", "lr_final", "lr_decay"}
INT_KEYS = {"batch_size", "projections"}


def parse_setting(text: str) -> tuple[str, dict]:
    method, *pairs = text.split(":")
    options: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        options[key] = float(value) if key in FLOAT_KEYS else int(value) if key in INT_KEYS else value
    return method, options


def evaluate(parent: str, weights: dict, data_dir: str | None, n: int) -> tuple[float, float]:
    """(clean accuracy, PGD-20 robust accuracy) at ℓ∞ ε = 0.1 on the first n test images."""
    model = load_model(parent).model
    model.inner.load_state_dict(weights)
    result = robaudit.scan(
        model.eval(),
        "fashion-mnist",
        eps="0.1",
        attacks="pgd",
        checks=("clean", "attacks"),
        n=n,
        data_dir=data_dir,
        device="cpu",
        seed=0,
    )
    metrics = result.metrics()
    return metrics["clean.accuracy"], metrics["robust_acc.pgd.linf@0.1"]


def run(setting: str, args) -> list[dict]:
    method, options = parse_setting(setting)
    work = Path(tempfile.mkdtemp(prefix="sweep_harden_"))
    out = work / "hardened.safetensors"
    ckpt = ckpt_path_for(out)
    snapshots: dict[int, dict] = {}

    def snapshot(epoch: int, step: int) -> None:  # first step of epoch k+1: the checkpoint holds epoch k's end
        if step == 1 and epoch not in snapshots and ckpt.exists():
            snapshots[epoch] = load_state(ckpt)["model"]

    t0 = time.perf_counter()
    result = harden(
        args.parent,
        "fashion-mnist",
        out,
        method=method,
        data_dir=args.data_dir,
        train_n=args.train_n,
        eval_n=args.quick_eval_n,
        epochs=args.epochs,
        seed=args.seed,
        device="cpu",
        scan=False,
        on_step=snapshot,
        **options,
    )
    wall = time.perf_counter() - t0
    from safetensors.torch import load_file

    snapshots[args.epochs] = load_file(str(out))
    rows = []
    for epoch in sorted(snapshots):
        clean, robust = evaluate(args.parent, snapshots[epoch], args.data_dir, args.eval_n)
        hist = result.history[epoch]
        rows.append(
            {
                "setting": setting,
                "epoch": epoch,
                "clean": clean,
                "pgd20": robust,
                "seconds_per_epoch": hist["seconds"],
                "quick_eval_pgd10": hist["robust_acc"],
                "measure": hist["measure"],
                "train_n": result.hyperparameters["train_n"],
                "wall": wall,
                "hyperparameters": result.hyperparameters,
            }
        )
    shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="+", help="method[:key=value...]")
    ap.add_argument("--parent", default=str(DEMO_MODEL))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-n", type=int, default=None, help="first N training images (default: all 60,000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--eval-n", type=int, default=1000, help="test images for the PGD-20 scan of each snapshot")
    ap.add_argument("--quick-eval-n", type=int, default=200, help="test images of harden's per-epoch PGD-10 check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per row here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{'setting':<48} {'epoch':>5} {'clean':>7} {'PGD-20':>7} {'s/epoch':>8}", flush=True)
    for setting in args.settings:
        for row in run(setting, args):
            print(
                f"{setting:<48} {row['epoch']:>5} {row['clean']:>7.1%} {row['pgd20']:>7.1%} {row['seconds_per_epoch']:>8.0f}",
                flush=True,
            )
            if args.json:
                with args.json.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
