"""Hardening methods: one training loss per method, registered in ``HARDENERS``.

Every method turns a batch (pixel space [0,1], the ``NormalizedModel`` in train mode) into a
scalar loss whose graph reaches the weights. Input gradients are per-sample: the per-sample
losses are SUMMED before differentiating w.r.t. x (never averaged, so there is no 1/B factor),
and the penalty is a per-sample quantity averaged over the batch afterwards. Double-backward
methods build their input gradients with ``create_graph=True`` so the penalty trains the weights
(Drucker & Le Cun 1991 "double backpropagation").

Methods (all gradients are w.r.t. the [0,1] pixel input, i.e. through the model's normalization):

``cure`` — Moosavi-Dezfooli, Fawzi, Uesato & Frossard, *Robustness via curvature
    regularization, and vice versa* (CVPR 2019):
    ``ℓ(x) + γ ‖∇ℓ(x + h z) − ∇ℓ(x)‖²``, ``z = sign(∇ℓ(x)) / ‖sign(∇ℓ(x))‖₂`` (computed, then
    detached), ℓ = cross-entropy. ``(∇ℓ(x+hz) − ∇ℓ(x))/h ≈ Hz``; the 1/h² is absorbed into γ as
    in the paper. h ramps linearly from 0 over the first ``h_ramp_epochs`` epochs.
    The measured quantity is the mean ‖Hz‖₂ = ‖∇ℓ(x+hz) − ∇ℓ(x)‖₂ / h at the full h.

    **Scale of h.** ‖z‖₂ = 1, so h is the ℓ2 length of the finite-difference step, in
    robaudit's [0,1] pixel units. The paper states h = 1.5 on the [0,255] pixel scale, i.e.
    1.5/255 ≈ 0.0059 on [0,1]: at most 0.0059/√d per pixel, a step far inside an ε = 0.1 ℓ∞
    ball, whose corner lies at ℓ2 distance ε√d = 0.1·28 = 2.8 on 28×28 inputs (8/255·√3072 ≈
    1.74 on CIFAR). The authors' code steps in *normalized* units (÷ std ≈ 0.25 on CIFAR) with h
    up to 3, i.e. ≈ 0.75 in [0,1] ℓ2 units — two orders of magnitude more than the text.
    robaudit's default is h = ε·√d (``default_h``: the ℓ2 distance to a corner of the ℓ∞
    ε-ball, so the curvature is measured over the neighbourhood the threat model covers; ε for
    the ℓ2 threat model), chosen by measurement on the embedded Fashion-MNIST demo model
    (small-cnn, natural, PGD-20 robust accuracy 3.4% at ε = 0.1): CURE fine-tuning on the first
    10,000 training images, 3 epochs, Adam 1e-3 → 1e-5, γ = 1, then PGD-20 (ℓ∞, ε = 0.1) on the
    first 500 test images — h = 1: 18.8% robust / 89.8% clean; h = 2: 25.6 / 88.4; h = 3:
    29.4 / 88.0; h = 4: 27.8 / 88.2 (parent 3.4 / 91.8). γ at h = 2: 0.25 → 22.4 / 89.6,
    1 → 25.6 / 88.4, 4 → 27.2 / 87.0; default γ = ``DEFAULT_GAMMA`` = 1. With the paper's
    literal h = 0.0059 the penalty measures curvature at a scale that does not matter for
    ε = 0.1; to reproduce it pass ``--h 0.0059`` (and a γ ~ 1/h² larger to keep its size, since
    the 1/h² is absorbed into γ). x + hz is not clipped to [0,1] (a finite difference along z,
    as in the paper and the authors' code). h ramps linearly from 0 over ``h_ramp_epochs``
    (default 1; the paper: 5 of 20 epochs).

    **Learning rate.** The paper's Adam 1e-4 → 1e-6 runs for 20 epochs of CIFAR-10 (~7,800
    steps). robaudit's default fine-tuning is two epochs (~940 steps on Fashion-MNIST), where 1e-4
    barely moves the model (measured, h = 2, γ = 1, 10k images, 3 epochs: 9.6% robust vs 25.6%
    at 1e-3); the default schedule (:mod:`.schedule`) holds 3e-3 for 80% of each epoch, then
    anneals, each epoch peaking at half the previous one's (``--lr 1e-4 --epochs 20`` for the
    paper's rate). Measured choice of lr, hold, γ, h ramp: docs/harden.md (issue 17).

``jacobian`` — Yu, Liu, Wang & Chen, *Interpreting Adversarial Robustness: A View from Decision
    Surface in Input Space* (2018), Eq. 11–12: ``CE + c · R(∂L/∂x)`` on the margin
    L(x) = Z_y − max_{i≠y} Z_i, R = ℓ1 (default; the dual norm of the ℓ∞ threat model, the
    first-order term ε‖J‖₁ of the paper's Eq. 9) or squared ℓ2, per sample, summed over the
    pixels. The paper's c = 500 (§8.3, MNIST on the [0,1] pixel range) does not say how R is
    reduced; as a sum over 784 pixels it would weigh the penalty ~10³–10⁵× the CE of a natural
    model (‖J‖₁ ≈ 500 there, ≈ 187 for robaudit's demo model), so it must be a mean over the
    pixels (tf.reduce_mean), i.e. c_sum = 500/784 ≈ 0.64 in robaudit's per-sample-sum form —
    which, measured, is far too strong for fine-tuning (c = 0.2 already costs 12 points of
    clean accuracy). Default c = ``DEFAULT_C`` = 0.014 with R = ℓ1, chosen by measurement on the
    demo model with the default schedule (60k images × 2 epochs, PGD-20 at ε = 0.1 on the first
    1000 test images: c = 0.0125 → 53.5% robust / 84.7% clean, 0.014 → 55.0 / 84.5, 0.015 →
    55.9 / 83.9; docs/harden.md). Earlier, with Adam 1e-3 → 1e-5 (500 test images): 10k images × 3 epochs —
    c = 0.01: 10.4% robust / 91.0% clean; 0.05: 16.4 / 86.8; 0.2: 7.6 / 80.0; ℓ2² with c = 0.02:
    7.4 / 92.0; 20k images × 4 epochs — c = 0.02: 39.8 / 85.6; c = 0.05: 41.8 / 79.2 (parent
    3.4 / 91.8). The penalty can be lowered by shrinking the logit scale (the mean margin falls
    from 5.0 to 1.3 at c = 0.02, to 0.66 at c = 0.05), which is why a larger c buys little
    robustness for much clean accuracy. ``projections = k > 0`` replaces the margin gradient by
    Hoffman, Roberts & Yaida (2019)'s random-projection estimate of the full logit Jacobian's
    squared Frobenius norm, ‖J‖²_F ≈ (C/k) Σ_j ‖∇_x (v_jᵀ Z)‖², v_j uniform on the unit sphere of
    ℝ^C (for many-class models; R is then squared ℓ2; not measured for a default c).
    The measured quantity is the mean ‖∂L/∂x‖ (in the R norm).

``ce-grad`` — Ross & Doshi-Velez, *Improving the adversarial robustness and interpretability
    of deep neural networks by regularizing their input gradients* (AAAI 2018):
    ``CE + λ ‖∇_x CE‖₂²`` per sample (λ = ``reg_weight``, default 10). Measured on the demo model
    (10k images, 3 epochs, Adam 1e-3): λ = 10 and λ = 100 leave PGD-20 accuracy at 2.4% (clean
    92%): the model lowers ‖∇CE‖ by growing more confident (CE → 0), not by flattening its
    decision function — the weakness Yu et al. §5.2 point out. A baseline, not a default choice.

``pgd-at`` — Madry, Makelov, Schmidt, Tsipras & Vladu (ICLR 2018): robaudit's PGD (10 steps,
    α = 2.5ε/10, random start, eval mode) builds the adversarial batch, the training step is CE
    on it. ``--combine pgd-at`` adds this adversarial CE to a regularizer's loss (Yu et al.
    Table 2, "Ours+AdvTrain"). Both live in :mod:`robaudit.harden.adversarial`; certified
    training (``ibp``, ``crown-ibp``) in :mod:`robaudit.harden.certified`.

**BatchNorm / dropout.** Exactly one forward per step runs in train mode: the one whose CE is
the method's primary loss (the clean batch for the regularizers, the adversarial batch for
pgd-at), so BatchNorm statistics are updated from the data the model is trained on, as in
ordinary fine-tuning. Every other pass — the regularizer's input-gradient passes at x and
x + hz, the margin gradient, the PGD attack and the adversarial CE of ``--combine pgd-at`` —
runs in eval mode (running statistics, no dropout). That keeps the per-sample input gradients
exact (train-mode BN couples the samples of a batch, so the gradient of a sum would not be
per-sample), keeps perturbed inputs out of the running statistics, and is what the CURE
authors' code does (``net.eval()`` inside the regularizer). The BN affine weights still get
the penalty's gradient. For models without such layers train and eval mode compute the same
function, so the CE and the penalty share one forward pass (no extra cost).

**Precision.** Double-backward methods always run in float32 (no autocast/AMP): the CURE
penalty is a difference of two nearly equal gradients (catastrophic cancellation in half
precision), the penalties' second-order graphs underflow in fp16, and GradScaler does not
scale ``autograd.grad(create_graph=True)`` results, so its inf/NaN protection would not cover
them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UsageError
from ..geometry.margin import cross_entropy, margin
from ..registry import Registry
from ..threat import ThreatModel

__all__ = [
    "HARDENERS",
    "Hardener",
    "StepContext",
    "StepOutput",
    "Cure",
    "JacobianReg",
    "CEGrad",
    "has_mode_dependent_layers",
    "eval_mode",
    "build_hardener",
    "default_h",
    "DEFAULT_GAMMA",
    "DEFAULT_C",
    "DEFAULT_CE_GRAD",
]

HARDENERS: Registry[type[Hardener]] = Registry(
    "hardener",
    "robaudit.hardeners",
    builtin_modules=("robaudit.harden.regularizers", "robaudit.harden.adversarial", "robaudit.harden.certified"),
)

# --- defaults (measured; see the module docstring) --------------------------
DEFAULT_GAMMA = 1.0
DEFAULT_H_RAMP = 1.0
DEFAULT_C = 0.014
DEFAULT_CE_GRAD = 10.0


def default_h(threat: ThreatModel, input_shape) -> float:
    """CURE's default step: the ℓ2 distance from x to a corner of the ℓ∞ ε-ball, ε·√d
    (2.8 for ε = 0.1 on 28×28; 1.74 for 8/255 on 3×32×32), or ε itself for the ℓ2 threat model."""
    d = 1
    for s in input_shape:
        d *= int(s)
    return float(threat.eps * math.sqrt(d)) if threat.norm.value == "linf" else float(threat.eps)


# --- helpers -----------------------------------------------------------------------------------

_MODE_DEPENDENT = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def has_mode_dependent_layers(model: nn.Module) -> bool:
    """True when train and eval mode compute different functions (BatchNorm, dropout, ...)."""
    for m in model.modules():
        if isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats:
            continue
        if isinstance(m, _MODE_DEPENDENT):
            return True
    return False


@contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run a block with ``model`` in eval mode, then restore its mode."""
    was = model.training
    if enabled and was:
        model.eval()
    try:
        yield
    finally:
        if enabled and was:
            model.train()


