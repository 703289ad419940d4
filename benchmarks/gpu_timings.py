"""GPU figures for the README, in one run (< 4 minutes on an H200): one JSON line per figure.

1. ``scan-standard`` — ``robaudit.scan`` with ``attacks="standard"`` (AutoAttack's cascade:
   APGD-CE, APGD-T×9, FAB-T×9, Square-5000) and checks clean + attacks, on a CIFAR-shaped
   random-init torchvision ResNet-18 (num_classes=10, seed 0) and ``--n`` random [0,1] inputs
   (3×32×32, seed 0) labelled with the model's own predictions (so every sample is attacked), at
   two ℓ∞ radii: 8/255, where a random-init network's tiny margins break nearly every sample in
   APGD-CE's first iterations (it measures the clean pass and the cascade's start-up, not the
   tail), and ``--small-eps`` (default 0.1/255), where some samples survive into APGD-T, FAB-T and
   Square (the tail's per-call cost). Wall seconds of the whole call and per check (the result's
   timings), the ensemble robust accuracy and the samples still robust after each attack.
2. ``attack`` — PGD-20 and APGD-CE-100 alone on the same model and inputs at ``--small-eps``,
   robaudit's seconds and robust accuracy, and torchattacks' when it is installed (it is not a
   dependency).
3. ``hessian`` — benchmarks/bench_hessian.py's comparison on the device: the full input Hessian
   of a small softplus CNN at d = 784 (float64), batched (torch.func, ``chunk`` columns per pass)
   vs one ``autograd.grad`` call per column; seconds, speed-up, max relative difference.

Each figure is skipped (a JSON line saying so) once ``--budget`` seconds have passed. Exits 1 on
any error (after printing it as a JSON line), 0 otherwise.

    python benchmarks/gpu_timings.py                  # on the GPU machine (cuda)
    python benchmarks/gpu_timings.py --tiny --device cpu   # a minute-scale smoke run of the same code
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_hessian's helpers


def emit(**fields) -> None:
    print(json.dumps(fields, sort_keys=False), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def make_model_and_data(n: int, side: int, device: torch.device):
    """A random-init ResNet-18 (10 classes) and n random inputs labelled with its predictions."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, side, side, generator=g)
    with torch.no_grad():
        y = torch.cat([model(x[i : i + 500].to(device)).argmax(1).cpu() for i in range(0, n, 500)])
    return model, x, y


def figure_scan(model, x, y, eps: float, device, batch: int) -> dict:
    import robaudit
    from robaudit.data import DataSpec

    data = DataSpec("random", "test", x, y, tuple(str(i) for i in range(10)), "random [0,1] inputs, model-predicted labels")
    result, t = timed(
        lambda: robaudit.scan(
            model, data, eps=[eps], attacks="standard", checks=["clean", "attacks"], device=str(device), batch_size=batch
        ),
        device,
    )
    metrics = result.metrics()
    ensemble = {k: v for k, v in metrics.items() if k.startswith("robust_acc.ensemble")}
    per_attack = {k: v for k, v in metrics.items() if k.startswith("robust_acc.") and "ensemble" not in k}
    return {"seconds": round(t, 3), "check_seconds": dict(result.timings), "ensemble": ensemble, "per_attack": per_attack}


def figure_attacks(model, x, y, eps: float, device) -> list[dict]:
    from robaudit.attacks import ATTACKS
    from robaudit.rng import SampleRNG
    from robaudit.threat import Norm, ThreatModel

    threat = ThreatModel(Norm.LINF, eps)
    xd, yd = x.to(device), y.to(device)
    idx = torch.arange(x.shape[0])

    def acc(x_adv) -> float:
        with torch.no_grad():
            return float(
                torch.cat([(model(x_adv[i : i + 500]).argmax(1) == yd[i : i + 500]) for i in range(0, len(yd), 500)])
                .double()
                .mean()
            )

    out = []
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    for name, params, steps in (("pgd", {"steps": 20}, 20), ("apgd-ce", {}, 100)):
        attack = ATTACKS.get(name)(**params)
        res, t = timed(lambda: attack.run(model, xd, yd, threat, SampleRNG.for_indices(0, f"gpu:{name}", idx, device)), device)  # noqa: B023 - called within this iteration
        row = {
            "attack": name,
            "steps": steps,
            "eps": eps,
            "robaudit_seconds": round(t, 3),
            "robaudit_robust_acc": acc(res.x_adv),
        }
        if torchattacks is not None:
            if name == "pgd":
                ta = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
            else:
                ta = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0)
            x_ta, t_ta = timed(lambda: ta(xd, yd), device)  # noqa: B023 - called within this iteration
            row.update(torchattacks_seconds=round(t_ta, 3), torchattacks_robust_acc=acc(x_ta), ratio=round(t / t_ta, 3))
        out.append(row)
    return out


def figure_hessian(device, tiny: bool) -> dict:
    from bench_hessian import BenchCNN, per_column_hessian

    from robaudit.geometry import full_hessian

    torch.manual_seed(0)
    side = 12 if tiny else 28
    model = BenchCNN(1).to(device, torch.float64).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 1, side, side, dtype=torch.float64, device=device)
    y = torch.tensor([3], device=device)
    full_hessian(model, x[:, :, :8, :8].contiguous(), y, "ce", method="func", chunk=64)  # warm-up
    H_loop, t_loop = timed(lambda: per_column_hessian(model, x, y), device)
    H, t_b = timed(lambda: full_hessian(model, x, y, "ce", method="func", chunk=64)[0], device)
    rel = float((H - H_loop).abs().max() / H_loop.abs().max())
    return {
        "d": x.numel(),
        "per_column_seconds": round(t_loop, 4),
        "batched_func_seconds": round(t_b, 4),
        "speed_up": round(t_loop / t_b, 1),
        "max_rel_diff": rel,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=1000, help="random inputs (default 1000)")
    ap.add_argument("--small-eps", type=float, default=0.1 / 255)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=210.0, help="skip the figures not started after this many seconds")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 6 inputs of 3x16x16, d=144 Hessian (CPU-sized)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        emit(figure="error", error="cuda is not available (pass --device cpu --tiny for a smoke run)")
        return 1
    n, side = (6, 16) if args.tiny else (args.n, 32)
    start = time.perf_counter()
    emit(
        figure="setup",
        device=str(device),
        name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        n=n,
        input=[3, side, side],
        tiny=args.tiny,
    )

    def due(name: str) -> bool:
        if time.perf_counter() - start > args.budget:
            emit(figure=name, skipped=f"time budget of {args.budget:g} s spent")
            return False
        return True

    try:
        model, x, y = make_model_and_data(n, side, device)
        for eps in (8 / 255, args.small_eps):
            if due("scan-standard"):
                emit(
                    figure="scan-standard",
                    model="resnet18 random-init",
                    eps=eps,
                    **figure_scan(model, x, y, eps, device, args.batch_size),
                )
        if due("attack"):
            for row in figure_attacks(model, x, y, args.small_eps, device):
                emit(figure="attack", **row)
        if due("hessian"):
            emit(figure="hessian", **figure_hessian(device, args.tiny))
    except Exception as exc:  # noqa: BLE001 - one line, then a failing exit code
        emit(figure="error", error=f"{type(exc).__name__}: {exc}")
        return 1
    emit(figure="total", seconds=round(time.perf_counter() - start, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
