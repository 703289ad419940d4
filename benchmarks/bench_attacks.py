"""robaudit's attacks against torchattacks (and ART's PGD, when installed): wall time and robust
accuracy on the same model, data and batch, runs alternated.

Attacks: PGD-20, APGD-CE-100, APGD-T-100×9 and Square-5000 (the issue's four) and FAB-T-100×9
(AutoAttack's settings). robaudit draws from per-sample random streams keyed by dataset index
(``SampleRNG``), as a scan does. For each attack, ``--reps`` rounds; round r runs both libraries
with seed r, robaudit first in even rounds and torchattacks first in odd ones, so a machine
whose load drifts slows both alike. Printed per attack: the median wall time of each library,
the ratio of the medians (robaudit ÷ torchattacks; the target is ≤ 0.9) with the spread of the
per-round ratios (min–max), the mean robust accuracy (target: ≤ torchattacks') and robaudit's
time per model pass of a sample over the model's own cost (1.00 = no overhead).

    python benchmarks/bench_attacks.py [--n 200] [--eps 0.1] [--reps 3] [--threads 1] [--only apgd-t] [--art]
    pip install 'robaudit[bench]'   # torchattacks, adversarial-robustness-toolbox

Two regimes are worth running: the default ε = 0.1 breaks most of the demo model's samples within
a few iterations (cascade tails: the few survivors pay per-call overhead), ε = 0.02 leaves 70 %
robust, so every iteration runs on most of the batch (per-iteration overhead).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robaudit.attacks import ATTACKS
from robaudit.cli.demo import DEMO_MODEL
from robaudit.data import DataRequest, load_dataset
from robaudit.engine import resolve_device
from robaudit.models import load_model
from robaudit.rng import SampleRNG
from robaudit.threat import Norm, ThreatModel

ATTACK_NAMES = ("pgd", "apgd-ce", "apgd-t", "square", "fab-t")


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


def pass_costs(model, x, y, device) -> tuple[float, float]:
    """Seconds per sample of one forward+backward and of one forward of the whole batch (best of 3)."""

    def fb():
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)

    def f():
        with torch.no_grad():
            model(x)

    fb(), f()
    n = x.shape[0]
    return min(timed(fb, device)[1] for _ in range(3)) / n, min(timed(f, device)[1] for _ in range(3)) / n


def robaudit_runner(name: str, model, x, y, threat, params: dict):
    """``run(seed) -> (x_adv, forward passes, backward passes)`` with per-sample streams."""
    idx = torch.arange(x.shape[0])

    def run(seed: int):
        attack = ATTACKS.get(name)(**params)
        out = attack.run(model, x, y, threat, SampleRNG.for_indices(seed, f"bench:{name}", idx, x.device))
        return out.x_adv, attack.counter.forward, attack.counter.backward

    return run


def torchattacks_runner(name: str, model, x, y, threat, num_classes: int, steps: int):
    import torchattacks

    eps, ta_norm = threat.eps, ("Linf" if threat.norm is Norm.LINF else "L2")
    make = {
        "pgd": lambda s: torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True),
        "apgd-ce": lambda s: torchattacks.APGD(model, norm=ta_norm, eps=eps, steps=steps, n_restarts=1, loss="ce", seed=s),
        # AutoAttack's APGD-T / FAB-T: the 9 highest other classes as targets (torchattacks: n_classes − 1)
        "apgd-t": lambda s: torchattacks.APGDT(
            model, norm=ta_norm, eps=eps, steps=steps, n_restarts=1, seed=s, n_classes=num_classes
        ),
        "square": lambda s: torchattacks.Square(
            model, norm=ta_norm, eps=eps, n_queries=steps, n_restarts=1, p_init=0.8, seed=s
        ),
        "fab-t": lambda s: torchattacks.FAB(
            model, norm=ta_norm, eps=eps, steps=steps, n_restarts=1, multi_targeted=True, n_classes=num_classes, seed=s
        ),
    }[name]

    def run(seed: int):
        torch.manual_seed(seed)
        return make(seed)(x, y), None, None

    return run


def art_runner(model, x, y, threat, num_classes: int, device):
    import numpy as np
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    pgd = ProjectedGradientDescentPyTorch(
        clf,
        norm=float("inf"),
        eps=threat.eps,
        eps_step=2.5 * threat.eps / 20,
        max_iter=20,
        num_random_init=1,
        batch_size=x.shape[0],
        verbose=False,
    )

    def run(seed: int):
        np.random.seed(seed)  # ART draws its random start from numpy's global generator
        torch.manual_seed(seed)
        return torch.from_numpy(pgd.generate(x.cpu().numpy(), y.cpu().numpy())).to(device), None, None

    return run


SETTINGS = {  # name: (label, robaudit parameters, iterations / queries for torchattacks)
    "pgd": ("PGD-20", {"steps": 20}, 20),
    "apgd-ce": ("APGD-CE-100", {}, 100),
    "apgd-t": ("APGD-T-100x9", {}, 100),
    "square": ("Square-5000", {}, 5000),
    "fab-t": ("FAB-T-100x9", {}, 100),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--norm", choices=("linf", "l2"), default="linf")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--reps", type=int, default=3, help="alternating rounds per attack (seeds 0..reps-1)")
    ap.add_argument("--only", action="append", choices=ATTACK_NAMES, help="run only these attacks (repeatable)")
    ap.add_argument("--square-queries", type=int, default=5000, help="Square's query budget (both libraries)")
    ap.add_argument("--art", action="store_true", help="also ART's PGD-20 (slow to import)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_model(str(DEMO_MODEL)).model.to(device).eval()
    data = load_dataset("demo", DataRequest(n=args.n))
    x, y = data.batch(slice(0, args.n)).to(device), data.y.to(device)
    threat = ThreatModel(Norm.parse(args.norm), args.eps)
    fb, f = pass_costs(model, x, y, device)
    print(
        f"device {device}, {torch.get_num_threads()} thread(s), demo CNN, n={args.n}, {threat}; per sample in a batch of "
        f"{args.n}: forward+backward {fb * 1e3:.3f} ms, forward {f * 1e3:.3f} ms; clean accuracy {robust_acc(model, x, y):.3f}"
    )
    try:
        import torchattacks  # noqa: F401

        have_ta = True
    except ImportError:
        have_ta = False
        print("torchattacks not installed: pip install 'robaudit[bench]' (robaudit's times only)")
    print(f"{args.reps} alternating rounds; median time; robust accuracy averaged over the rounds\n")
    header = (
        f"{'attack':<13} {'robaudit s':>10} {'torchatt. s':>11} {'ratio':>6} {'spread':>11} "
        f"{'robust acc (robaudit / torchatt.)':>34} {'overhead':>9}"
    )
    print(header)
    for name in args.only or ATTACK_NAMES:
        label, params, steps = SETTINGS[name]
        if name == "square":
            params, steps = {"n_queries": args.square_queries}, args.square_queries
            label = f"Square-{steps}"
        ours = robaudit_runner(name, model, x, y, threat, params)
        theirs = torchattacks_runner(name, model, x, y, threat, data.num_classes, steps) if have_ta else None
        t_ours, t_theirs, a_ours, a_theirs, over = [], [], [], [], []
        for rep in range(args.reps):
            order = [("ours", ours), ("theirs", theirs)]
            if rep % 2:
                order.reverse()
            for who, run in order:
                if run is None:
                    continue
                (x_adv, fwd, bwd), t = timed(lambda: run(rep), device)  # noqa: B023 - called within this iteration
                acc = robust_acc(model, x_adv, y)
                if who == "ours":
                    t_ours.append(t)
                    a_ours.append(acc)
                    over.append(t / (bwd * fb + (fwd - bwd) * f))
                else:
                    t_theirs.append(t)
                    a_theirs.append(acc)
        m_ours = statistics.median(t_ours)
        if t_theirs:
            m_theirs = statistics.median(t_theirs)
            ratios = [a / b for a, b in zip(t_ours, t_theirs)]
            ratio, spread = f"{m_ours / m_theirs:.2f}", f"{min(ratios):.2f}–{max(ratios):.2f}"
            acc = f"{statistics.mean(a_ours):.4f} / {statistics.mean(a_theirs):.4f}"
        else:
            m_theirs, ratio, spread, acc = float("nan"), "—", "—", f"{statistics.mean(a_ours):.4f} / —"
        print(
            f"{label:<13} {m_ours:>10.2f} {m_theirs:>11.2f} {ratio:>6} {spread:>11} {acc:>34} {statistics.median(over):>9.2f}",
            flush=True,
        )
    if args.art and threat.norm is Norm.LINF:
        try:
            run = art_runner(model, x, y, threat, data.num_classes, device)
        except ImportError:
            print("ART not installed: pip install adversarial-robustness-toolbox")
            return
        times, accs = [], []
        for rep in range(args.reps):
            (x_adv, _, _), t = timed(lambda: run(rep), device)  # noqa: B023 - called within this iteration
            times.append(t)
            accs.append(robust_acc(model, x_adv, y))
        print(
            f"{'PGD-20 (ART)':<13} {statistics.median(times):>10.2f} {'':>11} {'':>6} {'':>11} {statistics.mean(accs):>34.4f}"
        )


if __name__ == "__main__":
    main()
