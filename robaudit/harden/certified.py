"""Certified training: ``harden --method ibp`` and ``--method crown-ibp``.

Both minimise a mix of the natural cross-entropy and the *verified* cross-entropy — the
cross-entropy of the worst-case logits that a bound on the margins z_y − z_j (j ≠ y) over the
threat set allows:

    L = κ · CE(z(x), y) + (1 − κ) · log(1 + Σ_{j≠y} exp(−m̲_j))

where m̲_j is a lower bound of z_y − z_j over {x' : ‖x' − x‖ ≤ ε, 0 ≤ x' ≤ 1} (pixel space
[0,1], logits in nats after the softmax). ``log(1 + Σ exp(−m̲_j))`` is the CE of the logit
vector with 0 for the true class and −m̲_j for every other class (Gowal et al. 2018, Eq. 8–9;
Zhang et al. 2020, Eq. 4): it is small only when every bound is large and positive, i.e. when
the sample is certified with a margin.

* ``ibp`` — Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelović, Mann & Kohli, *On the
  Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models* (2018): m̲
  from interval bound propagation with the last layer elided (:func:`robaudit.certify.ibp_spec_lower`).
* ``crown-ibp`` — Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning & Hsieh, *Towards Stable and
  Efficient Training of Verifiably Robust Neural Networks* (ICLR 2020):
  m̲ = β · m̲_CROWN-IBP + (1 − β) · m̲_IBP, where m̲_CROWN-IBP is CROWN's backward bound of the
  specification on IBP's pre-activation boxes (:func:`robaudit.certify.crown_spec_lower`);
  β goes from 1 to 0 over the ramp (the paper's β_start = 1, β_end = 0). Once β = 0 the step costs
  what an IBP step costs (the CROWN pass is skipped, as the paper notes).

The bounds come from :mod:`robaudit.certify` — the same code the ``certify`` check certifies
with — and are differentiable in the weights (the operators read the live parameters), so the
gradient of L reaches every layer through the bounds; everything is batched over samples and
specification rows.

**Schedule** (in epochs, so it does not depend on ``--epochs``; the papers' step counts adapted
to short CPU runs, measured in docs/harden.md): ``warmup_epochs`` of natural
training (ε = 0, κ = 1), then over ``ramp_epochs`` ε grows linearly from 0 to the training
radius, κ from 1 to ``kappa_end`` and β from 1 to 0; the rest of the run trains at the full
radius. The papers: Gowal et al. on MNIST train 100 epochs (60k steps of 100), warm up 2k steps,
ramp ε over 10k steps, κ 1 → 0.5; Zhang et al. train 200 epochs on MNIST and ramp over 50,
κ 1 → 0 or 0 → 0. ``train_eps_scale``: the training radius is this × ``--eps`` (Gowal et al.
train MNIST at 0.4 for ε = 0.3, i.e. × 1.33; Zhang et al. at 0.2 for 0.1 on some models).

**Optimizer**: Adam at a constant 1e-3 for 10 epochs (``training_defaults``; the papers: Adam
5e-4 to 1e-3 with step decays late in much longer runs). Measured on Fashion-MNIST from scratch
(cert-cnn, ε = 0.1, docs/harden.md): a constant rate certified 72.2 % after 10 epochs where harden's
fine-tuning schedule of per-epoch cycles decaying ×0.8 per epoch certified 65.9 %.

**BatchNorm** (CROWN-IBP's handling, as in the authors' code and auto_LiRPA): the one train-mode
forward per step is the natural one; every BatchNorm layer in train mode then enters the bounds
as the affine map with *that batch's* mean and (biased) variance, kept in the autograd graph, so
the bound's centre is exactly the train-mode logits. The running statistics are updated from
clean data only, and the certified models are evaluated (``certify`` check) with them (eval mode).
Dropout is applied in the natural forward only; the bounds see the eval-mode network.

The graph is traced once (:func:`robaudit.certify.trace`, the model in eval mode); a model with an
operator the bounds do not support is refused before training (:meth:`prepare`, one line naming
the layers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import InputError, UsageError
from ..geometry.margin import cross_entropy
from ..threat import ThreatModel
from .regularizers import HARDENERS, Hardener, StepContext, StepOutput, eval_mode

__all__ = ["CertifiedHardener", "IBPTraining", "CrownIBPTraining", "verified_ce", "CertifiedSchedule"]

# --- defaults (measured: docs/harden.md, "Certified training") -----------------------------------
DEFAULT_WARMUP = 1.0
DEFAULT_RAMP = 5.0
DEFAULT_KAPPA_END = 0.5
DEFAULT_TRAIN_EPS_SCALE = 1.0
DEFAULT_EPOCHS = 10
DEFAULT_LR = 1e-3  # Adam, constant (lr_final = lr_decay = 1 in robaudit.harden.schedule)


def verified_ce(lower: torch.Tensor) -> torch.Tensor:
    """Per-sample CE of the worst-case logits [B]: log(1 + Σ_j exp(−lower_j)) for lower bounds
    [B, K] of the margins z_y − z_j (nats); the true class's worst-case logit is 0."""
    zero = torch.zeros_like(lower[:, :1])
    return torch.logsumexp(torch.cat([zero, -lower], dim=1), dim=1)


