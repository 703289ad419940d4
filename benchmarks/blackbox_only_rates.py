"""Measure: how many white-box survivors a black-box attack breaks, on models whose gradients work
and on masked ones — the calibration of the `blackbox-beats-whitebox` flag (docs/flags.md).

For each model and attack list (in cascade: the white-box attacks first, then Square with its full
5,000 queries) on the first ``--n`` Fashion-MNIST test images, prints m (samples that survived every
white-box attack and that Square attacked), k (those Square broke), k/m, the k the flag needs, and
whether it was raised. Models: the embedded demo model (natural, at small ε where many samples
survive), any hardened checkpoints given with ``--model`` (at ε = 0.1), and the demo model with
masked gradients (input quantized to 8 levels; logits ×10⁴) at ε = 0.1.

Run:  python benchmarks/blackbox_only_rates.py [--n 500] [--model cure.safetensors ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from robaudit.cli.demo import DEMO_MODEL
from robaudit.config import ScanConfig, parse_attack_list
from robaudit.data import DataRequest, load_dataset
from robaudit.engine import run_scan
from robaudit.models import load_model
from robaudit.models.spec import LoadedModel, ModelInfo

ATTACK_LISTS = {"pgd-20 → square": "pgd,square", "standard (apgd-ce → apgd-t → square)": "standard"}


class Masked(nn.Module):
    def __init__(self, inner: nn.Module, kind: str):
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x):
        if self.kind == "quantized":
            x = torch.round(x * 8) / 8
        z = self.inner(x)
        return z * 1e4 if self.kind == "scaled" else z


def measure(name: str, model: nn.Module, data, eps: float, attacks: str) -> None:
    loaded = LoadedModel(model.eval(), ModelInfo(path=name, format="in-memory", sha256=""))
    config = ScanConfig(
        eps=(eps,),
        attacks=parse_attack_list(attacks),
        ensemble="cascade",
        checks=("clean", "attacks"),
        device="cpu",
        batch_size=256,
    )
    result = run_scan(loaded, data, config, command_line="blackbox_only_rates")
    for c in result.section("attacks").blackbox_only:
        rate = f"{c.broken / c.attacked:.1%}" if c.attacked else "—"
        print(
            f"{name:<28} {attacks:<10} ε={eps:<5g} m={c.attacked:<4} k={c.broken:<4} k/m={rate:<6} "
            f"needed={c.needed} flagged={c.flagged}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--model", action="append", default=[], help="hardened checkpoints to measure at ε = 0.1")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    data = load_dataset("fashion-mnist", DataRequest(split="test", n=args.n, data_dir=args.data_dir))
    demo = load_model(str(DEMO_MODEL)).model
    for attacks in ATTACK_LISTS.values():
        for eps in (0.01, 0.02):
            measure("demo (natural)", demo, data, eps, attacks)
        for path in args.model:
            measure(Path(path).name, load_model(path).model, data, 0.1, attacks)
        for kind in ("quantized", "scaled"):
            measure(f"demo, {kind} (masked)", Masked(demo, kind), data, 0.1, attacks)


if __name__ == "__main__":
    main()
