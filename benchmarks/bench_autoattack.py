"""`robaudit scan --attacks standard` against the authors' AutoAttack (fra31/auto-attack,
``version='standard'``) and torchattacks' ``AutoAttack``: whole processes, alternated, timed.

Every run is a fresh process started with ``OMP_NUM_THREADS=--threads`` and timed from start to
exit (Python start-up, imports, loading the model and the data included — what a user waits for):

* ``robaudit``: ``python -m robaudit scan MODEL -d DATA -n N --eps EPS --attacks standard
  --checks attacks --device DEVICE --json FILE -q`` with its defaults (the memory format chosen at
  scan start, packed runs, fixed-point stops); robust accuracy per stage from the JSON (cascade);
* ``autoattack``: ``AutoAttack(model, norm='Linf', eps=EPS, version='standard', seed=0)
  .run_standard_evaluation(x, y, bs=250)`` on the same model module and images (loaded with
  robaudit's loader); robust accuracy per stage from its log;
* ``torchattacks``: ``torchattacks.AutoAttack(model, norm='Linf', eps=EPS, version='standard',
  n_classes=K, seed=0)`` (not the authors' recipe: its sub-attacks run fewer iterations); final
  robust accuracy only.

Round r runs the runners in an order rotated by r, so a machine whose load drifts slows all alike.
Printed at the end, one table: per model and runner, the median wall time and its min–max over the
rounds, the median of the per-round ratios to AutoAttack's time with their min–max, and the robust
accuracy after each stage (APGD-CE, +APGD-T, +FAB-T, +Square; averaged over the rounds — all
three are seeded, so they repeat), with the load average before and after.

Models: ``robust`` — the small Fashion-MNIST CNN (conv-pool-conv-pool-fc-fc, robaudit's
``small-cnn`` at width 16, hidden 128) fine-tuned from the embedded demo model by robaudit's own
PGD adversarial training (``robaudit harden --method pgd-at --eps 0.1 --epochs 3 --seed 0`` on
the 60,000 training images; trained once, ~10 min on one core, and cached in
``~/.cache/robaudit-bench/``, never in the repository); ``natural`` — the embedded demo model;
``quantized`` — the robust model's weights behind x → round(255·x)/255
(benchmarks/quantized_net.py): every input gradient exactly zero, so the gradient attacks can't
move and only Square can break it.
Data: the first N Fashion-MNIST test images (``apt-get install dataset-fashion-mnist``), else the
embedded demo images.

    python benchmarks/bench_autoattack.py [--n 100] [--eps 0.1] [--rounds 3] [--threads 1]
        [--models robust,natural,quantized] [--runners robaudit,autoattack,torchattacks] [--device cpu]

The authors' AutoAttack is not on PyPI: ``pip install git+https://github.com/fra31/auto-attack``
(or ``pip install -e '.[autoattack]'``); torchattacks: ``pip install torchattacks`` (in
``.[bench]``). A runner whose package is missing is skipped with that line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("ROBAUDIT_BENCH_CACHE", Path.home() / ".cache" / "robaudit-bench"))
ROBUST = CACHE / "fmnist-pgd-at.safetensors"
STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
STAGE_LABELS = ("APGD-CE", "+APGD-T", "+FAB-T", "+Square")
RUNNERS = ("robaudit", "robaudit-nchw", "autoattack", "torchattacks")
DEFAULT_RUNNERS = ("robaudit", "autoattack", "torchattacks")
INSTALL = {
    "autoattack": "the authors' AutoAttack is not installed: pip install git+https://github.com/fra31/auto-attack "
    "(or pip install -e '.[autoattack]'; offline: pip install a local clone)",
    "torchattacks": "torchattacks is not installed: pip install torchattacks (or pip install -e '.[bench]')",
}
HARDEN = [
    "harden",
    "{demo}",
    "--method",
    "pgd-at",
    "--dataset",
    "fashion-mnist",
    "--eps",
    "0.1",
    "--epochs",
    "3",
    "--seed",
    "0",
    "--no-scan",
    "--device",
    "cpu",
    "-q",
    "--out",
    str(ROBUST),
]


def data_name() -> str:
    """fashion-mnist when its files are found, else the embedded demo images."""
    from robaudit.data import DataRequest, load_dataset
    from robaudit.errors import RobauditError

    try:
        load_dataset("fashion-mnist", DataRequest(n=1))
        return "fashion-mnist"
    except RobauditError:
        return "demo"


QUANTIZED = [
    f"{Path(__file__).with_name('quantized_net.py')}:QuantizedSmallCNN",
    "width=16,hidden=128",
]  # --arch, --arch-kwargs


def model_spec(name: str, threads: int) -> tuple[Path, list[str]] | None:
    """(checkpoint, extra arguments: --arch and --arch-kwargs or none) of model ``name``."""
    if name not in ("robust", "natural", "quantized"):
        raise SystemExit(f"unknown model {name!r}: choose from robust, natural, quantized")
    path = model_path(name, threads)
    if path is None:
        return None
    return path, (["--arch", QUANTIZED[0], "--arch-kwargs", QUANTIZED[1]] if name == "quantized" else [])


def model_path(name: str, threads: int) -> Path | None:
    """The checkpoint of model ``name``; trains the robust one once (cached) if missing."""
    from robaudit.cli.demo import DEMO_MODEL

    if name == "natural":
        return Path(DEMO_MODEL)
    if ROBUST.exists():
        return ROBUST
    if data_name() != "fashion-mnist":
        print(
            f"robust model: not cached at {ROBUST} and Fashion-MNIST's training images are missing to train it "
            f"(apt-get install dataset-fashion-mnist); skipped"
        )
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "robaudit", *[a.format(demo=DEMO_MODEL) for a in HARDEN]]
    print(f"training the robust model once (~10 min on one core), cached at {ROBUST}:\n  {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True, env=_env(threads))
    return ROBUST


def _env(threads: int) -> dict:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_once(runner: str, model: Path, extra: list[str], data: str, args) -> dict:
    """One whole process of ``runner``: {"seconds", "clean", "stages": [4 or fewer robust accuracies], ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        if runner.startswith("robaudit"):
            cmd = [
                sys.executable,
                "-m",
                "robaudit",
                "scan",
                str(model),
                *extra,
                "-d",
                data,
                "-n",
                str(args.n),
                "--eps",
                str(args.eps),
                "--attacks",
                "standard",
                "--checks",
                "attacks",
                "--device",
                args.device,
                "--json",
                str(out),
                "-q",
            ]
            cmd += ["--no-channels-last"] if runner == "robaudit-nchw" else []
        else:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                runner,
                "--model",
                str(model),
                *extra,
                "--data",
                data,
                "--n",
                str(args.n),
                "--eps",
                str(args.eps),
                "--device",
                args.device,
                "--out",
                str(out),
            ]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=_env(args.threads), capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"{runner} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        result = json.loads(out.read_text())
    if runner.startswith("robaudit"):
        runs = [r for r in result["sections"]["attacks"]["runs"]]
        return {
            "seconds": seconds,
            "clean": result["sections"]["clean"]["accuracy"],
            "stages": [r["robust_accuracy"] for r in runs],
            "stage_seconds": [r["seconds"] for r in runs],
            "passes": [(r["forward_per_sample"], r["backward_per_sample"]) for r in runs],
            "memory_format": (result["provenance"].get("memory_format") or {}).get("chosen", "contiguous"),
        }
    result["seconds"] = seconds
    return result