@dataclass(frozen=True)
class CertifiedSchedule:
    """ε fraction, κ and β at a point of training (``progress`` in epochs)."""

    warmup: float
    ramp: float
    kappa_end: float

    def ramp_fraction(self, progress: float) -> float:
        """0 during the warm-up, then linear to 1 at the ramp's end."""
        if progress < self.warmup:
            return 0.0
        if self.ramp <= 0:
            return 1.0
        return min(1.0, (progress - self.warmup) / self.ramp)

    def at(self, progress: float) -> tuple[float, float, float]:
        """(ε / ε_train, κ, β)."""
        t = self.ramp_fraction(progress)
        return t, 1.0 + (self.kappa_end - 1.0) * t, 1.0 - t


@contextmanager
def _clean_batch_statistics(net: nn.Module) -> Iterator[dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]]:
    """Record, during the block's forward, the batch mean and biased variance every train-mode
    BatchNorm normalizes with (in the autograd graph)."""
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(m, inputs, _out):
        x = inputs[0]
        dims = [0] + list(range(2, x.ndim))
        stats[m] = (x.mean(dims), x.var(dims, unbiased=False))

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _bounds_use(stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Inside the block each BatchNorm's running statistics read as the given batch statistics
    (the traced graph reads them at call time); restored afterwards."""
    saved: dict[nn.Module, tuple[torch.Tensor | None, torch.Tensor | None]] = {
        m: (m._buffers["running_mean"], m._buffers["running_var"]) for m in stats
    }
    try:
        for m, (mean, var) in stats.items():
            m._buffers["running_mean"], m._buffers["running_var"] = mean, var
        yield
    finally:
        for m, (old_mean, old_var) in saved.items():
            m._buffers["running_mean"], m._buffers["running_var"] = old_mean, old_var


@dataclass
class CertifiedHardener(Hardener):
    """Verified CE from :mod:`robaudit.certify` bounds mixed with the natural CE (module docstring)."""

    penalty_name: ClassVar[str] = "verified CE"
    certified: ClassVar[bool] = True
    training_defaults: ClassVar[dict[str, float]] = {
        "epochs": DEFAULT_EPOCHS,
        "lr": DEFAULT_LR,
        "lr_final": 1.0,
        "lr_decay": 1.0,  # a constant rate
    }
    double_backward: ClassVar[bool] = False
    options: ClassVar[dict[str, str]] = {
        "warmup_epochs": "warmup_epochs",
        "ramp_epochs": "ramp_epochs",
        "kappa_end": "kappa_end",
        "train_eps_scale": "train_eps_scale",
    }
    bound: ClassVar[str] = "ibp"

    warmup_epochs: float = DEFAULT_WARMUP
    ramp_epochs: float = DEFAULT_RAMP
    kappa_end: float = DEFAULT_KAPPA_END
    train_eps_scale: float = DEFAULT_TRAIN_EPS_SCALE

    def __post_init__(self) -> None:
        if not (self.warmup_epochs >= 0 and self.ramp_epochs >= 0):
            raise UsageError(f"{self.name}: --warmup-epochs and --ramp-epochs must be >= 0")
        if not 0 <= self.kappa_end <= 1:
            raise UsageError(f"{self.name}: --kappa-end must be in [0, 1]")
        if not self.train_eps_scale > 0:
            raise UsageError(f"{self.name}: --train-eps-scale must be > 0")
        self._graphs: dict[tuple[int, str], object] = {}

    @property
    def schedule(self) -> CertifiedSchedule:
        return CertifiedSchedule(self.warmup_epochs, self.ramp_epochs, self.kappa_end)

    def params(self) -> dict:
        return {
            "warmup_epochs": self.warmup_epochs,
            "ramp_epochs": self.ramp_epochs,
            "kappa_end": self.kappa_end,
            "train_eps_scale": self.train_eps_scale,
            "bound": self.bound,
        }

    # --- the traced graph ----------------------------------------------------------------------

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        """Trace the model now, so a model the bounds do not support is refused before training."""
        self.graph(model, input_shape)

    def graph(self, model: nn.Module, input_shape: tuple[int, ...] | None = None):
        from ..certify import UnsupportedModel, UntraceableModel, trace

        net = getattr(model, "module", model)  # DistributedDataParallel → the NormalizedModel
        first = next(net.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        key = (id(net), str(device))
        if key not in self._graphs:
            if input_shape is None:
                raise RuntimeError("the model was not prepared for certified training")  # pragma: no cover
            try:
                with eval_mode(net):
                    self._graphs[key] = trace(net, tuple(input_shape), device=device)
            except UnsupportedModel as exc:
                raise InputError(
                    f"--method {self.name} needs bounds through every layer; {exc}. Use an architecture built from the "
                    f"supported layers (docs/certify.md; e.g. --arch cert-cnn) or a method without bounds (pgd-at, cure)"
                ) from None
            except UntraceableModel as exc:
                raise InputError(
                    f"--method {self.name} can't trace the model: {exc}. Certified training needs a model torch.fx can "
                    f"trace (docs/certify.md); e.g. --arch cert-cnn"
                ) from None
        return self._graphs[key]

    # --- the loss ------------------------------------------------------------------------------

    def status(self, progress: float, threat: ThreatModel) -> dict[str, float]:
        """The schedule at ``progress``: ε (pixel scale), κ and β, for progress reports."""
        frac, kappa, beta = self.schedule.at(progress)
        out = {"eps": frac * threat.eps * self.train_eps_scale, "kappa": kappa}
        if self.bound == "crown-ibp":
            out["beta"] = beta
        return out

    def bounds(
        self, graph, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, crown: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(IBP's, and with ``crown`` CROWN-IBP's) lower bounds [B, C − 1] of the margins z_y − z_j
        over the threat set, differentiable in the weights."""
        from ..certify import ThreatSet, crown_spec_lower, ibp_bounds, ibp_spec_lower, margin_spec

        threat = ThreatSet(x, eps, norm)
        C = margin_spec(y, graph.num_classes, dtype=x.dtype)
        boxes = ibp_bounds(graph, threat)
        ibp = ibp_spec_lower(graph, threat, C, boxes)
        return ibp, (crown_spec_lower(graph, threat, C, boxes) if crown else None)

    def loss(self, model, x, y, ctx: StepContext) -> StepOutput:
        frac, kappa, beta = self.schedule.at(ctx.progress)
        eps = frac * ctx.threat.eps * self.train_eps_scale
        net = getattr(model, "module", model)
        with _clean_batch_statistics(net) as stats:
            logits = model(x)  # the one train-mode forward (DDP's forward: it arms the gradient all-reduce)
        ce = cross_entropy(logits, y).mean()
        if eps <= 0:  # warm-up: at ε = 0 the bounds are exact and the verified CE is the CE itself
            return StepOutput(loss=ce, ce=float(ce.detach()), penalty=float(ce.detach()))
        if kappa >= 1:  # the verified term has weight 0 (κ_end = 1: natural training)
            return StepOutput(loss=ce, ce=float(ce.detach()), penalty=math.nan)
        graph = self.graph(model, tuple(x.shape[1:]))
        with _bounds_use(stats):
            ibp, crown = self.bounds(graph, x, y, eps, ctx.threat.norm.value, self.bound == "crown-ibp" and beta > 0)
        low = ibp if crown is None else beta * crown + (1 - beta) * ibp
        robust = verified_ce(low).mean()
        return StepOutput(loss=kappa * ce + (1 - kappa) * robust, ce=float(ce.detach()), penalty=float(robust.detach()))

    def measure(self, model, x, y, threat):
        """Per sample: 1 when not certified at the full ``--eps`` by the method's bound (IBP; for
        crown-ibp the tighter of IBP and CROWN-IBP per margin), else 0: its mean is the verified error."""
        graph = self.graph(model, tuple(x.shape[1:]))
        with torch.no_grad():
            ibp, crown = self.bounds(graph, x, y, float(threat.eps), threat.norm.value, self.bound == "crown-ibp")
        low = ibp if crown is None else torch.maximum(ibp, crown)  # as the certify check takes them
        return (low.min(dim=1).values <= 0).to(x.dtype)


@HARDENERS.register("ibp")
@dataclass
class IBPTraining(CertifiedHardener):
    """Gowal et al. 2018: κ·CE + (1 − κ)·verified CE on IBP bounds (last layer elided)."""

    name: ClassVar[str] = "ibp"
    description: ClassVar[str] = "certified training on interval bounds (Gowal et al. 2018)"
    measure_name: ClassVar[str] = "IBP verified err"
    bound: ClassVar[str] = "ibp"


@HARDENERS.register("crown-ibp")
@dataclass
class CrownIBPTraining(CertifiedHardener):
    """Zhang et al. 2020: verified CE on β·CROWN-IBP + (1 − β)·IBP bounds, β 1 → 0 over the ramp."""

    name: ClassVar[str] = "crown-ibp"
    description: ClassVar[str] = "certified training on CROWN-IBP bounds (Zhang et al. 2020)"
    measure_name: ClassVar[str] = "CROWN-IBP verified err"
    bound: ClassVar[str] = "crown-ibp"
