"""Check ``surfaces``: decision and loss surfaces in input space (Yu et al., 000 §3; Moosavi-Dezfooli
et al., 002 Fig. 1/3).

For the :data:`N_SAMPLES` clean-correct samples with the smallest margin, on planes
``x + a·u + b·v`` (pixel space [0,1], **not clipped** to [0,1], as in the papers):

==============  ======================================================================  ===============
plane           u (first axis, grid rows)                                                v
==============  ======================================================================  ===============
random          a random direction                                                       random
fgsm            FGSM's step direction on the cross-entropy (sign(∇ℓ) under ℓ∞, ∇ℓ/‖∇ℓ‖₂    random
                under ℓ2)
least_likely    x_adv − x of the iterative least-likely-class attack at ε_max              random
cw              x_adv − x of C&W-ℓ2's minimal adversarial example                         random
deepfool        x_adv − x of DeepFool-ℓ2 (the normal to the nearest linearized boundary)  random
==============  ======================================================================  ===============

**Normalization.** Every direction has unit norm **in the threat model's norm** (ℓ∞ or ℓ2), so
``a`` and ``b`` are perturbation sizes on the scale of ε: along each axis the ε-ball's boundary
sits at ±ε. The grid spans ``±EXTENT_FACTOR·ε_max`` (default ±2ε_max) in :data:`STEPS` ×
:data:`STEPS` points (default 21×21; the centre, index STEPS//2, is the sample itself).
Random directions are Rademacher (±1) under ℓ∞ and Gaussian under ℓ2; v is orthogonalized
against u (Euclidean inner product) and then renormalized. One random v per sample, shared by all
its planes. Where an attack finds nothing (C&W, DeepFool), the direction falls back to the
gradient of the C&W margin loss (``source`` says which).

Each plane holds grids of the margin ``L = Z_y − max_{i≠y} Z_i`` (logits; L = 0 is the decision
boundary) and of the cross-entropy (nats), rows along u and columns along v; the DeepFool plane
also the predicted class per point (002 Fig. 1). Statistics per plane: the smallest margin and the
fraction of misclassified points among grid points whose perturbation ``a·u + b·v`` lies inside
the ε_max-ball (exact norm of the combination), and the distance along u (b = 0) to the first
point with L ≤ 0 on either side (None if none within the extent). Every grid is evaluated in
batched forward passes (:func:`robaudit.geometry.surface_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attacks.base import LOSSES, input_gradient, lp_norm
from ..attacks.cw import CarliniWagnerL2
from ..attacks.deepfool import DeepFool
from ..attacks.least_likely import LeastLikely
from ..geometry.margin import cross_entropy, margin
from ..geometry.surfaces import surface_grid
from ..parts import Part, lowest
from ..rng import normal, signs
from ..schema import Section, from_jsonable, section, to_jsonable
from ..threat import Norm, ThreatModel
from .base import CHECKS, Check
from .jacobian import lowest_margin_correct

__all__ = [
    "N_SAMPLES",
    "STEPS",
    "EXTENT_FACTOR",
    "PLANES",
    "SurfacePlane",
    "SurfaceSample",
    "SurfacesSection",
    "SurfacesCheck",
]

N_SAMPLES = 2
STEPS = 21
EXTENT_FACTOR = 2.0
PLANES = ("random", "fgsm", "least_likely", "cw", "deepfool")


def _round(v: float) -> float:
    return float(f"{v:.5g}")


@dataclass(frozen=True)
class SurfacePlane:
    """One plane through a sample. ``u``/``v``: direction names; ``source``: how u was obtained.
    ``margin`` (logits) and ``loss`` (nats): grids [steps][steps], row i ↔ a = axis[i] along u,
    column j ↔ b = axis[j] along v. ``predictions``: predicted class grid (DeepFool plane only).
    ``min_margin_within_eps`` / ``fraction_misclassified_within_eps``: over grid points inside
    the ε_max-ball; ``boundary_distance_u``: |a| of the nearest point with L ≤ 0 on the u axis."""

    name: str
    u: str
    v: str
    source: str
    margin: tuple[tuple[float, ...], ...]
    loss: tuple[tuple[float, ...], ...]
    predictions: tuple[tuple[int, ...], ...] | None
    min_margin_within_eps: float
    fraction_misclassified_within_eps: float
    boundary_distance_u: float | None


@dataclass(frozen=True)
class SurfaceSample:
    """A sample (dataset ``index``, ``label``, clean margin L(x) in logits) and its planes."""

    index: int
    label: int
    margin: float
    planes: tuple[SurfacePlane, ...]


@section("surfaces")
@dataclass(frozen=True)
class SurfacesSection(Section):
    """Input-space surfaces, pixel space [0,1], not clipped. ``direction_norm``: every direction
    has unit norm in it (the threat norm); ``axis``: the coordinates a = b (same for both axes),
    ``extent`` = EXTENT_FACTOR·``eps``; ``samples``: the lowest-margin correct samples."""

    norm: str
    direction_norm: str
    eps: float
    extent: float
    steps: int
    axis: tuple[float, ...]
    clipped: bool
    samples: tuple[SurfaceSample, ...]
    aligned_fields: ClassVar = (
        (  # what the JSON reader checks (results.Section): steps × steps grids
            "axis",
            *(f"samples.*.planes.*.{grid}{rows}" for grid in ("margin", "loss", "predictions") for rows in ("", ".*")),
        ),
    )
    finite_fields: ClassVar = ("axis.*",)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in PLANES:
            planes = [p for s in self.samples for p in s.planes if p.name == name]
            if planes:
                out[f"surfaces.{name}.fraction_misclassified_within_eps"] = sum(
                    p.fraction_misclassified_within_eps for p in planes
                ) / len(planes)
                out[f"surfaces.{name}.min_margin_within_eps"] = sum(p.min_margin_within_eps for p in planes) / len(planes)
        return out

    def metric_names(self) -> tuple[str, ...]:
        return SURFACE_METRICS


SURFACE_METRICS = tuple(
    f"surfaces.{name}.{stat}" for name in PLANES for stat in ("fraction_misclassified_within_eps", "min_margin_within_eps")
)


def _unit(v: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-sample unit vectors in ``norm`` (zero rows stay zero)."""
    n = lp_norm(v, norm).clamp_min(1e-30)
    return v / n.view(-1, *([1] * (v.dim() - 1)))