# --- the child processes -----------------------------------------------------------------------


def child(args) -> None:
    import torch

    from robaudit.data import DataRequest, load_dataset
    from robaudit.models import load_model

    device = torch.device(args.device)
    model = load_model(args.model, arch=args.arch, arch_kwargs=args.arch_kwargs).model.to(device).eval()
    data = load_dataset(args.data, DataRequest(n=args.n))
    x, y = data.batch(slice(0, args.n)).to(device), data.y[: args.n].to(device)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    if args.child == "autoattack":
        from autoattack import AutoAttack

        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "aa.log"
            aa = AutoAttack(
                model, norm="Linf", eps=args.eps, version="standard", seed=0, device=str(device), log_path=str(log)
            )
            x_adv = aa.run_standard_evaluation(x, y, bs=250)
            text = log.read_text()
        found = {k: float(v) / 100 for k, v in re.findall(r"robust accuracy after ([A-Z-]+): ([0-9.]+)%", text)}
        stages: list[float] = []
        for s in STAGES:  # a stage AutoAttack skipped (nothing left robust) leaves the accuracy where it was
            stages.append(found.get(s.upper(), stages[-1] if stages else clean))
    else:
        import torchattacks

        attack = torchattacks.AutoAttack(
            model, norm="Linf", eps=args.eps, version="standard", n_classes=data.num_classes, seed=0
        )
        x_adv = attack(x, y)
        stages = []
    with torch.no_grad():
        final = float((model(x_adv).argmax(1) == y).double().mean())
    Path(args.out).write_text(json.dumps({"clean": clean, "stages": stages, "final": final}))


