"""Robust accuracy under the configured attacks at each ε (pixel space [0,1]).

Each attack runs on the clean-correct samples (a misclassified sample is already broken); a
sample is robust at ε against an attack if the attack found no misclassified point within the
ε-ball. The ensemble is the per-sample worst case over all attacks at that ε.
"""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attacks.base import lp_norm
from ..results import Flag, Section, section
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
    """One attack at one ε.

    robust_accuracy: fraction of all n samples still robust after this attack — on its own in
    ``independent`` mode, after it and every earlier attack at this ε in ``cascade`` mode.
    success_rate: fraction of the samples it attacked that it broke. mean_perturbation: mean ‖δ‖
    (threat-model norm, pixel scale [0,1]) over the samples it broke. forward/backward_per_sample:
    model passes per attacked sample; seconds: wall time. attacked/broken: per sample."""

    attack: str
    kind: str
    single_step: bool
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
    attacked: tuple[bool, ...]
    broken: tuple[bool, ...]
    per_sample_fields: ClassVar = ("robust", "attacked", "broken")  # what the JSON reader checks (results.Section)


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
    encoded_fields: ClassVar = ("image", "adversarial")  # what the JSON reader checks (results.Section)
    sample_index_fields: ClassVar = ("index",)


@section("attacks")
@dataclass(frozen=True)
class AttacksSection(Section):
    """mode: ``independent`` (every attack on every clean-correct sample) or ``cascade`` (each
    attack only on the samples the earlier ones at that ε left robust, as AutoAttack does).
    ensemble: per ε, the fraction of samples robust against every attack at that ε *and* every
    smaller ε (an adversarial example within a smaller radius lies within the larger one too)."""

    norm: str
    mode: str
    eps: tuple[float, ...]
    runs: tuple[AttackRun, ...]
    ensemble: dict[str, float]  # format_eps(ε) → worst-case robust accuracy
    ensemble_robust: dict[str, tuple[bool, ...]]
    examples: tuple[AdversarialExample, ...] = ()
    per_sample_fields: ClassVar = ("ensemble_robust.*",)  # what the JSON reader checks (results.Section)

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
        runs: list[AttackRun] = []
        raw_ensemble: dict[float, torch.Tensor] = {}
        weakest: dict[int, tuple[torch.Tensor, str, float]] = {}  # sample → adversarial at the smallest ε
        for eps in sorted(ctx.eps):
            threat = ThreatModel(cfg.norm, eps)
            robust_all = clean_correct.clone()
            for spec in cfg.attacks:
                targets = (robust_all if cfg.ensemble == "cascade" else clean_correct).nonzero().squeeze(1)
                run = self._run_one(ctx, spec, threat, targets, clean_correct, robust_all, weakest)
                runs.append(run)
                robust_all &= ~torch.tensor(run.broken)
            raw_ensemble[eps] = robust_all
        ensemble: dict[str, float] = {}
        ensemble_robust: dict[str, tuple[bool, ...]] = {}
        carried = clean_correct.clone()
        for eps in sorted(raw_ensemble):
            carried &= raw_ensemble[eps]
            ensemble[format_eps(eps)] = float(carried.double().mean()) if n else 0.0
            ensemble_robust[format_eps(eps)] = tuple(bool(v) for v in carried.tolist())
        section_ = AttacksSection(
            norm=cfg.norm.value,
            mode=cfg.ensemble,
            eps=tuple(sorted(ctx.eps)),
            runs=tuple(runs),
            ensemble=ensemble,
            ensemble_robust=ensemble_robust,
            examples=self._examples(ctx, weakest),
        )
        ctx.flags.extend(attack_flags(section_, raw_ensemble, n))
        return section_

    @staticmethod
    def _run_one(ctx, spec, threat, targets, clean_correct, robust_all, weakest) -> AttackRun:
        cfg = ctx.config
        attack = spec.build()
        broken = torch.zeros(ctx.data.n, dtype=torch.bool)
        attacked = torch.zeros(ctx.data.n, dtype=torch.bool)
        attacked[targets] = True
        norms: list[torch.Tensor] = []
        gen = ctx.generator(f"attack:{spec.label}:{threat}")
        t0 = time.perf_counter()

        def batch(x, y, sl):
            out = attack.run(ctx.model, x, y, threat, gen)
            idx = targets[sl]
            broken[idx] = out.success.cpu()
            if out.success.any():
                delta = (out.x_adv - x)[out.success]
                norms.append(lp_norm(delta, cfg.norm).cpu())
                for j in out.success.nonzero().squeeze(1).tolist():
                    i = int(idx[j])
                    if i not in weakest or weakest[i][2] > threat.eps:
                        weakest[i] = (out.x_adv[j].detach().cpu(), spec.label, threat.eps)

        if targets.numel():
            ctx.map_batches(batch, indices=targets, description=f"{spec.label} {threat}")
        seconds = time.perf_counter() - t0
        n_att = int(targets.numel())
        robust = (robust_all if cfg.ensemble == "cascade" else clean_correct) & ~broken
        all_norms = torch.cat(norms) if norms else None
        return AttackRun(
            attack=spec.label,
            kind=type(attack).kind,
            single_step=type(attack).single_step,
            params=attack.params(),
            norm=cfg.norm.value,
            eps=threat.eps,
            robust_accuracy=float(robust.double().mean()) if ctx.data.n else 0.0,
            success_rate=float(broken.sum()) / max(n_att, 1),
            n_attacked=n_att,
            mean_perturbation=float(all_norms.mean()) if all_norms is not None else None,
            forward_per_sample=attack.counter.forward / max(n_att, 1),
            backward_per_sample=attack.counter.backward / max(n_att, 1),
            seconds=round(seconds, 4),
            robust=tuple(bool(v) for v in robust.tolist()),
            attacked=tuple(bool(v) for v in attacked.tolist()),
            broken=tuple(bool(v) for v in broken.tolist()),
        )

    @staticmethod
    def _examples(ctx, weakest) -> tuple[AdversarialExample, ...]:
        """The ``keep_examples`` broken samples with the smallest clean margin (the weakest)."""
        if not weakest or ctx.data.x[0].numel() > _MAX_EXAMPLE_NUMEL or ctx.config.keep_examples <= 0:
            return ()
        from ..geometry.margin import margin

        logits = ctx.cache["clean_logits"]
        margins = margin(logits, ctx.data.y)
        chosen = sorted(weakest, key=lambda i: float(margins[i]))[: ctx.config.keep_examples]
        advs = torch.stack([weakest[i][0] for i in chosen]).to(ctx.device)
        with torch.no_grad():
            preds = ctx.model(advs).argmax(1).cpu().tolist()
        out = []
        for i, pred in zip(chosen, preds):
            adv, label, eps = weakest[i]
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


