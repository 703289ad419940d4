"""Sweep: certified training (`robaudit harden --method ibp|crown-ibp`, and `pgd-at` for comparison)
from scratch on Fashion-MNIST; certified (CROWN), clean and optionally attacked accuracy per epoch.

Each setting trains ``--arch`` (default ``cert-cnn``) from a random initialisation (seed ``--seed``)
on the first ``--train-n`` Fashion-MNIST training images (all 60,000 by default) for ``--epochs``
epochs, snapshots the model after every epoch (from the resume checkpoint ``harden`` writes at
each epoch's end; an epoch's learning rate and the ε/κ/β ramps are set in epochs, so the snapshot
after epoch k is the model a k-epoch run writes), and scans the snapshots with
``--checks clean,certify`` (CROWN, ℓ∞, ε = ``--eps``) on the first ``--eval-n`` test images; with
``--attacks standard`` the last snapshot is also attacked (AutoAttack-style cascade), which gives
the bracket certified ≤ robust ≤ attacked. One row per (setting, epoch): clean, certified, attacked
(last epoch), cumulative minutes of training (wall time of the steps only: say whether the machine
was shared). ``--keep DIR`` keeps each setting's final model, to scan it again with the CLI.

A setting is ``method[:key=value...]`` with keys from ``harden()`` — warmup_epochs, ramp_epochs,
kappa_end, train_eps_scale, lr, lr_hold, lr_final, lr_decay, batch_size, pgd_steps — and
``arch_kwargs`` as JSON-free ``k=v`` pairs after ``arch.`` (``arch.width=32``), e.g.

    python benchmarks/sweep_certified.py ibp crown-ibp pgd-at --epochs 20 --attacks standard
    python benchmarks/sweep_certified.py ibp:ramp_epochs=3:kappa_end=0 ibp:arch.bn=true --epochs 6 --train-n 20000

Run one sweep at a time on a shared machine (``nice -n 10``; ``--threads`` sets torch's threads).
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
from robaudit.harden import harden
from robaudit.harden.checkpointing import ckpt_path_for, load_state
from robaudit.models import load_model

FLOAT_KEYS = {"warmup_epochs", "ramp_epochs", "kappa_end", "train_eps_scale", "lr", "lr_hold", "lr_final", "lr_decay"}
INT_KEYS = {"batch_size", "pgd_steps"}


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_setting(text: str) -> tuple[str, dict, dict]:
    """(method, harden() options, architecture kwargs)."""
    method, *pairs = text.split(":")
    options: dict = {}
    arch_kwargs: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key.startswith("arch."):
            arch_kwargs[key[5:]] = _value(value)
        else:
            options[key] = float(value) if key in FLOAT_KEYS else int(value) if key in INT_KEYS else value
    return method, options, arch_kwargs


def evaluate(out: Path, weights: dict | None, args, attacks: bool) -> dict[str, float]:
    """Clean and certified (CROWN) accuracy, and with ``attacks`` the attacked one, on the first
    ``--eval-n`` test images (ℓ∞, ε = ``--eps``)."""
    loaded = load_model(str(out))
    model = loaded.model
    if weights is not None:
        model.inner.load_state_dict(weights)
    checks = ("clean", "attacks", "certify") if attacks else ("clean", "certify")
    t0 = time.perf_counter()
    result = robaudit.scan(
        model.eval(),
        "fashion-mnist",
        eps=str(args.eps),
        attacks=args.attacks or "quick",
        checks=checks,
        n=args.eval_n,
        data_dir=args.data_dir,
        device="cpu",
        seed=0,
    )
    m = result.metrics()
    row = {
        "clean": m["clean.accuracy"],
        "certified": m[f"certified_acc.crown.linf@{args.eps:g}"],
        "scan_seconds": time.perf_counter() - t0,
    }
    if attacks:
        row["attacked"] = min(v for k, v in m.items() if k.startswith("robust_acc.") and k.endswith(f"linf@{args.eps:g}"))
    return row


def run(setting: str, args) -> list[dict]:
    method, options, arch_kwargs = parse_setting(setting)
    work = Path(tempfile.mkdtemp(prefix="sweep_certified_"))
    out = work / "trained.safetensors"
    ckpt = ckpt_path_for(out)
    snapshots: dict[int, dict] = {}

    def snapshot(epoch: int, step: int) -> None:  # first step of epoch k+1: the checkpoint holds epoch k's end
        if step == 1 and epoch not in snapshots and ckpt.exists():
            snapshots[epoch] = load_state(ckpt)["model"]

    t0 = time.perf_counter()
    result = harden(
        None,
        "fashion-mnist",
        out,
        method=method,
        arch=args.arch,
        arch_kwargs=arch_kwargs or None,
        data_dir=args.data_dir,
        train_n=args.train_n,
        eval_n=args.quick_eval_n,
        epochs=args.epochs,
        seed=args.seed,
        device="cpu",
        eps=args.eps,
        scan=False,
        on_step=snapshot,
        **options,
    )
    wall = time.perf_counter() - t0
    rows = []
    minutes = 0.0
    for epoch in range(1, args.epochs + 1):
        minutes += result.history[epoch]["seconds"] / 60
        last = epoch == args.epochs
        if not last and (epoch not in snapshots or epoch % args.every):
            continue
        ev = evaluate(out, None if last else snapshots[epoch], args, attacks=last and bool(args.attacks))
        hist = result.history[epoch]
        rows.append(
            {
                "setting": setting,
                "arch": args.arch,
                "arch_kwargs": arch_kwargs,
                "epoch": epoch,
                **ev,
                "minutes": minutes,
                "train_eps": hist.get("eps"),
                "quick_measure": hist["measure"],
                "train_n": result.hyperparameters["train_n"],
                "wall": wall,
                "hyperparameters": result.hyperparameters,
            }
        )
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, args.keep / (setting.replace(":", "_").replace("=", "-") + ".safetensors"))
    shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="+", help="method[:key=value...][:arch.key=value...]")
    ap.add_argument("--arch", default="cert-cnn")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-n", type=int, default=None, help="first N training images (default: all 60,000)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--eval-n", type=int, default=1000, help="test images for the scan of each snapshot")
    ap.add_argument("--every", type=int, default=1, help="scan every k-th epoch's snapshot (and the last)")
    ap.add_argument("--attacks", default=None, help="attack the last snapshot with this preset (e.g. standard)")
    ap.add_argument("--quick-eval-n", type=int, default=200, help="test images of harden's per-epoch check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per row here")
    ap.add_argument("--keep", type=Path, default=None, help="copy each setting's final model into this folder")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{'setting':<56} {'epoch':>5} {'clean':>7} {'CROWN':>7} {'attacked':>8} {'train ε':>8} {'minutes':>8}", flush=True)
    for setting in args.settings:
        for row in run(setting, args):
            attacked = f"{row['attacked']:>8.1%}" if "attacked" in row else f"{'—':>8}"
            eps = f"{row['train_eps']:>8.3f}" if row["train_eps"] is not None else f"{'—':>8}"
            print(
                f"{setting:<56} {row['epoch']:>5} {row['clean']:>7.1%} {row['certified']:>7.1%} {attacked} {eps} "
                f"{row['minutes']:>8.1f}",
                flush=True,
            )
            if args.json:
                with args.json.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