def _orthogonalize(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    vf, uf = v.flatten(1), u.flatten(1)
    coef = (vf * uf).sum(1) / (uf * uf).sum(1).clamp_min(1e-30)
    return v - coef.view(-1, *([1] * (v.dim() - 1))) * u


def _random(shape, norm: Norm, gen, device) -> torch.Tensor:
    """A random direction per sample (Rademacher under ℓ∞, Gaussian under ℓ2), unit in ``norm``;
    ``gen`` a SampleRNG (one stream per sample) or a torch.Generator."""
    r = signs(shape, gen, device) if norm is Norm.LINF else normal(shape, gen, device)
    return _unit(r, norm)


def _nested(t: torch.Tensor, cast=_round) -> tuple[tuple, ...]:
    return tuple(tuple(cast(v) for v in row) for row in t.detach().double().cpu().tolist())


class _Record:
    """A surface function that returns the margin and keeps every logit row (one forward per plane)."""

    def __init__(self):
        self.logits: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.logits.append(logits.detach())
        return margin(logits, y)


@CHECKS.register("surfaces")
class SurfacesCheck(Check):
    name = "surfaces"
    requires = ("clean",)
    description = "decision and loss surfaces along random and adversarial directions (Yu et al.; Moosavi-Dezfooli et al.)"

    def metric_names(self, plan) -> tuple[str, ...]:
        return SURFACE_METRICS

    n_samples: int = N_SAMPLES
    steps: int = STEPS
    extent_factor: float = EXTENT_FACTOR

    def max_passes(self, plan) -> tuple[float, float]:
        """Per surface sample (at most ``n_samples`` of the ``plan.n``): two input gradients (C&W
        margin, CE), the least-likely attack (a forward, ``steps`` gradients, a forward), C&W-ℓ2
        (binary_search_steps × max_iterations gradients), DeepFool-ℓ2, and steps² forwards per
        plane."""
        from .cost import deepfool_passes, spread

        ll, cw = LeastLikely(), CarliniWagnerL2()
        df_forward, df_backward = deepfool_passes(DeepFool(), plan.num_classes)
        cw_grads = int(cw.binary_search_steps) * int(cw.max_iterations)
        backward = 2 + int(ll.steps) + cw_grads + df_backward
        forward = 2 + int(ll.steps) + 2 + cw_grads + df_forward + len(PLANES) * int(self.steps) ** 2
        return spread((forward, backward), int(self.n_samples), plan.n)

    def _directions(
        self, ctx, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float, gen
    ) -> dict[str, tuple[torch.Tensor, list[str]]]:
        """Per plane, (u [S, ...] unit in ``norm``, per-sample source notes)."""
        model = ctx.model
        S = x.shape[0]
        cw_dir = input_gradient(model, x, y, LOSSES["cw"])[2]  # ascent of max_{i!=y} Z_i - Z_y = -L(x)
        out: dict[str, tuple[torch.Tensor, list[str]]] = {}
        out["random"] = (
            _random(x.shape, norm, gen, x.device),
            ["random " + ("Rademacher" if norm is Norm.LINF else "Gaussian")] * S,
        )
        _, _, g = input_gradient(model, x, y, LOSSES["ce"])
        fg = g.sign() if norm is Norm.LINF else g
        out["fgsm"] = (
            _unit(fg, norm),
            [f"FGSM-CE step direction ({'sign of' if norm is Norm.LINF else 'normalized'} the CE gradient)"] * S,
        )
        ll = LeastLikely().run(model, x, y, ThreatModel(norm, eps), gen).x_adv - x
        out["least_likely"] = self._with_fallback(
            ll, cw_dir, norm, f"iterative least-likely attack at eps={eps:g} (x_adv - x)"
        )
        adv, found = CarliniWagnerL2().minimal_perturbation(model, x, y)
        cw = torch.where(torch.isfinite(found).view(-1, *([1] * (x.dim() - 1))), adv - x, torch.zeros_like(x))
        out["cw"] = self._with_fallback(cw, cw_dir, norm, "C&W-l2 minimal adversarial example (x_adv - x)")
        adv, found = DeepFool().minimal_perturbation(model, x, y, Norm.L2)
        df = torch.where(torch.isfinite(found).view(-1, *([1] * (x.dim() - 1))), adv - x, torch.zeros_like(x))
        out["deepfool"] = self._with_fallback(
            df, cw_dir, norm, "DeepFool-l2 minimal perturbation (x_adv - x, normal to the nearest boundary)"
        )
        return out

    @staticmethod
    def _with_fallback(d: torch.Tensor, fallback: torch.Tensor, norm: Norm, note: str) -> tuple[torch.Tensor, list[str]]:
        zero = lp_norm(d, norm) == 0
        d = torch.where(zero.view(-1, *([1] * (d.dim() - 1))), fallback, d)
        notes = [
            "gradient of the C&W margin loss (the attack found no adversarial example)" if z else note for z in zero.tolist()
        ]
        return _unit(d, norm), notes

    def compute(self, ctx) -> Part:
        """Surfaces of this process's ``n_samples`` lowest-margin correct samples (candidates: the
        section keeps the lowest of all processes)."""
        norm = ctx.config.norm
        eps = float(max(ctx.eps))
        extent = float(self.extent_factor) * eps
        steps = int(self.steps)
        clean = ctx.local("clean")
        picks = lowest_margin_correct(clean, self.n_samples)
        part = Part()
        if not picks:
            return part
        idx = torch.tensor(picks, dtype=torch.long)
        x = ctx.data.batch(idx).to(ctx.device)
        y = ctx.data.y[idx].to(ctx.device)
        gen = ctx.sample_rng("surfaces", idx)
        with ctx.task(
            f"surfaces ({x.shape[0]} samples x {len(PLANES)} planes)", total=1 + x.shape[0] * len(PLANES)
        ) as advance:
            dirs = self._directions(ctx, x, y, norm, eps, gen)
            advance()
            r = _random(x.shape, norm, gen, x.device)
            samples = []
            for s in range(x.shape[0]):
                planes = []
                for name in PLANES:
                    u_all, notes = dirs[name]
                    u = u_all[s : s + 1]
                    v = _unit(_orthogonalize(r[s : s + 1], u), norm)
                    rec = _Record()
                    grid, a, _ = surface_grid(
                        ctx.model, x[s], y[s], u, v, extent, steps, rec, chunk=max(1, int(ctx.batch_size))
                    )
                    advance()
                    logits = torch.cat(rec.logits)
                    yy = y[s].expand(logits.shape[0])
                    loss = cross_entropy(logits, yy).reshape(steps, steps)
                    pred = logits.argmax(1).reshape(steps, steps)
                    A, B = torch.meshgrid(a, a, indexing="ij")
                    comb = A.reshape(-1, 1) * u.flatten(1) + B.reshape(-1, 1) * v.flatten(1)
                    inside = (lp_norm(comb, norm) <= eps * (1 + 1e-6)).reshape(steps, steps)
                    mis = pred != y[s]
                    c = steps // 2
                    row = grid[:, c]
                    neg = (row <= 0).nonzero().squeeze(1)
                    dist = float((a[neg]).abs().min()) if neg.numel() else None
                    planes.append(
                        SurfacePlane(
                            name=name,
                            u=name if name != "fgsm" else "fgsm-ce",
                            v="random",
                            source=notes[s],
                            margin=_nested(grid),
                            loss=_nested(loss),
                            predictions=_nested(pred, int) if name == "deepfool" else None,
                            min_margin_within_eps=_round(float(grid[inside].min())),
                            fraction_misclassified_within_eps=_round(float(mis[inside].double().mean())),
                            boundary_distance_u=_round(dist) if dist is not None else None,
                        )
                    )
                position = int(idx[s])
                m0 = clean.at("margin", [position])[0]
                sample = SurfaceSample(
                    index=position, label=int(ctx.data.y[position]), margin=_round(m0), planes=tuple(planes)
                )
                samples.append({"position": position, "margin": m0, "sample": to_jsonable(sample)})
        part.extra = {"samples": samples, "axis": [_round(float(v)) for v in a.tolist()]}
        return part

    def combine(self, tables, extras, info) -> SurfacesSection:
        norm = info.config.norm
        eps = float(max(info.eps))
        chosen = lowest((c for e in extras for c in e.get("samples", [])), self.n_samples)
        axis = next((tuple(e["axis"]) for e in extras if e.get("axis")), ())
        return SurfacesSection(
            norm=norm.value,
            direction_norm=norm.value,
            eps=eps,
            extent=float(self.extent_factor) * eps,
            steps=int(self.steps),
            axis=axis if chosen else (),
            clipped=False,
            samples=tuple(from_jsonable(SurfaceSample, c["sample"]) for c in chosen),
        )
