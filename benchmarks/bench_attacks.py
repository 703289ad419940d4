"""PGD-20, APGD-CE-100 and FAB-T (100 iterations × 9 targets, AutoAttack's) in robaudit vs
torchattacks and ART (when installed), same model, data, batch.

Prints wall time, the ratio to torchattacks, robust accuracy side by side, and robaudit's overhead
over the model's own forward+backward cost. Targets (issue): robaudit not slower than torchattacks
and equal or lower robust accuracy. FAB-T's iterations per sample depend on how many targets it
needs (a sample broken within ε is not attacked further), so its last column is per 100 iterations.

    python benchmarks/bench_attacks.py [--n 500] [--eps 0.1] [--device cpu] [--threads 2] [--only fab]
    pip install 'robaudit[bench]'   # torchattacks, adversarial-robustness-toolbox
"""
from __future__ import annotations

import argparse
import time

import torch

from robaudit.attacks import ATTACKS
from robaudit.cli.demo import DEMO_MODEL
from robaudit.data import DataRequest, load_dataset
from robaudit.engine import resolve_device
from robaudit.models import load_model
from robaudit.threat import Norm, ThreatModel


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def robust_acc(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).double().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--only", choices=("pgd", "apgd", "fab"), action="append",
                    help="run only these attacks (repeatable; default: all)")
    ap.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model (l2: PGD/APGD rows are skipped)")
    ap.add_argument("--seeds", type=int, default=3,
                    help="runs per attack and library (seeds 0..K-1): random starts move robust accuracy by a "
                         "few samples, so one seed can't rank libraries; prints the median time and mean accuracy")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_model(str(DEMO_MODEL)).model.to(device).eval()
    data = load_dataset("demo", DataRequest(n=args.n))
    x, y = data.x.to(device), data.y.to(device)
    threat = ThreatModel(Norm.parse(args.norm), args.eps)
    wanted = set(args.only or ("pgd", "apgd", "fab"))
    if threat.norm is Norm.L2:
        wanted &= {"fab"}

    def model_cost():
        xr = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xr), y, reduction="sum")
        torch.autograd.grad(loss, xr)

    model_cost()
    _, fb = timed(model_cost, device)
    print(f"device {device}, n={args.n}, {threat.norm.value} eps={args.eps}; one forward+backward of the batch: {fb * 1e3:.1f} ms")
    print(f"clean accuracy: {robust_acc(model, x, y):.3f}\n")

    seeds = range(max(1, args.seeds))

    def over_seeds(run) -> tuple[float, list[float]]:
        """Median wall time and the robust accuracies of ``run(seed) -> x_adv`` over the seeds."""
        times, accs = [], []
        for seed in seeds:
            x_adv, t = timed(lambda: run(seed), device)
            times.append(t)
            accs.append(robust_acc(model, x_adv, y))
        return sorted(times)[len(times) // 2], accs

    rows = []
    g = torch.Generator(device=device)
    for label, name, kwargs, iters in [("PGD-20", "pgd", {"steps": 20}, 20), ("APGD-CE-100", "apgd-ce", {}, 100),
                                       ("FAB-T-100x9", "fab-t", {}, 100)]:
        if name not in ATTACKS or name.split("-")[0] not in wanted:
            continue
        attack = ATTACKS.get(name)(**kwargs)
        t, accs = over_seeds(lambda s: attack.run(model, x, y, threat, g.manual_seed(s)).x_adv)
        rows.append((label, "robaudit", t, accs, t / (iters * fb)))
    try:
        import torchattacks

        alpha = 2.5 * args.eps / 20
        ta_norm = "Linf" if threat.norm is Norm.LINF else "L2"
        for label, make, iters in [
            ("PGD-20", lambda s: torchattacks.PGD(model, eps=args.eps, alpha=alpha, steps=20, random_start=True), 20),
            ("APGD-CE-100", lambda s: torchattacks.APGD(model, norm="Linf", eps=args.eps, steps=100, n_restarts=1,
                                                        loss="ce", seed=s), 100),
            # AutoAttack's FAB-T: 9 target classes (torchattacks: n_classes − 1), 100 steps, 1 restart
            ("FAB-T-100x9", lambda s: torchattacks.FAB(model, norm=ta_norm, eps=args.eps, steps=100, n_restarts=1,
                                                       multi_targeted=True, n_classes=data.num_classes, seed=s), 100),
        ]:
            if label.split("-")[0].lower() not in wanted:
                continue
            def run(s, make=make):
                torch.manual_seed(s)
                return make(s)(x, y)

            t, accs = over_seeds(run)
            rows.append((label, "torchattacks", t, accs, t / (iters * fb)))
    except ImportError:
        print("torchattacks not installed: pip install torchattacks")
    try:
        if "pgd" not in wanted:
            raise ImportError("skipped")
        import numpy as np
        from art.attacks.evasion import ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=data.num_classes, clip_values=(0.0, 1.0), device_type="gpu" if device.type == "cuda" else "cpu")
        art_pgd = ProjectedGradientDescentPyTorch(clf, norm=float("inf"), eps=args.eps, eps_step=2.5 * args.eps / 20,
                                                  max_iter=20, num_random_init=1, batch_size=args.n, verbose=False)

        def run_art(s):
            np.random.seed(s)  # ART draws its random start from numpy's global generator
            torch.manual_seed(s)
            return torch.from_numpy(art_pgd.generate(x.cpu().numpy(), y.cpu().numpy())).to(device)

        t, accs = over_seeds(run_art)
        rows.append(("PGD-20", "ART", t, accs, t / (20 * fb)))
    except ImportError as exc:
        if str(exc) != "skipped":
            print("ART not installed: pip install adversarial-robustness-toolbox")

    ref = {label: t for label, lib, t, _, _ in rows if lib == "torchattacks"}
    print(f"median time and mean robust accuracy over {len(seeds)} seed(s); per-seed accuracies in brackets")
    print(f"{'attack':<12} {'library':<13} {'time (s)':>9} {'÷ torchattacks':>15} {'robust acc':>11} "
          f"{'time ÷ (iters × fwd+bwd)':>25}  per seed")
    for label, lib, t, accs, over in rows:
        ratio = f"{t / ref[label]:.2f}" if label in ref else "—"
        mean = sum(accs) / len(accs)
        print(f"{label:<12} {lib:<13} {t:>9.2f} {ratio:>15} {mean:>11.4f} {over:>25.2f}  "
              f"[{', '.join(f'{a:.3f}' for a in accs)}]")


if __name__ == "__main__":
    main()
