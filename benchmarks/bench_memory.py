"""Peak memory of an ``imagefolder:`` scan as the folder grows: it should stay flat.

Generates class-sorted folders of N random 32×32 RGB PNGs (10 classes) under --root (kept for
reuse), a random-init ``small-cnn`` (width 8) checkpoint, and runs, for each N,

    robaudit scan MODEL --dataset imagefolder:DIR --n N --checks clean,margins --attacks fgsm -q --json OUT

in a fresh process (outside the checkout), printing that process's peak RSS (``ru_maxrss``; the
DataLoader worker processes, forked copy-on-write, are not included) and the ratio of the largest
N's peak to the smallest's.

    python benchmarks/bench_memory.py --sizes 1000,20000
    python benchmarks/bench_memory.py --sizes 1000,20000 --pythonpath /tmp/old-robaudit   # another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_RUNNER = r"""
import resource, sys, runpy
sys.argv = ["robaudit", *sys.argv[1:]]
try:
    runpy.run_module("robaudit", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"PEAK {self_kb} {child_kb} {code}", file=sys.stderr)
"""


def make_folder(root: Path, n: int, classes: int = 10, size: int = 32) -> Path:
    import numpy as np
    from PIL import Image

    folder = root / f"images-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    g = np.random.default_rng(n)
    per = -(-n // classes)
    for i in range(n):
        c = i // per
        path = folder / f"class{c:02d}" / f"img{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    done.write_text(str(n))
    return folder


def make_model(root: Path) -> Path:
    import torch

    from robaudit.models import save_model
    from robaudit.models.nets.small_cnn import SmallCNN

    path = root / "small-cnn-rgb32.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        net = SmallCNN(10, 3, width=8, hidden=64, input_size=32)
        save_model(
            path,
            net,
            arch="small-cnn",
            arch_kwargs={"width": 8, "hidden": 64, "input_size": 32},
            num_classes=10,
            input_shape=(3, 32, 32),
        )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,20000")
    ap.add_argument("--root", default="/tmp/robaudit-bench-memory")
    ap.add_argument("--pythonpath", default=None, help="run the scan with this checkout of robaudit first on sys.path")
    ap.add_argument("--extra", default="", help="extra scan options, e.g. '--workers 0'")
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    model = make_model(root)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    peaks = {}
    for n in (int(s) for s in args.sizes.split(",")):
        folder = make_folder(root, n)
        out = root / f"result-{n}.json"
        cmd = [
            sys.executable,
            "-c",
            _RUNNER,
            "scan",
            str(model),
            "--dataset",
            f"imagefolder:{folder}",
            "--n",
            str(n),
            "--checks",
            "clean,margins",
            "--attacks",
            "fgsm",
            "--eps",
            "0.03",
            "-q",
            "--json",
            str(out),
            *args.extra.split(),
        ]
        t0 = time.perf_counter()
        # run outside the checkout: `python -c` puts the working directory first on sys.path
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
        seconds = time.perf_counter() - t0
        line = next((row for row in proc.stderr.splitlines() if row.startswith("PEAK ")), None)
        if line is None or line.split()[3] != "0":
            print(proc.stderr[-2000:])
            raise SystemExit(f"the scan of {n} images failed")
        self_kb = int(line.split()[1])
        acc = json.loads(out.read_text())["sections"]["clean"]["n"]
        peaks[n] = self_kb
        print(f"N={n:>6}: peak RSS {self_kb / 1024:7.1f} MiB, {acc} samples scanned in {seconds:5.1f} s")
    sizes = sorted(peaks)
    if len(sizes) > 1:
        print(f"peak RSS ratio N={sizes[-1]} / N={sizes[0]}: {peaks[sizes[-1]] / peaks[sizes[0]]:.2f}")


if __name__ == "__main__":
    main()
