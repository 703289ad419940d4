"""Natural vs adversarially fine-tuned model on real Fashion-MNIST: the input-space geometry moves
the way the papers say (Yu et al. 000 §4.3; Moosavi-Dezfooli et al. 002 §2; ICML 2020 003 §4.2).

The robust model is the embedded demo model after one epoch of PGD adversarial fine-tuning
(ℓ∞ ε = 0.1, PGD-5 with robaudit's PGD, 6000 training images, Adam 1e-3), cached in the system
temp directory so later runs skip the ~30 s of training. Both models are scanned on the first 100
test images; the test prints every figure next to the papers'.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import robaudit.checks.curvature as curvature_mod
import robaudit.checks.indicator  # noqa: F401  (register)
import robaudit.checks.jacobian  # noqa: F401  (register)
from robaudit.attacks.pgd import PGD
from robaudit.config import ScanConfig, parse_attack_list
from robaudit.data import load_dataset
from robaudit.data.spec import DataRequest
from robaudit.engine import run_scan
from robaudit.models import load_model
from robaudit.models.spec import LoadedModel
from robaudit.models.wrapper import NormalizedModel
from robaudit.threat import Norm, ThreatModel

DEMO = Path(__file__).resolve().parents[1] / "robaudit/models/assets/demo_fashion_mnist_small_cnn.safetensors"
RECIPE = "pgd-ft v1: linf eps=0.1, PGD-5 (alpha=2.5eps/5, random start), 6000 train images, 1 epoch, Adam lr=1e-3, batch 128, seed 0"
EPS = 0.1


def _adversarial_finetune(inner: nn.Module, data_dir: Path) -> nn.Module:
    net = copy.deepcopy(inner)
    train = load_dataset("fashion-mnist", DataRequest(split="train", n=6000, data_dir=str(data_dir)))
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    attack, threat = PGD(steps=5), ThreatModel(Norm.LINF, EPS)
    perm = torch.randperm(train.n, generator=g)
    for i in range(0, train.n, 128):
        idx = perm[i : i + 128]
        x, y = train.x[idx], train.y[idx]
        net.eval()
        x_adv = attack.run(net, x, y, threat, g).x_adv
        net.train()
        loss = nn.functional.cross_entropy(net(x_adv), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _robust_model(natural: LoadedModel, data_dir: Path) -> LoadedModel:
    key = hashlib.sha256(f"{natural.info.sha256}|{RECIPE}|{torch.__version__}".encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "robaudit-test-cache" / f"demo_fmnist_pgdft_{key}.pt"
    net = copy.deepcopy(natural.model.inner)
    if cache.exists():
        net.load_state_dict(torch.load(cache, weights_only=True))
    else:
        net = _adversarial_finetune(natural.model.inner, data_dir)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save(net.state_dict(), tmp)
        tmp.replace(cache)
    return LoadedModel(NormalizedModel(net.eval()), natural.info)


PAPER = {
    "jacobian.margin.l1_mean": "Yu: ~500 nat / ~50 rob (MNIST)",
    "jacobian.margin.zero_fraction_mean": "Yu: 1.1% nat / 54.0% rob",
    "indicator.margin_hessian_near_zero_fraction_mean": "Yu: 65.6% nat / 97.1% rob (eigvals)",
    "curvature.hz_median": "002 Fig.10: ||Hz|| falls in fine-tuning",
    "curvature.frobenius_median": "002 Fig.10: ||H||_F falls",
    "curvature.lambda_max_median": "002 Fig.2: profile shrinks",
    "curvature.exact.lambda_max_median": "",
    "curvature.alignment_mean": "002 R3: 0.43 nat / 0.90 rob",
    "curvature.exact.alignment_mean": "",
    "indicator.radius_linf_median": "Yu Eq.9: larger = more robust",
    "margins.median_abs": "003 Fig.4: nearer 0 for rob",
    "margins.std": "003 Fig.4: concentrated for rob",
}


@pytest.mark.slow
def test_adversarial_finetuning_flattens_input_geometry(fashion_available, monkeypatch, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        natural = load_model(str(DEMO))
        robust = _robust_model(natural, fashion_available)
        t_train = time.perf_counter() - t0
        test = load_dataset("fashion-mnist", DataRequest(split="test", n=100, data_dir=str(fashion_available)))
        monkeypatch.setattr(curvature_mod.CurvatureCheck, "k", 12)
        cfg = ScanConfig(
            eps=(EPS,),
            attacks=parse_attack_list("fgsm"),
            device="cpu",
            checks=("jacobian", "curvature", "indicator", "margins"),
        )
        figures: dict[str, dict[str, float]] = {}
        for name, loaded in (("natural", natural), ("robust", robust)):
            res = run_scan(loaded, test, cfg, command_line="test")
            m = dict(res.metrics())
            margins = torch.tensor(res.section("margins").margins)
            m["margins.median_abs"] = float(margins.abs().median())
            m["margins.std"] = float(margins.std())
            pgd = PGD(steps=20).run(
                loaded.model, test.x, test.y, ThreatModel(Norm.LINF, EPS), torch.Generator().manual_seed(1)
            )
            m["robust_acc.pgd20@0.1"] = float((~pgd.success).double().mean())
            m["seconds"] = sum(res.timings.values())
            print(name, res.timings)
            figures[name] = m
        nat, rob = figures["natural"], figures["robust"]
        with capsys.disabled():
            print(f"\n[geometry-real] robust model ready in {t_train:.1f}s ({RECIPE})")
            print(f"{'metric':52s} {'natural':>11s} {'robust':>11s}   paper")
            for k in [
                "clean.accuracy",
                "robust_acc.pgd20@0.1",
                *PAPER,
                "jacobian.ce.l1_mean",
                "curvature.exact.frobenius_median",
                "curvature.exact.hz_median",
                "indicator.mean_lambda_abs_max",
                "indicator.spearman_linf",
                "indicator.theorem1.finite_difference.fraction_within_bracket",
                "seconds",
            ]:
                print(f"{k:52s} {nat.get(k, float('nan')):11.4g} {rob.get(k, float('nan')):11.4g}   {PAPER.get(k, '')}")
        # the fine-tune worked
        assert rob["robust_acc.pgd20@0.1"] > nat["robust_acc.pgd20@0.1"] + 0.2
        # Yu et al.: smaller Jacobians, more near-zero entries
        assert rob["jacobian.margin.l1_mean"] < 0.6 * nat["jacobian.margin.l1_mean"]
        assert rob["jacobian.margin.zero_fraction_mean"] > nat["jacobian.margin.zero_fraction_mean"]
        # Moosavi-Dezfooli et al.: lower curvature along CURE's (gradient-sign) direction
        assert rob["curvature.hz_median"] < 0.5 * nat["curvature.hz_median"]
        # ICML 2020: margins concentrate nearer zero
        assert rob["margins.median_abs"] < nat["margins.median_abs"]
    finally:
        torch.set_num_threads(threads)
