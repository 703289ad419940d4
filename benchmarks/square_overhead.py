"""Square Attack's time outside the model: the share of its wall time not spent in the model's
forward passes (the random search's own work — proposals, draws, bookkeeping — per query).

The model is wrapped in a timer (every forward timed, on CUDA synchronized), Square runs once with
per-sample random streams as a scan draws them, and the script prints the wall time, the time in
the model's forwards, and the share outside. Run it before and after a change of
``robaudit/attacks/square.py``; the samples that resist run every query, so pick an ε that
leaves most of them robust (the default: the demo model at ℓ∞ ε = 0.02, ~70 % robust).

    python benchmarks/square_overhead.py [--model demo|PATH] [--n 100] [--eps 0.02] [--queries 1000] [--threads 1]
        [--channels-last] [--reps 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from robaudit.attacks import ATTACKS
from robaudit.attacks.base import in_memory_format
from robaudit.cli.demo import DEMO_MODEL
from robaudit.data import DataRequest, load_dataset
from robaudit.engine import resolve_device
from robaudit.models import load_model
from robaudit.rng import SampleRNG
from robaudit.threat import Norm, ThreatModel


class TimedModel(torch.nn.Module):
    """``model`` with the wall time of its forward passes summed in ``seconds``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seconds = model, 0.0
        self.sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)

    def forward(self, x):
        self.sync()
        t0 = time.perf_counter()
        out = self.model(x)
        self.sync()
        self.seconds += time.perf_counter() - t0
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="demo (the embedded model) or a checkpoint path")
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--norm", choices=("linf", "l2"), default="linf")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions of the last run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_model(str(DEMO_MODEL) if args.model == "demo" else args.model).model.to(device).eval()
    model = TimedModel(in_memory_format(model, args.channels_last))
    data = load_dataset(args.dataset, DataRequest(n=args.n))
    x, y = data.batch(slice(0, args.n)).to(device), data.y.to(device)
    threat = ThreatModel(Norm.parse(args.norm), args.eps)
    walls, inside = [], []
    for rep in range(args.reps):
        attack = ATTACKS.get("square")(n_queries=args.queries)
        model.seconds = 0.0
        prof = cProfile.Profile() if args.profile and rep == args.reps - 1 else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        out = attack.run(model, x, y, threat, SampleRNG.for_indices(0, "square-overhead", torch.arange(args.n), device))
        if prof:
            prof.disable()
        walls.append(time.perf_counter() - t0)
        inside.append(model.seconds)
    shares = [1 - i / w for i, w in zip(inside, walls)]
    print(
        f"{args.model}, n {args.n}, {threat}, {args.queries} queries, {torch.get_num_threads()} thread(s), device {device}, "
        f"channels_last {args.channels_last}: robust {float((~out.success).double().mean()):.3f}, "
        f"{attack.counter.forward} sample forwards"
    )
    print(
        f"wall {statistics.median(walls):.2f} s, in the model's forwards {statistics.median(inside):.2f} s: "
        f"outside the model {statistics.median(shares):.1%} (per round {min(shares):.1%}–{max(shares):.1%})"
    )
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