def _per_sample_sq(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).pow(2).sum(1)


def _sign_direction(g: torch.Tensor) -> torch.Tensor:
    """z = sign(g)/‖sign(g)‖₂ per sample (a zero gradient gives z = 0), detached."""
    s = g.detach().sign()
    n = s.flatten(1).norm(p=2, dim=1).clamp_min(1.0)
    return s / n.view(-1, *([1] * (g.dim() - 1)))


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fn, create_graph: bool):
    """(per-sample f [B], logits, ∂f_i/∂x_i) for f = fn(logits, y); the per-sample values are summed
    before differentiating, so each gradient row is that sample's own."""
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xr)
        f = fn(logits, y)
        (g,) = torch.autograd.grad(f.sum(), xr, create_graph=create_graph)
    return f, logits, g


def train_ce_and_input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fn, separate_eval: bool):
    """(per-sample CE of the train-mode pass [B], ∂f_i/∂x_i with its graph) for f = fn(logits, y).

    The CE and the input gradient share one forward unless the model has mode-dependent layers
    (``separate_eval``); then the CE is the single train-mode forward and the gradient comes from
    a separate eval-mode pass (the BatchNorm rule in the module docstring)."""
    if separate_eval:
        ce = cross_entropy(model(x), y)
        with eval_mode(model):
            _, _, g = input_grad(model, x, y, fn, create_graph=True)
        return ce, g
    xr = x.detach().requires_grad_(True)
    logits = model(xr)
    (g,) = torch.autograd.grad(fn(logits, y).sum(), xr, create_graph=True)
    return cross_entropy(logits, y), g


