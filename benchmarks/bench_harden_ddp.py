"""One process vs ``torchrun`` processes for a fixed ``robaudit harden`` run: wall time, and whether
the hardened weights agree.

The embedded demo model (small-cnn, natural, Fashion-MNIST) fine-tuned with --method (cure by
default) on the first --train-n training images for --epochs, ``--no-scan``, on the CPU, run
(alternating, --reps times) as

* one process, 1 thread, ``--batch-size GLOBAL``;
* ``torchrun --standalone --nproc_per_node=NPROC``, 1 thread per process, ``--batch-size GLOBAL/NPROC``
  (the same global batch, so the same optimizer steps);

printing each one's median wall time (process start and imports included), the ratio, and the
largest absolute difference between the two runs' weights next to the largest change of a weight
by the fine-tuning. On a machine with fewer cores than processes expect no speed-up; the point is
the agreement.

float32 sums in another order differ by rounding, which Adam amplifies on parameters whose
gradient is near zero (its step is ~lr·sign(g)); so the same training is then run in float64
through the API (``train`` in NPROC spawned processes vs one), where rounding is ~1e-16 and any
difference in what is computed would show.

    python benchmarks/bench_harden_ddp.py --data-dir /usr/share/datasets/fashion-mnist --train-n 2000 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--method", default="cure")
    ap.add_argument("--train-n", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--global-batch", type=int, default=128)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    import torch
    from safetensors.torch import load_file

    from robaudit.cli.demo import DEMO_MODEL

    if args.global_batch % args.nproc:
        raise SystemExit("--global-batch must be a multiple of --nproc")
    tmp = Path(tempfile.mkdtemp(prefix="robaudit-bench-harden-ddp-"))
    common = [
        "harden",
        str(DEMO_MODEL),
        "--method",
        args.method,
        "-d",
        "fashion-mnist",
        "--data-dir",
        args.data_dir,
        "--train-n",
        str(args.train_n),
        "--epochs",
        str(args.epochs),
        "--device",
        "cpu",
        "--no-scan",
        "-q",
    ]
    runs = {
        "1 process, 1 thread": [sys.executable, "-m", "robaudit", *common, "--batch-size", str(args.global_batch)],
        f"torchrun --nproc_per_node={args.nproc} (1 thread each)": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            "-m",
            "robaudit",
            *common,
            "--batch-size",
            str(args.global_batch // args.nproc),
        ],
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.reps):
        for i, (label, cmd) in enumerate(runs.items()):
            out = tmp / f"run{i}.safetensors"
            out.unlink(missing_ok=True)
            t0 = time.perf_counter()
            proc = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, cwd=tmp)
            if proc.returncode:
                raise SystemExit(f"{label} failed:\n{proc.stderr[-2000:]}")
            times[label].append(time.perf_counter() - t0)
    one, two, parent = (load_file(str(p)) for p in (tmp / "run0.safetensors", tmp / "run1.safetensors", DEMO_MODEL))

    def max_diff(a, b) -> float:
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)

    base = statistics.median(times["1 process, 1 thread"])
    print(
        f"harden --method {args.method}, {args.train_n} Fashion-MNIST images × {args.epochs} epoch(s), "
        f"global batch {args.global_batch}, CPU (torch {torch.__version__})"
    )
    for label, ts in times.items():
        t = statistics.median(ts)
        print(f"  {label:40s} {t:7.1f} s  ({t / base:.2f}×)")
    print(
        f"  float32: largest |weight difference| between the two runs: {max_diff(one, two):.2e} "
        f"(largest change of a weight by the fine-tuning: {max_diff(one, parent):.2e})"
    )
    f64 = tmp / "f64"
    f64.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rank_float64, args=(args, port, f64 / "two.pt"), nprocs=args.nproc)
    _train_float64(args, None, f64 / "one.pt")
    one64, two64 = torch.load(f64 / "one.pt"), torch.load(f64 / "two.pt")
    print(
        f"  float64 (the same training through the API): largest |weight difference| {max_diff(one64, two64):.2e} "
        f"(change by the fine-tuning {max_diff(one64, {k: v.double() for k, v in parent.items()}):.2e})"
    )


def _rank_float64(rank: int, args, port: int, out: Path) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from robaudit.harden.ddp import start_ddp

    _train_float64(args, start_ddp("cpu"), out)


def _train_float64(args, run, out: Path) -> None:
    """harden's training loop on the demo model in float64 (no evaluation scan); rank 0 saves the weights."""
    import torch

    from robaudit.cli.demo import DEMO_MODEL
    from robaudit.data import DataRequest, load_dataset
    from robaudit.harden.regularizers import build_hardener
    from robaudit.harden.schedule import LRSchedule
    from robaudit.harden.trainer import TrainConfig, seed_for, train
    from robaudit.models import load_model
    from robaudit.threat import Norm, ThreatModel

    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist", DataRequest(split="train", n=args.train_n, data_dir=args.data_dir, seed=0))
    net = load_model(str(DEMO_MODEL)).model.double()
    x = data.x.double() / (1 if data.x.is_floating_point() else 255)
    threat = ThreatModel(Norm.LINF, 0.1)
    hardener = build_hardener(args.method, {}, None)
    hardener.resolve(threat, data.input_shape)
    torch.manual_seed(seed_for(0, "torch"))
    world = run.world if run is not None else 1
    config = TrainConfig(
        epochs=args.epochs,
        schedule=LRSchedule(),
        batch_size=args.global_batch // world,
        seed=0,
        threat=threat,
        device=torch.device("cpu"),
    )
    try:
        train(net, hardener, x, data.y, x[:10], data.y[:10], config, out.with_suffix(f".{world}.ckpt"), dist=run)
    finally:
        if run is not None:
            run.close()
    if run is None or run.is_main:
        torch.save({k: v.detach().clone() for k, v in getattr(net, "inner", net).state_dict().items()}, out)


if __name__ == "__main__":
    main()
