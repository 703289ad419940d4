"""Benchmark: what auditing a fixed-batch torch.export archive costs, relative to a dynamic-batch one.

The embedded demo model is exported three times (dynamic batch, fixed batch 1, fixed batch 4)
and each archive is scanned with the default checks and `quick` attacks on the first ``--n``
embedded Fashion-MNIST test images at ``--batch-size``. The scans are interleaved ``--reps``
times (a shared machine's load hits all three alike) and the fastest of each is reported, with
its ratio to the dynamic export.

Run:  python benchmarks/bench_fixed_batch.py [--n 200] [--reps 2] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from robaudit.cli.demo import DEMO_MODEL
from robaudit.config import ScanConfig
from robaudit.data import DataRequest, load_dataset
from robaudit.engine import run_scan
from robaudit.models import check_fits, load_model


def export(path: Path, batch: int | None) -> None:
    net = load_model(str(DEMO_MODEL)).model.inner.eval()
    dyn = None if batch else {"x": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(net, (torch.zeros(batch or 2, 1, 28, 28),), dynamic_shapes=dyn), str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("demo", DataRequest(n=args.n))
    config = ScanConfig.parse(device="cpu", batch_size=args.batch_size)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        paths = {"dynamic": Path(d) / "dyn.pt2", "fixed batch 1": Path(d) / "b1.pt2", "fixed batch 4": Path(d) / "b4.pt2"}
        for (_name, path), batch in zip(paths.items(), (None, 1, 4)):
            export(path, batch)
        for _ in range(args.reps):
            for name, path in paths.items():
                loaded = check_fits(
                    load_model(path, trust_checkpoint=True),
                    input_shape=data.input_shape,
                    num_classes=data.num_classes,
                    dataset_name=data.name,
                )
                t0 = time.perf_counter()
                run_scan(loaded, data, config, command_line="bench_fixed_batch")
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    base = best["dynamic"]
    print(f"scan of {args.n} images, default checks, quick attacks, --batch-size {args.batch_size}:")
    for name, seconds in best.items():
        print(f"  {name:<14} {seconds:7.1f} s   {seconds / base:5.1f}× the dynamic export")


if __name__ == "__main__":
    main()
