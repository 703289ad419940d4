"""One process vs torchrun processes vs shards + merge: wall time, and whether the results are equal.

A fixed scan — the embedded demo model on the first --n demo images, the default checks, the
``quick`` attacks, ``--compute-block 16`` — run (alternating, --reps times) as

* one process with 1 thread and with --nproc threads,
* ``torchrun --standalone --nproc_per_node=NPROC`` (1 thread per process),
* NPROC ``--shard K/NPROC`` jobs one after another + ``robaudit merge`` (the part files' sizes),

printing each one's median wall time (process start and imports included), the ratio to one
process with 1 thread, and whether each result equals that one (timings, command line and
execution aside). On a machine with fewer cores than processes expect no speed-up; the point is
the equality.

    python benchmarks/bench_scaling.py --n 1000 --nproc 2 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _comparable(path: Path) -> dict:
    d = json.loads(path.read_text())
    d.pop("timings")
    for run in d["sections"].get("attacks", {}).get("runs", []):
        run.pop("seconds")
    d["provenance"].pop("command_line")
    d["provenance"].pop("execution")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    from robaudit.cli.demo import DEMO_MODEL

    tmp = Path(tempfile.mkdtemp(prefix="robaudit-bench-scaling-"))
    scan = [str(DEMO_MODEL), "-d", "demo", "--num-samples", str(args.n), "--compute-block", "16", "--device", "cpu", "-q"]
    py = [sys.executable, "-m", "robaudit"]

    def run(cmds: list[list[str]], threads: int) -> float:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        t0 = time.perf_counter()
        for cmd in cmds:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
            if proc.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        return time.perf_counter() - t0

    n = args.nproc
    modes = {
        "1 process, 1 thread": ([py + ["scan", *scan, "--json", "one.json"]], 1, "one.json"),
        f"1 process, {n} threads": ([py + ["scan", *scan, "--json", "threads.json"]], n, "threads.json"),
        f"torchrun, {n} processes × 1 thread": (
            [
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc_per_node={n}",
                    "-m",
                    "robaudit",
                    "scan",
                    *scan,
                    "--json",
                    "torchrun.json",
                ]
            ],
            1,
            "torchrun.json",
        ),
        f"{n} shards in turn + merge": (
            [py + ["scan", *scan, "--shard", f"{k}/{n}", "--json", f"part_{k}.json"] for k in range(n)]
            + [py + ["merge", *[f"part_{k}.json" for k in range(n)], "-o", "merged.json", "-q"]],
            1,
            "merged.json",
        ),
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.reps):
        for mode, (cmds, threads, _) in modes.items():
            times[mode].append(run(cmds, threads))
    reference = _comparable(tmp / "one.json")
    base = statistics.median(times["1 process, 1 thread"])
    print(f"{args.n} demo images, default checks, quick attacks, --compute-block 16; median of {args.reps}")
    for mode, (_, _, out) in modes.items():
        t = statistics.median(times[mode])
        same = _comparable(tmp / out) == reference
        print(f"{mode:34s} {t:7.1f} s  ({t / base:4.2f}× one process)  result equal to one process: {same}")
    sizes = [(tmp / f"part_{k}.json").stat().st_size for k in range(n)]
    print(f"part files: {', '.join(f'{s / 1e6:.2f} MB' for s in sizes)} for {args.n} samples")


if __name__ == "__main__":
    main()
