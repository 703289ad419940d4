"""Benchmark: the cost of one fine-tuning epoch of each `robaudit harden` method, relative to natural training.

Model: robaudit's embedded demo model (small-cnn, Fashion-MNIST). Data: the first ``--n``
Fashion-MNIST training images (Debian's dataset-fashion-mnist, or --data-dir), batch
``--batch-size``, float32. Every method uses the trainer's own step
(``robaudit.harden.trainer.forward_backward`` + Adam update) on its own copy of the parent; the
quick evaluation and checkpoint writes are not counted. "natural" is plain CE fine-tuning.

The machine this runs on may be shared, and its load changes on a timescale of seconds, so the
methods are interleaved at the STEP level: for every batch of the epoch, each method takes its
step on that batch, one after the other. A method's epoch time is the sum of its step times;
load swings hit all methods of a round alike, so the ratios are stable even when the absolute
times are not. The epoch is run ``--reps`` times and the fastest epoch per method is reported,
plus the median over all rounds of the per-step ratio.

Targets: jacobian ≤ 2.5× natural, cure ≤ 3.5×. pgd-at uses 10 PGD steps. ``ibp`` and
``crown-ibp`` are timed inside their ramp (ε > 0; crown-ibp with β > 0, i.e. with its CROWN pass;
after the ramp a crown-ibp step is an ibp step). ``--arch NAME`` times a randomly initialised
registry architecture instead of the demo model (e.g. ``--arch cert-cnn``, the certified-training
default).

Run:  python benchmarks/bench_harden.py [--n 4096] [--reps 2] [--threads 2] [--device cpu] [--arch cert-cnn]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from robaudit.cli.demo import DEMO_MODEL
from robaudit.data import DataRequest, load_dataset
from robaudit.engine import resolve_device
from robaudit.geometry.margin import cross_entropy
from robaudit.harden.adversarial import PGDAT
from robaudit.harden.certified import CrownIBPTraining, IBPTraining
from robaudit.harden.regularizers import CEGrad, Cure, Hardener, JacobianReg, StepContext, StepOutput
from robaudit.harden.trainer import forward_backward
from robaudit.models import NormalizedModel, build_architecture, load_model
from robaudit.threat import Norm, ThreatModel

TARGETS = {"jacobian": 2.5, "cure": 3.5}


@dataclass
class Natural(Hardener):
    """Plain cross-entropy fine-tuning: the baseline."""

    name: ClassVar[str] = "natural"
    measure_name: ClassVar[str] = "CE"
    double_backward: ClassVar[bool] = False

    def loss(self, model, x, y, ctx):
        ce = cross_entropy(model(x), y)
        return StepOutput(loss=ce.mean(), ce=float(ce.detach().mean()), penalty=math.nan)

    def measure(self, model, x, y, threat):
        with torch.no_grad():
            return cross_entropy(model(x), y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="training images (first N of the train split)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--arch", default=None, help="a randomly initialised registry architecture instead of the demo model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_dataset("fashion-mnist", DataRequest(split="train", n=args.n, data_dir=args.data_dir))
    if args.arch:
        torch.manual_seed(0)
        inner = build_architecture(
            args.arch, num_classes=data.num_classes, in_channels=data.input_shape[0], input_size=data.input_shape[1]
        )
        parent = NormalizedModel(inner).to(device)
    else:
        parent = load_model(str(DEMO_MODEL)).model.to(device)
    threat = ThreatModel(Norm.LINF, 0.1)
    methods: dict[str, Hardener] = {
        "natural": Natural(),
        "jacobian": JacobianReg(),
        "cure": Cure(h_ramp_epochs=0),  # full h from the first step (at h = 0 the second pass is skipped)
        "ce-grad": CEGrad(),
        "pgd-at (10 steps)": PGDAT(steps=10),
        "ibp": IBPTraining(warmup_epochs=0, ramp_epochs=4),  # progress 1-2: ε = 0.025-0.05
        "crown-ibp (β > 0)": CrownIBPTraining(warmup_epochs=0, ramp_epochs=4),  # β = 0.75-0.5
    }
    for h in methods.values():
        h.resolve(threat, data.input_shape)
    steps = math.ceil(data.n / args.batch_size)
    epoch_best = {k: math.inf for k in methods}
    step_ratios: dict[str, list[float]] = {k: [] for k in methods}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for rep in range(args.reps):
        nets = {k: copy.deepcopy(parent).train() for k in methods}
        params = {k: [p for p in nets[k].parameters() if p.requires_grad] for k in methods}
        opts = {k: torch.optim.Adam(params[k], lr=1e-3) for k in methods}
        gens = {k: torch.Generator(device=device).manual_seed(rep) for k in methods}
        perm = torch.randperm(data.n, generator=torch.Generator().manual_seed(rep))
        total = {k: 0.0 for k in methods}
        for step in range(steps):
            idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
            x, y = data.x[idx].to(device), data.y[idx].to(device)
            times = {}
            for name, hardener in methods.items():
                ctx = StepContext(progress=1.0 + step / steps, generator=gens[name], separate_eval=False, threat=threat)
                sync()
                t0 = time.perf_counter()
                forward_backward(nets[name], hardener, params[name], opts[name], x, y, ctx)
                opts[name].step()
                sync()
                times[name] = time.perf_counter() - t0
                total[name] += times[name]
            for name in methods:
                step_ratios[name].append(times[name] / times["natural"])
        for name in methods:
            epoch_best[name] = min(epoch_best[name], total[name])
        print(f"  epoch {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v:.1f}s" for k, v in total.items()), flush=True)
    base = epoch_best["natural"]
    model_name = f"random {args.arch}" if args.arch else "demo small-cnn"
    print(
        f"\nOne epoch of {data.n} Fashion-MNIST training images ({steps} steps of {args.batch_size}), {model_name}, "
        f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}; methods interleaved per step:"
    )
    print(f"{'method':20s} {'epoch s':>8s} {'× natural':>10s} {'median step ×':>14s}   target")
    for name, t in epoch_best.items():
        target = TARGETS.get(name)
        ratio = t / base
        verdict = "" if target is None else f"≤ {target}×  " + ("ok" if ratio <= target else "MISSED")
        print(f"{name:20s} {t:8.2f} {ratio:10.2f} {statistics.median(step_ratios[name]):14.2f}   {verdict}")


if __name__ == "__main__":
    main()
