"""Memory format and compilation for the attacks: PGD-20 and APGD-CE on the demo model in the
default (contiguous) format, in ``torch.channels_last`` (``--channels-last``) and under
``torch.compile(model)`` (mode "default"; measured, not offered as an option).

For each variant and attack: ``--reps`` alternating rounds (round r runs the variants in a rotated
order, so a machine whose load drifts slows all alike), each round the same seed. torch.compile's
first call (the compilation, forward and backward graphs) is timed separately before the rounds,
so the rounds are its steady state. Printed: the median seconds of each variant, its ratio to the
default with the spread of the per-round ratios (min–max), and its robust accuracy (the fraction of
the n samples still correct after the attack, on the default-format uncompiled model).

    python benchmarks/bench_memory_format.py [--n 200] [--eps 0.1] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robaudit.attacks import ATTACKS
from robaudit.attacks.base import in_memory_format
from robaudit.cli.demo import DEMO_MODEL
from robaudit.data import DataRequest, load_dataset
from robaudit.models import load_model
from robaudit.rng import SampleRNG
from robaudit.threat import Norm, ThreatModel

ATTACK_PARAMS = {"pgd": {"steps": 20}, "apgd-ce": {}}  # PGD-20, APGD-CE at robaudit's default (100 iterations)


def demo_model() -> torch.nn.Module:
    return load_model(str(DEMO_MODEL)).model.eval()


def attack_once(name: str, model, x, y, threat, judge) -> tuple[float, float]:
    """(seconds, robust accuracy) of one run of ``name`` on ``model`` (seed 0, per-sample streams as
    a scan), the accuracy judged by ``judge`` (the default-format, uncompiled model)."""
    attack = ATTACKS.get(name)(**ATTACK_PARAMS[name])
    rng = SampleRNG.for_indices(0, f"bench:{name}", torch.arange(x.shape[0]), x.device)
    t0 = time.perf_counter()
    out = attack.run(model, x, y, threat, rng)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        return seconds, float((judge(out.x_adv).argmax(1) == y).double().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("demo", DataRequest(n=args.n))
    x, y = data.batch(slice(0, args.n)), data.y
    threat = ThreatModel(Norm.LINF, args.eps)
    variants = {
        "default": demo_model(),
        "channels_last": in_memory_format(demo_model(), True),
        "torch.compile": torch.compile(demo_model()),
    }
    print(
        f"demo model, n {args.n}, eps {args.eps}, cpu, {torch.get_num_threads()} threads, {args.reps} rounds, torch {torch.__version__}"
    )
    for name in ATTACK_PARAMS:
        times: dict[str, list[float]] = {v: [] for v in variants}
        accs: dict[str, float] = {}
        if name == next(iter(ATTACK_PARAMS)):
            first, acc = attack_once(name, variants["torch.compile"], x, y, threat, variants["default"])
            print(f"torch.compile first {name} run (compilation included): {first:.2f} s, robust acc {acc:.4f}")
        for r in range(args.reps):
            order = list(variants)[r % len(variants) :] + list(variants)[: r % len(variants)]
            for v in order:
                seconds, accs[v] = attack_once(name, variants[v], x, y, threat, variants["default"])
                times[v].append(seconds)
        base = statistics.median(times["default"])
        for v in variants:
            ratios = [t / b for t, b in zip(times[v], times["default"])]
            med = statistics.median(times[v])
            print(
                f"{name:8s} {v:14s} {med:6.2f} s · ratio {med / base:.2f} (per round {min(ratios):.2f}–{max(ratios):.2f}) · "
                f"robust acc {accs[v]:.4f}"
            )


if __name__ == "__main__":
    main()
