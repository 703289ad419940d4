"""Robust accuracy under the configured attacks at each ε (pixel space [0,1]).

Each attack runs on the clean-correct samples (a misclassified sample is already broken); a
sample is robust at ε against an attack if the attack found no misclassified point within the
ε-ball. The ensemble is the per-sample worst case over all attacks at that ε.
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attacks.base import in_precision, lp_norm, predict
from ..metric_names import robust_acc_name
from ..parts import Part, lowest
from ..schema import Section, section
from ..threat import ThreatModel, format_eps
from .attack_flags import (
    MASKING_ALPHA,
    MASKING_RATE,
    BlackboxOnly,
    attack_flags,
    binomial_tail,
    blackbox_only_counts,
    min_broken_to_flag,
)
from .base import CHECKS, Check

__all__ = [
    "AttackRun",
    "AttacksSection",
    "AdversarialExample",
    "BlackboxOnly",
    "encode_tensor",
    "decode_tensor",
    "MASKING_RATE",
    "MASKING_ALPHA",
    "binomial_tail",
    "min_broken_to_flag",
]

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
    counted_fields: ClassVar = (("n_attacked", "attacked"),)
    implied_fields: ClassVar = (("broken", "attacked"),)


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
    blackbox_only: tuple[BlackboxOnly, ...] = ()  # per ε where white- and black-box attacks both ran
    preset: str | None = None  # the --attacks preset the list came from (quick, standard, paper), if any
    per_sample_fields: ClassVar = ("ensemble_robust.*",)  # what the JSON reader checks (results.Section)

    def metrics(self) -> dict[str, float]:
        out = {robust_acc_name(r.attack, r.norm, r.eps): r.robust_accuracy for r in self.runs}
        out.update({robust_acc_name("ensemble", self.norm, k): v for k, v in self.ensemble.items()})
        return out

    def outcomes(self) -> dict[str, tuple[bool, ...]]:
        """Per sample, robust (correct and not broken) for each run and for the worst case."""
        out = {robust_acc_name(r.attack, r.norm, r.eps): tuple(r.robust) for r in self.runs}
        out.update({robust_acc_name("ensemble", self.norm, k): tuple(v) for k, v in self.ensemble_robust.items()})
        return out


@CHECKS.register("attacks")
class AttacksCheck(Check):
    """Per-sample records (table ``samples``), for run r (ε ascending, then the attack list):
    ``attacked.r``, ``broken.r`` and ``norm.r`` (‖δ‖ of a success, None otherwise); extra: each
    run's pass counts and seconds, and this process's ``keep_examples`` weakest broken samples
    (lowest clean margin) with their adversarial examples. In cascade mode a sample's later attacks
    depend only on its own earlier results, so the records don't depend on batching."""

    name = "attacks"
    requires = ("clean",)
    description = "robust accuracy under the attack list at each epsilon"

    def metric_names(self, plan) -> tuple[str, ...]:
        norm = plan.config.norm.value
        names = [robust_acc_name(spec.label, norm, eps) for eps in sorted(plan.eps) for spec in plan.config.attacks]
        return tuple(names) + tuple(robust_acc_name("ensemble", norm, eps) for eps in sorted(plan.eps))

    def max_passes(self, plan) -> tuple[float, float] | None:
        """Every attack at every ε on every sample, each costing its :meth:`Attack.max_passes`:
        the upper bound where every sample is classified correctly and survives to the last
        attack of a cascade. None if an attack can't bound its cost in advance."""
        forward = backward = 0
        for spec in plan.config.attacks:
            bound = spec.build().max_passes(plan.num_classes)
            if bound is None:
                return None
            recheck = 0 if plan.config.precision == "float32" else 1  # the float32 re-check of a low-precision run
            forward += (bound[0] + recheck) * len(plan.eps)
            backward += bound[1] * len(plan.eps)
        return float(forward), float(backward)

    def compute(self, ctx) -> Part:
        cfg = ctx.config
        clean = ctx.local("clean")
        correct = torch.tensor(clean.col("correct"), dtype=torch.bool)
        columns: dict[str, torch.Tensor] = {}
        runs: list[dict] = []
        weakest = _Weakest(
            torch.tensor(clean.col("margin"), dtype=torch.float64),
            cfg.keep_examples,
            enabled=math.prod(ctx.data.input_shape) <= _MAX_EXAMPLE_NUMEL,
        )
        for eps in sorted(ctx.eps):
            threat = ThreatModel(cfg.norm, eps)
            robust_all = correct.clone()
            for spec in cfg.attacks:
                rows = (robust_all if cfg.ensemble == "cascade" else correct).nonzero().squeeze(1)
                r = len(runs)
                broken, norms, info = self._run_one(ctx, spec, threat, rows, weakest)
                attacked = torch.zeros_like(correct)
                attacked[rows] = True
                columns.update({f"attacked.{r}": attacked, f"broken.{r}": broken, f"norm.{r}": norms})
                runs.append(info)
                robust_all &= ~broken
        part = Part(extra={"runs": runs, "examples": self._examples(ctx, weakest)})
        part.add("samples", ctx.positions, **{k: _none_for_nan(v) if k.startswith("norm.") else v for k, v in columns.items()})
        return part

    @staticmethod
    def _run_one(ctx, spec, threat, rows, weakest) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Attack this process's samples at local ``rows``: (broken, ‖δ‖ or NaN, counts).

        With ``--precision`` bfloat16/float16 the attack runs on the model under autocast, and a
        sample counts as broken only if the float32 model misclassifies its adversarial example
        (one more forward, counted): a low-precision artefact never lowers the robust accuracy."""
        attack = spec.build()
        model = in_precision(ctx.model, ctx.config.precision, ctx.device)
        attack.progress = ctx.within  # the bar moves per attack iteration, not once per batch
        n = int(ctx.positions.numel())
        broken = torch.zeros(n, dtype=torch.bool)
        norms = torch.full((n,), math.nan, dtype=torch.float64)
        targets = ctx.positions[rows]
        tag = f"attack:{spec.label}:{threat}"
        t0 = time.perf_counter()

        def batch(x, y, sl):
            out = attack.run(model, x, y, threat, attack_rng(ctx, attack, tag, targets[sl]))
            local = rows[sl]
            if model is ctx.model:
                success = out.success.cpu()
            else:  # the float32 verdict on the low-precision attack's point
                success = (predict(ctx.model, out.x_adv, attack.counter).argmax(1) != y).cpu()
            broken[local] = success
            if success.any():
                hit = success.nonzero().squeeze(1)
                norms[local[hit]] = lp_norm((out.x_adv - x)[hit.to(x.device)], ctx.config.norm).double().cpu()
                weakest.offer(local[hit], out.x_adv[hit.to(x.device)], spec.label, threat.eps)

        if targets.numel():
            ctx.map_batches(batch, indices=targets, description=f"{spec.label} {threat}")
        info = {
            "forward": int(attack.counter.forward),
            "backward": int(attack.counter.backward),
            "seconds": round(time.perf_counter() - t0, 4),
        }
        return broken, norms, info

    @staticmethod
    def _examples(ctx, weakest: _Weakest) -> list[dict]:
        """This process's weakest broken samples: candidates for the section's examples."""
        chosen = weakest.chosen()
        if not chosen:
            return []
        advs = torch.stack([weakest.kept[i][0] for i in chosen]).to(ctx.device)
        with torch.no_grad():
            preds = ctx.model(advs).argmax(1).cpu().tolist()
        pos = ctx.positions[torch.tensor(chosen)]
        images = ctx.data.batch(pos)
        out = []
        for j, (i, pred) in enumerate(zip(chosen, preds)):
            adv, label, eps = weakest.kept[i]
            out.append(
                {
                    "position": int(pos[j]),
                    "margin": float(weakest.margins[i]),
                    "label": int(ctx.data.y[pos[j]]),
                    "adversarial_prediction": int(pred),
                    "attack": label,
                    "eps": eps,
                    "shape": list(adv.shape),
                    "image": encode_tensor(images[j]),
                    "adversarial": encode_tensor(adv),
                }
            )
        return out

    def combine(self, tables, extras, info) -> AttacksSection:
        cfg = info.config
        n = info.n
        t = tables["samples"]
        clean_correct = info.clean().tensor("correct", torch.bool)
        runs: list[AttackRun] = []
        raw_ensemble: dict[float, torch.Tensor] = {}
        r = 0
        for eps in sorted(info.eps):
            robust_all = clean_correct.clone()
            for spec in cfg.attacks:
                attack = spec.build()
                attacked = t.tensor(f"attacked.{r}", torch.bool)
                broken = t.tensor(f"broken.{r}", torch.bool)
                norms = t.tensor(f"norm.{r}")[broken]
                counts = [e["runs"][r] for e in extras if e.get("runs")]
                n_att = int(attacked.sum())
                robust = (robust_all if cfg.ensemble == "cascade" else clean_correct) & ~broken
                runs.append(
                    AttackRun(
                        attack=spec.label,
                        kind=type(attack).kind,
                        single_step=type(attack).single_step,
                        params=attack.params(),
                        norm=cfg.norm.value,
                        eps=eps,
                        robust_accuracy=float(robust.double().mean()) if n else 0.0,
                        success_rate=float(broken.sum()) / max(n_att, 1),
                        n_attacked=n_att,
                        mean_perturbation=float(norms.mean()) if norms.numel() else None,
                        forward_per_sample=sum(c["forward"] for c in counts) / max(n_att, 1),
                        backward_per_sample=sum(c["backward"] for c in counts) / max(n_att, 1),
                        seconds=max((c["seconds"] for c in counts), default=0.0),
                        robust=tuple(bool(v) for v in robust.tolist()),
                        attacked=tuple(bool(v) for v in attacked.tolist()),
                        broken=tuple(bool(v) for v in broken.tolist()),
                    )
                )
                robust_all &= ~broken
                r += 1
            raw_ensemble[eps] = robust_all
        ensemble: dict[str, float] = {}
        ensemble_robust: dict[str, tuple[bool, ...]] = {}
        carried = clean_correct.clone()
        for eps in sorted(raw_ensemble):
            carried &= raw_ensemble[eps]
            ensemble[format_eps(eps)] = float(carried.double().mean()) if n else 0.0
            ensemble_robust[format_eps(eps)] = tuple(bool(v) for v in carried.tolist())
        candidates = lowest((c for e in extras for c in e.get("examples", [])), cfg.keep_examples)
        section_ = AttacksSection(
            norm=cfg.norm.value,
            mode=cfg.ensemble,
            eps=tuple(sorted(info.eps)),
            runs=tuple(runs),
            ensemble=ensemble,
            ensemble_robust=ensemble_robust,
            examples=tuple(
                AdversarialExample(
                    index=c["position"],
                    label=c["label"],
                    adversarial_prediction=c["adversarial_prediction"],
                    attack=c["attack"],
                    eps=c["eps"],
                    clean_margin=c["margin"],
                    shape=tuple(c["shape"]),
                    image=c["image"],
                    adversarial=c["adversarial"],
                )
                for c in candidates
            ),
            preset=cfg.preset,
            blackbox_only=blackbox_only_counts(tuple(runs), n),
        )
        info.flags.extend(attack_flags(section_, raw_ensemble, n))
        return section_


def attack_rng(ctx, attack, tag: str, positions: torch.Tensor):
    """Per-sample streams for an attack that declares ``per_sample_rng`` (all built-ins); for an
    older plugin attack that draws from a torch.Generator, one seeded from (seed, tag, the batch's
    first dataset index and size): reproducible for a given batching only (docs/plugins.md)."""
    if getattr(type(attack), "per_sample_rng", False):
        return ctx.sample_rng(tag, positions)
    first = int(ctx.data.dataset_indices[positions[0]]) if positions.numel() else 0
    return ctx.generator(f"{tag}:batch:{first}:{positions.numel()}")


def _none_for_nan(values: torch.Tensor) -> list:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


class _Weakest:
    """Adversarial examples of the weakest broken samples (lowest clean margin; ties: lower
    position) at the smallest ε that broke them, never more than ``keep`` held at once."""

    def __init__(self, margins: torch.Tensor, keep: int, enabled: bool) -> None:
        self.margins, self.keep, self.enabled = margins, int(keep), enabled and keep > 0
        self.kept: dict[int, tuple[torch.Tensor, str, float]] = {}
        self.seen: set[int] = set()

    def offer(self, rows: torch.Tensor, x_adv: torch.Tensor, label: str, eps: float) -> None:
        if not self.enabled:
            return
        for j, i in enumerate(rows.tolist()):
            if i in self.seen:  # broken at a smaller ε (runs go by ascending ε) or by an earlier attack
                continue
            self.seen.add(i)
            self.kept[i] = (x_adv[j].detach().float().cpu(), label, eps)
        for i in sorted(self.kept, key=lambda i: (float(self.margins[i]), i))[self.keep :]:
            del self.kept[i]

    def chosen(self) -> list[int]:
        return sorted(self.kept, key=lambda i: (float(self.margins[i]), i))