# --- the table -----------------------------------------------------------------------------------


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run (0: leave it)")
    ap.add_argument("--models", default="robust,natural,quantized")
    ap.add_argument(
        "--runners",
        default=",".join(DEFAULT_RUNNERS),
        help=f"of {', '.join(RUNNERS)} (robaudit-nchw: robaudit with --no-channels-last, the default memory format)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", choices=("autoattack", "torchattacks"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--arch-kwargs", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import torch

    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    for r in [r for r in runners if r not in RUNNERS]:
        ap.error(f"unknown runner {r!r}; choose from {', '.join(RUNNERS)}")
    for r in [r for r in runners if not r.startswith("robaudit") and importlib.util.find_spec(r) is None]:
        print(f"{r}: skipped — {INSTALL[r]}")
        runners.remove(r)
    data = data_name()
    load_before = _load()
    started = time.strftime("%Y-%m-%d %H:%M")
    print(
        f"{started} · {_cpu()} · {os.cpu_count()} cores · torch {torch.__version__} · device {args.device} · "
        f"{args.threads or 'default'} thread(s) per process · {data}, first {args.n} test images · ℓ∞ ε = {args.eps} · "
        f"{args.rounds} rounds, order rotated per round · load average {load_before}",
        flush=True,
    )
    rows = []
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec = model_spec(model_name, args.threads)
        if spec is None:
            continue
        path, extra = spec
        results: dict[str, list[dict]] = {r: [] for r in runners}
        for rnd in range(args.rounds):
            order = runners[rnd % len(runners) :] + runners[: rnd % len(runners)]
            for runner in order:
                res = run_once(runner, path, extra, data, args)
                results[runner].append(res)
                stages = " ".join(f"{a:.3f}" for a in res["stages"]) or f"final {res['final']:.3f}"
                print(
                    f"  {model_name} round {rnd + 1}/{args.rounds} {runner:<12} {res['seconds']:8.1f} s  robust acc {stages}",
                    flush=True,
                )
        rows.append((model_name, results))
    print(f"\nload average {load_before} before, {_load()} after · {started} → {time.strftime('%H:%M')}")
    print_table(rows, runners, args)


def print_table(rows, runners, args) -> None:
    head = f"{'model':<9} {'runner':<13} {'time s (min–max)':>21} {'÷ AutoAttack (min–max)':>23} {'clean':>6} " + " ".join(
        f"{s:>8}" for s in STAGE_LABELS
    )
    print(
        f"\nrobaudit scan --attacks standard vs AutoAttack (version='standard'), n = {args.n}, ℓ∞ ε = {args.eps}, "
        f"{args.rounds} rounds; whole processes, wall time; robust accuracy after each stage (cascade)"
    )
    print(head)
    print("-" * len(head))
    for model_name, results in rows:
        base = results.get("autoattack") or []
        for runner in runners:
            res = results[runner]
            if not res:
                continue
            secs = [r["seconds"] for r in res]
            t = f"{statistics.median(secs):.1f} ({min(secs):.0f}–{max(secs):.0f})"
            if base and runner != "autoattack":
                ratios = [a["seconds"] / b["seconds"] for a, b in zip(res, base)]
                ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
            else:
                ratio = "1.00" if runner == "autoattack" else "—"
            clean = statistics.mean(r["clean"] for r in res)
            if res[0]["stages"]:
                stages = [statistics.mean(r["stages"][i] for r in res) for i in range(len(res[0]["stages"]))]
                cells = " ".join(f"{a:>8.3f}" for a in stages)
            else:
                cells = " ".join(["       —"] * (len(STAGES) - 1)) + f" {statistics.mean(r['final'] for r in res):>8.3f}"
            print(f"{model_name:<9} {runner:<13} {t:>21} {ratio:>23} {clean:>6.3f} {cells}")
        for runner in [r for r in runners if r.startswith("robaudit") and results[r]]:
            ours = results[runner]
            per_stage = [statistics.median(r["stage_seconds"][i] for r in ours) for i in range(len(ours[0]["stage_seconds"]))]
            passes = ours[0]["passes"]
            print(
                f"{'':<9} {runner}'s stages (median s; forward+backward passes per attacked sample): "
                + ", ".join(
                    f"{lab.lstrip('+')} {s:.1f} s ({f:.0f}+{b:.0f})" for lab, s, (f, b) in zip(STAGE_LABELS, per_stage, passes)
                )
                + f"; memory format {', '.join(sorted({r['memory_format'] for r in ours}))}"
            )


if __name__ == "__main__":
    main()
