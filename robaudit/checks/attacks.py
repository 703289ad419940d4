"""Robust accuracy under the configured attacks at each ε (pixel space [0,1]).

Each attack runs on the clean-correct samples (a misclassified sample is already broken); a
sample is robust at ε against an attack if the attack found no misclassified point within the
ε-ball. The ensemble is the per-sample worst case over all attacks at that ε.
"""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import torch

from ..attacks.base import lp_norm
from ..results import Section, section
from ..threat import ThreatModel, format_eps
from .base import CHECKS, Check

__all__ = ["AttackRun", "AttacksSection", "AdversarialExample", "encode_tensor", "decode_tensor"]

_MAX_EXAMPLE_NUMEL = 3 * 64 * 64  # keep adversarial examples only for inputs up to this size


def encode_tensor(t: torch.Tensor) -> str:
    """float32 little-endian bytes as base64 (lossless; adversarial examples are never quantized)."""
    return base64.b64encode(t.detach().float().cpu().contiguous().numpy().astype("<f4").tobytes()).decode()


def decode_tensor(text: str, shape: tuple[int, ...]) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype="<f4").copy()).reshape(shape)


@dataclass(frozen=True)
class AttackRun:
    """One attack at one ε. robust_accuracy: fraction of all n samples correct and not broken.
    success_rate: fraction of the clean-correct samples the attack broke. mean_perturbation: mean
    ‖δ‖ (in the threat model's norm, pixel scale) over broken samples. forward/backward_per_sample:
    model passes per attacked sample; seconds: wall time."""

    attack: str
    params: dict
    norm: str
    eps: float
    robust_accuracy: float
    success_rate: float
    n_attacked: int
    mean_perturbation: float | None
    forward_per_sample: float
    backward_per_sample: float
    seconds: float
    robust: tuple[bool, ...]


@dataclass(frozen=True)
class AdversarialExample:
    """A weak sample's adversarial example at ``eps``: images as float32 base64 (shape ``shape``)."""

    index: int
    label: int
    adversarial_prediction: int
    attack: str
    eps: float
    clean_margin: float
    shape: tuple[int, ...]
    image: str
    adversarial: str


@section("attacks")
@dataclass(frozen=True)
class AttacksSection(Section):
    norm: str
    eps: tuple[float, ...]
    runs: tuple[AttackRun, ...]
    ensemble: dict[str, float]  # format_eps(ε) → worst-case robust accuracy
    ensemble_robust: dict[str, tuple[bool, ...]]
    examples: tuple[AdversarialExample, ...] = ()

    def metrics(self) -> dict[str, float]:
        out = {f"robust_acc.{r.attack}.{r.norm}@{format_eps(r.eps)}": r.robust_accuracy for r in self.runs}
        out.update({f"robust_acc.ensemble.{self.norm}@{k}": v for k, v in self.ensemble.items()})
        return out


@CHECKS.register("attacks")
class AttacksCheck(Check):
    name = "attacks"
    requires = ("clean",)
    description = "robust accuracy under the attack list at each epsilon"

    def run(self, ctx) -> AttacksSection:
        cfg = ctx.config
        n = ctx.data.n
        clean_correct = torch.tensor(ctx.sections["clean"].correct, dtype=torch.bool)
        targets = clean_correct.nonzero().squeeze(1)
        runs: list[AttackRun] = []
        ensemble: dict[str, float] = {}
        ensemble_robust: dict[str, tuple[bool, ...]] = {}
        worst_adv: dict[int, tuple[torch.Tensor, str, float]] = {}  # smallest ε that broke it
        for eps in ctx.eps:
            threat = ThreatModel(cfg.norm, eps)
            robust_all = clean_correct.clone()
            for spec in cfg.attacks:
                attack = spec.build()
                robust = clean_correct.clone()
                norms: list[torch.Tensor] = []
                gen = ctx.generator(f"attack:{spec.label}:{threat}")
                t0 = time.perf_counter()

                def batch(x, y, sl, attack=attack, robust=robust, norms=norms, gen=gen, eps=eps, label=spec.label):
                    out = attack.run(ctx.model, x, y, threat, gen)
                    idx = targets[sl]
                    robust[idx] = ~out.success.cpu()
                    if out.success.any():
                        delta = (out.x_adv - x)[out.success]
                        norms.append(lp_norm(delta, cfg.norm).cpu())
                        for j in out.success.nonzero().squeeze(1).tolist():
                            i = int(idx[j])
                            if i not in worst_adv or worst_adv[i][2] > eps:
                                worst_adv[i] = (out.x_adv[j].detach().cpu(), label, eps)

                ctx.map_batches(batch, indices=targets, description=f"{spec.label} {threat}")
                seconds = time.perf_counter() - t0
                attacked = max(int(targets.numel()), 1)
                all_norms = torch.cat(norms) if norms else None
                runs.append(
                    AttackRun(
                        attack=spec.label,
                        params=attack.params(),
                        norm=cfg.norm.value,
                        eps=eps,
                        robust_accuracy=float(robust.float().mean()) if n else 0.0,
                        success_rate=float((clean_correct & ~robust).sum()) / attacked,
                        n_attacked=int(targets.numel()),
                        mean_perturbation=float(all_norms.mean()) if all_norms is not None else None,
                        forward_per_sample=attack.counter.forward / attacked,
                        backward_per_sample=attack.counter.backward / attacked,
                        seconds=round(seconds, 4),
                        robust=tuple(bool(v) for v in robust.tolist()),
                    )
                )
                robust_all &= robust
            key = format_eps(eps)
            ensemble[key] = float(robust_all.float().mean()) if n else 0.0
            ensemble_robust[key] = tuple(bool(v) for v in robust_all.tolist())
        return AttacksSection(
            norm=cfg.norm.value,
            eps=tuple(ctx.eps),
            runs=tuple(runs),
            ensemble=ensemble,
            ensemble_robust=ensemble_robust,
            examples=self._examples(ctx, worst_adv),
        )

    @staticmethod
    def _examples(ctx, worst_adv) -> tuple[AdversarialExample, ...]:
        """The ``keep_examples`` broken samples with the smallest clean margin (the weakest)."""
        if not worst_adv or ctx.data.x[0].numel() > _MAX_EXAMPLE_NUMEL or ctx.config.keep_examples <= 0:
            return ()
        from ..geometry.margin import margin

        logits = ctx.cache["clean_logits"]
        margins = margin(logits, ctx.data.y)
        chosen = sorted(worst_adv, key=lambda i: float(margins[i]))[: ctx.config.keep_examples]
        advs = torch.stack([worst_adv[i][0] for i in chosen]).to(ctx.device)
        with torch.no_grad():
            preds = ctx.model(advs).argmax(1).cpu().tolist()
        out = []
        for i, pred in zip(chosen, preds):
            adv, label, eps = worst_adv[i]
            out.append(
                AdversarialExample(
                    index=int(i),
                    label=int(ctx.data.y[i]),
                    adversarial_prediction=int(pred),
                    attack=label,
                    eps=eps,
                    clean_margin=float(margins[i]),
                    shape=tuple(adv.shape),
                    image=encode_tensor(ctx.data.x[i]),
                    adversarial=encode_tensor(adv),
                )
            )
        return tuple(out)
