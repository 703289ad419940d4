"""How long each progress bar of a whole-battery scan sits still: the number of times every bar
moves and its longest pause (seconds), for ``--checks all`` on ``--n`` demo images (CPU).

    python benchmarks/progress_stalls.py --n 60 [--threads 1]

Issue 15's goal: no bar still for more than a few seconds. Prints, never fails.
"""

from __future__ import annotations

import argparse
import time

import torch

from robaudit.cli.demo import DEMO_MODEL
from robaudit.config import ScanConfig
from robaudit.data import DataRequest, load_dataset
from robaudit.engine import build_checks, compute_parts, make_context
from robaudit.models import load_model


class Recorder:
    """A progress display that timestamps every movement of every bar."""

    console = None

    def __init__(self) -> None:
        self.tasks: dict[int, dict] = {}

    def add_task(self, description, total=None, **_):
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "times": [time.perf_counter()], "completed": 0}
        return tid

    def update(self, tid, completed=None, **_):
        task = self.tasks[tid]
        if completed is not None and completed != task["completed"]:
            task["times"].append(time.perf_counter())
            task["completed"] = completed

    def advance(self, tid, k=1):
        self.update(tid, completed=self.tasks[tid]["completed"] + k)

    def remove_task(self, tid):
        self.tasks[tid]["times"].append(time.perf_counter())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(str(DEMO_MODEL))
    data = load_dataset("demo", DataRequest(n=args.n))
    config = ScanConfig.parse(eps="0.1", checks="all", device="cpu")
    ctx = make_context(loaded, data, config)
    ctx.progress = recorder = Recorder()
    t0 = time.perf_counter()
    compute_parts(ctx, build_checks(config))
    print(f"--checks all -n {args.n}: {time.perf_counter() - t0:.1f} s, {torch.get_num_threads()} thread(s)")
    for task in recorder.tasks.values():
        ts = task["times"]
        longest = max(b - a for a, b in zip(ts, ts[1:]))
        print(f"{task['description']:<40} {len(ts) - 2:>5} moves, longest still {longest:6.2f} s of {ts[-1] - ts[0]:6.1f} s")


if __name__ == "__main__":
    main()
