"""Cost of per-sample random streams (robaudit.rng.SampleRNG) against one shared torch.Generator.

Runs each attack on the same batch of the embedded demo data with the embedded small CNN, once
with a torch.Generator (the draws depend on batch position) and once with a SampleRNG (one
counter-based stream per sample, keyed by its dataset index), alternating, and prints the median
wall time per model pass of a sample (the runs differ in which samples break when, so in how many
passes they make) and the ratio (SampleRNG ÷ Generator). Also the draw alone: a batch's random
start (uniform, B×784) and an SPSA iteration's ±1 probes (B×64 pairs×784).

    python benchmarks/bench_rng.py --n 256 --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robaudit.attacks import ATTACKS
from robaudit.cli.demo import DEMO_MODEL
from robaudit.data import DataRequest, load_dataset
from robaudit.models import load_model
from robaudit.rng import SampleRNG
from robaudit.threat import Norm, ThreatModel

ATTACK_SPECS = {  # label: (attack, parameters, threat)
    "pgd (20 steps)": ("pgd", {}, ThreatModel(Norm.LINF, 0.1)),
    "apgd-ce (100 iterations)": ("apgd-ce", {}, ThreatModel(Norm.LINF, 0.1)),
    "square ℓ∞ (500 queries)": ("square", {"n_queries": 500}, ThreatModel(Norm.LINF, 0.1)),
    "square ℓ2 (500 queries)": ("square", {"n_queries": 500}, ThreatModel(Norm.L2, 1.5)),
    "spsa (3 iterations)": ("spsa", {"nb_iter": 3}, ThreatModel(Norm.LINF, 0.1)),
}


def _time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("demo", DataRequest(n=args.n))
    model = load_model(str(DEMO_MODEL)).model.eval()
    x, y = data.x, data.y
    idx = torch.arange(args.n)
    print(f"{args.n} demo images, small CNN, ℓ∞ ε = 0.1 / ℓ2 ε = 1.5, {args.threads} thread(s), median of {args.reps}")
    for label, (name, params, threat) in ATTACK_SPECS.items():
        plain, keyed = [], []
        for _ in range(args.reps):  # alternate, so a busy machine slows both alike
            for make, out in (
                (lambda: torch.Generator().manual_seed(0), plain),
                (lambda: SampleRNG.for_indices(0, name, idx), keyed),  # noqa: B023 - called within this iteration
            ):
                attack = ATTACKS.get(name)(**params)
                seconds = _time(lambda: attack.run(model, x, y, threat, make()), 1)[0]  # noqa: B023 - called within this iteration
                out.append(seconds / (attack.counter.forward + attack.counter.backward) * 1e6)
        mp, mk = statistics.median(plain), statistics.median(keyed)
        print(f"{label:26s} µs per sample pass: Generator {mp:7.1f}   SampleRNG {mk:7.1f}   ratio {mk / mp:5.2f}")
    g, r = torch.Generator().manual_seed(0), SampleRNG.for_indices(0, "draw", idx)
    for label, plain_fn, keyed_fn in (
        ("random start (B×784 uniform)", lambda: torch.rand(x.shape, generator=g), lambda: r.uniform(x.shape[1:])),
        (
            "SPSA probes (B×64×784 ±1)",
            lambda: torch.randint(0, 2, (args.n * 64, 784), generator=g) * 2 - 1,
            lambda: r.signs((64 * 784,)),
        ),
    ):
        mp, mk = statistics.median(_time(plain_fn, 5)), statistics.median(_time(keyed_fn, 5))
        print(f"{label:30s} Generator {mp * 1e3:7.1f} ms SampleRNG {mk * 1e3:7.1f} ms ratio {mk / mp:5.2f}")


if __name__ == "__main__":
    main()
