"""`--precision`: the attacks check in bfloat16 (or float16 on CUDA) against float32 — the time ratio
and whether the robust accuracy moved.

Runs ``robaudit.scan(checks="clean,attacks")`` on the demo model and images, alternating float32
and the low precision for ``--reps`` rounds (float32 first in even rounds), and prints the median
attacks-check time of each, the ratio low ÷ float32 with the spread of the per-round ratios, and
every robust accuracy of both. A low-precision run's broken samples are re-checked in float32 (one
more forward per attacked sample), so its robust accuracy can only be ≥ what its own attack found.

    python benchmarks/bench_precision.py [--n 200] [--attacks pgd] [--eps 0.1] [--precision bfloat16] [--reps 3] [--threads 1]

CPUs without native bfloat16 matrix units (AVX-512-BF16/AMX) usually gain nothing from bfloat16:
autocast adds casts around every convolution and matmul, and the small kernels are not faster.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import robaudit
from robaudit.cli.demo import DEMO_MODEL


def cpu_bf16_units() -> str:
    """The CPU's bfloat16 instructions (Linux /proc/cpuinfo flags), or "none"."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return "unknown"
    found = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return ", ".join(found) or "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--attacks", default="pgd")
    ap.add_argument("--eps", default="0.1")
    ap.add_argument("--precision", default="bfloat16", choices=("bfloat16", "float16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    def scan(precision: str):
        result = robaudit.scan(
            str(DEMO_MODEL),
            "demo",
            n=args.n,
            attacks=args.attacks,
            eps=args.eps,
            checks="clean,attacks",
            device=args.device,
            precision=precision,
        )
        return result.timings["attacks"], {k: v for k, v in result.metrics().items() if k.startswith("robust_acc")}

    times: dict[str, list[float]] = {"float32": [], args.precision: []}
    accs: dict[str, dict] = {}
    for r in range(args.reps):
        order = ("float32", args.precision) if r % 2 == 0 else (args.precision, "float32")
        for precision in order:
            seconds, acc = scan(precision)
            times[precision].append(seconds)
            accs[precision] = acc
    ratios = [lo / hi for lo, hi in zip(times[args.precision], times["float32"])]
    f32, low = statistics.median(times["float32"]), statistics.median(times[args.precision])
    print(
        f"attacks {args.attacks!r}, eps {args.eps}, n {args.n}, {args.device}, {torch.get_num_threads()} threads, {args.reps} rounds, "
        f"CPU bfloat16 units: {cpu_bf16_units()}"
    )
    print(
        f"float32 {f32:.2f} s · {args.precision} {low:.2f} s · ratio {low / f32:.2f} (per round {min(ratios):.2f}–{max(ratios):.2f})"
    )
    for name in accs["float32"]:
        a, b = accs["float32"][name], accs[args.precision][name]
        print(f"{name}: float32 {a:.4f} · {args.precision} {b:.4f}" + ("" if a == b else f" (moved {b - a:+.4f})"))


if __name__ == "__main__":
    main()
