"""Cost of certification relative to PGD-20 on the same images, and the bracket it gives.

For a model and N images, at each ε: the wall time per image of PGD-20 (robaudit's, the `quick`
preset's attack) and of each bound method (IBP, CROWN-IBP, CROWN, α-CROWN; exact with --exact),
the ratio method ÷ PGD-20, and the certified and PGD-robust fractions. Each timing is the median
of --reps runs; the first run of each is a warm-up that is not counted.

    python benchmarks/bench_certify.py                       # the embedded demo CNN, 100 demo images
    python benchmarks/bench_certify.py --model M.safetensors --dataset fashion-mnist --n 200 --eps 0.01,0.02
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _time(fn, reps: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    from robaudit.attacks.pgd import PGD
    from robaudit.certify import ThreatSet, margin_spec, spec_bounds, trace
    from robaudit.cli.demo import DEMO_MODEL
    from robaudit.data import load_dataset
    from robaudit.data.registry import DataRequest
    from robaudit.models import load_model
    from robaudit.threat import Norm, ThreatModel, parse_eps_list

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEMO_MODEL))
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", default="0.005,0.01,0.02")
    ap.add_argument("--norm", default="linf")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--methods", default="ibp,crown-ibp,crown,alpha-crown")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model, trust_checkpoint=False).model.eval()
    data = load_dataset(args.dataset, DataRequest(split="test", n=args.n))
    x, y = data.batch(torch.arange(data.n)), data.y
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    graph = trace(model, tuple(x.shape[1:]))
    print(
        f"model {args.model}: {graph.describe()}; {graph.relu_units()} ReLU units; "
        f"{int(correct.sum())}/{data.n} clean-correct images, {args.threads} thread(s), batches of {args.batch}"
    )
    norm = Norm.parse(args.norm)
    header = f"{'eps':>7} {'method':>12} {'s/image':>9} {'÷ PGD-20':>9} {'certified':>10} {'PGD-robust':>11}"
    print(header)
    for eps in parse_eps_list(args.eps):

        def pgd(eps=eps):
            robust = []
            for k in range(0, len(y), args.batch):
                out = PGD(steps=20).run(
                    model,
                    x[k : k + args.batch],
                    y[k : k + args.batch],
                    ThreatModel(norm, eps),
                    torch.Generator().manual_seed(0),
                )
                robust.append(~out.success)
            return torch.cat(robust)

        t_pgd, robust = _time(pgd, args.reps)
        per_pgd = t_pgd / len(y)
        print(f"{eps:>7g} {'pgd-20':>12} {per_pgd:>9.4f} {1.0:>9.2f} {'':>10} {float(robust.double().mean()):>11.3f}")
        for method in args.methods.split(","):
            bound, inter = ("crown", "ibp") if method == "crown-ibp" else (method, None)

            def certify(bound=bound, inter=inter, eps=eps):
                cert = []
                with torch.no_grad():
                    for k in range(0, len(y), args.batch):
                        xb, yb = x[k : k + args.batch], y[k : k + args.batch]
                        low, _ = spec_bounds(
                            graph,
                            ThreatSet(xb, eps, norm.value),
                            margin_spec(yb, graph.num_classes),
                            bound,
                            intermediate=inter,
                        )
                        cert.append(low.min(1).values > 0)
                return torch.cat(cert)

            t, cert = _time(certify, args.reps)
            per = t / len(y)
            bad = int((cert & ~robust).sum())
            note = f"  ({bad} certified but broken: a bug!)" if bad else ""
            print(
                f"{eps:>7g} {method:>12} {per:>9.4f} {per / per_pgd:>9.1f} {float(cert.double().mean()):>10.3f} "
                f"{float(robust.double().mean()):>11.3f}{note}"
            )


if __name__ == "__main__":
    main()