def ce_grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖∇ₓCE‖₂ (nats per unit pixel, [0,1] scale), no weight graph."""
    _, _, g = input_grad(model, x, y, cross_entropy, create_graph=False)
    return g.flatten(1).norm(p=2, dim=1)


@dataclass
class StepContext:
    """What a method sees at a training step.

    progress: epochs done as a float (epoch + step/steps_per_epoch), for ramps.
    generator: a generator on the training device (attack random starts, projections); its
    state is part of the resume checkpoint.
    separate_eval: the model has mode-dependent layers, so the regularizer's passes run in eval
    mode in a separate forward (see the module docstring).
    threat: the threat model of pgd-at and the evaluation.
    """

    progress: float
    generator: torch.Generator | None
    separate_eval: bool
    threat: ThreatModel


@dataclass
class StepOutput:
    """loss: the scalar to backpropagate. ce: mean clean (or adversarial, pgd-at) CE; penalty:
    mean unweighted penalty; adv_ce: the adversarial CE of --combine pgd-at (nan if absent)."""

    loss: torch.Tensor
    ce: float
    penalty: float
    adv_ce: float = math.nan


@dataclass
class Hardener(ABC):
    """A hardening method. Subclasses are dataclasses whose fields are the hyper-parameters."""

    name: ClassVar[str] = "hardener"
    description: ClassVar[str] = ""
    measure_name: ClassVar[str] = ""
    penalty_name: ClassVar[str] = "penalty"  # what StepOutput.penalty is, in progress lines and tables
    certified: ClassVar[bool] = False  # trains a certified bound: the before/after scan adds the certify check
    # the method's own defaults for harden()'s epochs, lr, lr_hold, lr_final, lr_decay (else harden's)
    training_defaults: ClassVar[dict[str, float]] = {}
    double_backward: ClassVar[bool] = True
    # which CLI options map onto which fields: option name → field name
    options: ClassVar[dict[str, str]] = {}

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def resolve(self, threat: ThreatModel, input_shape: tuple[int, ...]) -> None:  # noqa: B027 - an optional hook
        """Fill in defaults that depend on the threat model or the input size (before training)."""

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:  # noqa: B027 - an optional hook
        """Check that the method applies to ``model`` (before training; raises InputError)."""

    def status(self, progress: float, threat: ThreatModel) -> dict[str, float]:
        """Schedule values at ``progress`` (epochs) worth showing in the progress line (e.g. ε)."""
        return {}

    @abstractmethod
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        """The training loss on one batch (model in train mode)."""

    @abstractmethod
    def measure(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        """The per-sample quantity the method drives down (model in eval mode, no weight graph)."""


# --- CURE ------------------------------------------------------------------------------------


@HARDENERS.register("cure")
@dataclass
class Cure(Hardener):
    """CURE: CE + γ‖∇ℓ(x+hz) − ∇ℓ(x)‖², h in [0,1]-pixel ℓ2 units, linear ramp over h_ramp_epochs."""

    name: ClassVar[str] = "cure"
    description: ClassVar[str] = "curvature regularization (Moosavi-Dezfooli et al. 2019)"
    measure_name: ClassVar[str] = "‖Hz‖₂"
    options: ClassVar[dict[str, str]] = {"gamma": "gamma", "h": "h", "h_ramp_epochs": "h_ramp_epochs"}

    gamma: float = DEFAULT_GAMMA
    h: float | None = None  # None: default_h(threat, input) = ε·√d (ℓ∞) or ε (ℓ2)
    h_ramp_epochs: float = DEFAULT_H_RAMP

    def __post_init__(self) -> None:
        if not (self.gamma >= 0 and (self.h is None or self.h > 0) and self.h_ramp_epochs >= 0):
            raise UsageError("cure: need --gamma >= 0, --h > 0 and --h-ramp-epochs >= 0")

    def resolve(self, threat: ThreatModel, input_shape) -> None:
        if self.h is None:
            self.h = default_h(threat, input_shape)

    def _h(self, threat: ThreatModel, x: torch.Tensor) -> float:
        return self.h if self.h is not None else default_h(threat, tuple(x.shape[1:]))

    def h_at(self, progress: float, full: float | None = None) -> float:
        full = self.h if full is None else full
        assert full is not None
        if self.h_ramp_epochs <= 0:
            return full
        return full * min(1.0, progress / self.h_ramp_epochs)

    def loss(self, model, x, y, ctx):
        h = self.h_at(ctx.progress, self._h(ctx.threat, x))
        ce, g = train_ce_and_input_grad(model, x, y, cross_entropy, ctx.separate_eval)
        if h == 0.0 or self.gamma == 0.0:
            return StepOutput(loss=ce.mean(), ce=float(ce.detach().mean()), penalty=0.0)
        z = _sign_direction(g)
        with eval_mode(model, ctx.separate_eval):
            _, _, g_pos = input_grad(model, x + h * z, y, cross_entropy, create_graph=True)
        penalty = _per_sample_sq(g_pos - g).mean()
        return StepOutput(loss=ce.mean() + self.gamma * penalty, ce=float(ce.detach().mean()), penalty=float(penalty.detach()))

    def measure(self, model, x, y, threat):
        _, _, g = input_grad(model, x, y, cross_entropy, create_graph=False)
        z = _sign_direction(g)
        h = self._h(threat, x)
        _, _, g_pos = input_grad(model, x + h * z, y, cross_entropy, create_graph=False)
        return _per_sample_sq(g_pos - g).sqrt() / h


# --- Jacobian (Yu et al.) --------------------------------------------------------------------


@HARDENERS.register("jacobian")
@dataclass
class JacobianReg(Hardener):
    """Yu et al. Eq. 11–12: CE + c·R(∂L/∂x) on the margin L; R = l1 or squared l2 (per sample)."""

    name: ClassVar[str] = "jacobian"
    description: ClassVar[str] = "margin-Jacobian regularization by double backprop (Yu et al. 2018)"
    measure_name: ClassVar[str] = "‖∂L/∂x‖"
    options: ClassVar[dict[str, str]] = {"reg_weight": "reg_weight", "reg_norm": "reg_norm", "projections": "projections"}

    reg_weight: float = DEFAULT_C
    reg_norm: str = "l1"
    projections: int = 0

    def __post_init__(self) -> None:
        self.reg_norm = str(self.reg_norm).lower().replace("ℓ", "l")
        if self.reg_norm not in ("l1", "l2"):
            raise UsageError(f"jacobian: --reg-norm must be l1 or l2, got {self.reg_norm!r}")
        if self.reg_weight < 0:
            raise UsageError("jacobian: --reg-weight must be >= 0")
        if self.projections < 0:
            raise UsageError("jacobian: --projections must be >= 0")
        if self.projections and self.reg_norm != "l2":
            raise UsageError(
                "jacobian: --projections estimates the squared Frobenius norm of the logit Jacobian; use --reg-norm l2"
            )

    @property
    def measure_label(self) -> str:
        return "‖∂L/∂x‖₁" if self.reg_norm == "l1" else "‖∂L/∂x‖₂"

    def _r(self, g: torch.Tensor) -> torch.Tensor:
        flat = g.flatten(1)
        return flat.abs().sum(1) if self.reg_norm == "l1" else flat.pow(2).sum(1)

    def loss(self, model, x, y, ctx):
        if self.projections:
            return self._projected_loss(model, x, y, ctx)
        ce, g = train_ce_and_input_grad(model, x, y, margin, ctx.separate_eval)
        penalty = self._r(g).mean()
        return StepOutput(
            loss=ce.mean() + self.reg_weight * penalty, ce=float(ce.detach().mean()), penalty=float(penalty.detach())
        )

    def _projected_loss(self, model, x, y, ctx):
        xr = x.detach().requires_grad_(True)
        if ctx.separate_eval:
            ce = cross_entropy(model(x), y)
            with eval_mode(model):
                logits = model(xr)
        else:
            logits = model(xr)
            ce = cross_entropy(logits, y)
        c = logits.shape[1]
        total = torch.zeros((), device=x.device, dtype=logits.dtype)
        for _ in range(self.projections):
            v = torch.randn(logits.shape, generator=ctx.generator, device=x.device, dtype=logits.dtype)
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
            (g,) = torch.autograd.grad((logits * v).sum(), xr, create_graph=True, retain_graph=True)
            total = total + _per_sample_sq(g).mean()
        penalty = total * (c / self.projections)
        return StepOutput(
            loss=ce.mean() + self.reg_weight * penalty, ce=float(ce.detach().mean()), penalty=float(penalty.detach())
        )

    def measure(self, model, x, y, threat):
        _, _, g = input_grad(model, x, y, margin, create_graph=False)
        flat = g.flatten(1)
        return flat.abs().sum(1) if self.reg_norm == "l1" else flat.norm(p=2, dim=1)


# --- CE input-gradient penalty (Ross & Doshi-Velez) --------------------------------------------


@HARDENERS.register("ce-grad")
@dataclass
class CEGrad(Hardener):
    """Ross & Doshi-Velez 2018: CE + λ‖∇_x CE‖₂² per sample."""

    name: ClassVar[str] = "ce-grad"
    description: ClassVar[str] = "cross-entropy input-gradient penalty (Ross & Doshi-Velez 2018)"
    measure_name: ClassVar[str] = "‖∇CE‖₂"
    options: ClassVar[dict[str, str]] = {"reg_weight": "reg_weight"}

    reg_weight: float = DEFAULT_CE_GRAD

    def __post_init__(self) -> None:
        if self.reg_weight < 0:
            raise UsageError("ce-grad: --reg-weight must be >= 0")

    def loss(self, model, x, y, ctx):
        ce, g = train_ce_and_input_grad(model, x, y, cross_entropy, ctx.separate_eval)
        penalty = _per_sample_sq(g).mean()
        return StepOutput(
            loss=ce.mean() + self.reg_weight * penalty, ce=float(ce.detach().mean()), penalty=float(penalty.detach())
        )

    def measure(self, model, x, y, threat):
        return ce_grad_norm(model, x, y)


def build_hardener(method: str, options: dict[str, object], combine: str | None = None) -> Hardener:
    """The method's hardener with the given CLI-style options (None = the method's default).

    An option the method doesn't take is a usage error (e.g. --gamma with jacobian)."""
    cls = HARDENERS.get(method)
    given = {k: v for k, v in options.items() if v is not None}
    pgd_steps = given.pop("pgd_steps", None) if combine else None
    kwargs = {}
    for opt, value in given.items():
        if opt not in cls.options:
            flag = "--" + opt.replace("_", "-")
            takes = ", ".join("--" + o.replace("_", "-") for o in cls.options) or "no options"
            raise UsageError(f"{flag} does not apply to --method {cls.name} (it takes {takes})")
        kwargs[cls.options[opt]] = value
    hardener = cls(**kwargs)
    if combine:
        if combine.strip().lower() != "pgd-at":
            raise UsageError(f"--combine {combine!r}: only pgd-at can be combined with a regularizer")
        pgd_at: Any = HARDENERS.get("pgd-at")  # robaudit.harden.adversarial.PGDAT, by name: it builds on this module
        return pgd_at.around(hardener, steps=int(str(pgd_steps)) if pgd_steps is not None else 10)
    return hardener