def attack_flags(sec: AttacksSection, raw_ensemble: dict[float, torch.Tensor], n: int) -> list[Flag]:
    """Gradient-masking flags from the attack results (docs/flags.md)."""
    flags: list[Flag] = []
    by_eps: dict[float, list[AttackRun]] = {}
    for r in sec.runs:
        by_eps.setdefault(r.eps, []).append(r)
    for eps, runs in sorted(by_eps.items()):
        key = format_eps(eps)
        white = [r for r in runs if r.kind == "white-box"]
        black = [r for r in runs if r.kind != "white-box"]
        if white and black:
            # samples every white-box attack attacked and failed on, that a black-box one broke
            survived = torch.ones(n, dtype=torch.bool)
            for r in white:
                survived &= torch.tensor(r.attacked) & ~torch.tensor(r.broken)
            bb = torch.zeros(n, dtype=torch.bool)
            for r in black:
                bb |= torch.tensor(r.broken)
            count = int((survived & bb).sum())
            if count:
                flags.append(Flag("blackbox-beats-whitebox", f"at ε={key}, {count} sample(s) survived every white-box attack but were broken by {', '.join(r.attack for r in black)}: gradients may be masked"))
        single = [r for r in white if r.single_step]
        multi = [r for r in white if not r.single_step]
        if sec.mode == "independent" and single and multi:
            best_single = min(r.robust_accuracy for r in single)
            best_multi = min(r.robust_accuracy for r in multi)
            if best_single < best_multi:
                flags.append(Flag("single-step-stronger", f"at ε={key}, a single-step attack leaves {best_single:.1%} robust but the best multi-step attack {best_multi:.1%}: the loss surface may be masking gradients"))
    ordered = sorted(raw_ensemble)
    for a, b in zip(ordered, ordered[1:]):
        acc_a, acc_b = float(raw_ensemble[a].double().mean()), float(raw_ensemble[b].double().mean())
        if acc_b > acc_a:
            flags.append(Flag("non-monotone-eps", f"robust accuracy rises from {acc_a:.1%} at ε={format_eps(a)} to {acc_b:.1%} at ε={format_eps(b)} before carrying adversarial examples over: the attacks are not converging"))
    if sec.mode == "independent":
        for name in {r.attack for r in sec.runs}:
            accs = [(r.eps, r.robust_accuracy) for r in sec.runs if r.attack == name]
            accs.sort()
            for (ea, aa), (eb, ab) in zip(accs, accs[1:]):
                if ab > aa:
                    flags.append(Flag("non-monotone-eps", f"{name}: robust accuracy rises from {aa:.1%} at ε={format_eps(ea)} to {ab:.1%} at ε={format_eps(eb)}: the attack is not converging"))
    return flags
