"""Shared base for attacks: threat-model projection, pass counting, the invariants every attack keeps.

Conventions (DESIGN.md): inputs are pixel space [0,1]; the model (already wrapped with its
normalization) is passed at run time and stays in eval mode with its weights untouched; per-sample
losses are summed, never averaged, before differentiating w.r.t. the input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .. import rng
from ..errors import UsageError
from ..geometry.margin import cross_entropy, margin
from ..geometry.norms import lp_norm
from ..geometry.passes import record
from ..registry import Registry
from ..threat import Norm, ThreatModel

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackOutput",
    "PassCounter",
    "LOSSES",
    "input_gradient",
    "project",
    "normalize_direction",
    "lp_norm",
    "autocast_dtype",
    "AutocastModel",
    "ChannelsLastModel",
    "in_precision",
    "in_memory_format",
]

ATTACKS: Registry[type[Attack]] = Registry(
    "attack",
    "robaudit.attacks",
    builtin_modules=(
        "robaudit.attacks.fgsm",
        "robaudit.attacks.pgd",
        "robaudit.attacks.cw",
        "robaudit.attacks.deepfool",
        "robaudit.attacks.spsa",
        "robaudit.attacks.least_likely",
        "robaudit.attacks.apgd",
        "robaudit.attacks.square",
        "robaudit.attacks.fab",
    ),
)


def _cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C&W margin loss to maximise: max_{i≠y} Z_i − Z_y = −L(x) (Carlini & Wagner 2017, f_6)."""
    return -margin(logits, y)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": cross_entropy,
    "cw": _cw_loss,
}


@dataclass
class PassCounter:
    """Counts sample-level forward and backward passes (a batch of B counts B)."""

    forward: int = 0
    backward: int = 0

    def add(self, batch: int, backward: bool) -> None:
        self.forward += batch
        if backward:
            self.backward += batch


@dataclass(frozen=True)
class AttackOutput:
    """x_adv: float adversarial inputs in [0,1] (never quantized); success: model(x_adv) ≠ y."""

    x_adv: torch.Tensor
    success: torch.Tensor


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def normalize_direction(g: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Steepest-ascent direction of unit size: sign(g) for ℓ∞, g/‖g‖₂ for ℓ2 (zero stays zero)."""
    if norm is Norm.LINF:
        return g.sign()
    n = g.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    return g / _view(n, g)


def project(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project onto {x+δ : ‖δ‖ ≤ ε} ∩ [0,1]^d (ℓ∞: exact; ℓ2: radial rescale, then clip)."""
    delta = x_adv - x
    if threat.norm is Norm.LINF:
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        n = delta.flatten(1).norm(p=2, dim=1)
        factor = (threat.eps / n.clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * _view(factor, delta)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, threat: ThreatModel, generator) -> torch.Tensor:
    """A uniform point of the ε-ball (ℓ∞: uniform cube; ℓ2: uniform in the ball), clipped to [0,1].
    ``generator``: a :class:`robaudit.rng.SampleRNG` (one stream per row) or a torch.Generator."""
    if threat.norm is Norm.LINF:
        u = rng.uniform(x.shape, generator, x.device, x.dtype)
        delta = (2 * u - 1) * threat.eps
    else:
        d = x[0].numel()
        g = rng.normal(x.shape, generator, x.device, x.dtype)
        g = g / _view(g.flatten(1).norm(p=2, dim=1).clamp_min(1e-12), g)
        r = rng.uniform((x.shape[0],), generator, x.device, x.dtype) ** (1.0 / d)
        delta = g * _view(r * threat.eps, g)
    return (x + delta).clamp(0.0, 1.0)


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    counter: PassCounter | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + one backward: (per-sample loss [B], logits [B,K], ∂loss_i/∂x_i [B,...]).

    The per-sample losses are summed, so each row of the gradient is that sample's own gradient
    (samples don't interact in eval mode). Only the input gradient is computed, never the weights'.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, y)
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        else:  # the output does not depend on the input at all (the sanity check flags it)
            grad = None
        grad = torch.zeros_like(x) if grad is None else grad
    if counter is not None:
        counter.add(x.shape[0], backward=True)
    record("grad", x.shape[0])
    return loss.detach(), logits.detach(), grad.detach()


def predict(model: nn.Module, x: torch.Tensor, counter: PassCounter | None = None) -> torch.Tensor:
    """Logits without a graph."""
    with torch.no_grad():
        logits = model(x)
    if counter is not None:
        counter.add(x.shape[0], backward=False)
    return logits


_AUTOCAST = {"bfloat16": (torch.bfloat16, ("cpu", "cuda")), "float16": (torch.float16, ("cuda",))}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` on ``device`` (None: float32, no autocast). bfloat16 runs
    on CPU and CUDA, float16 on CUDA only; anything else is a usage error."""
    if precision == "float32":
        return None
    dtype, devices = _AUTOCAST[precision]
    if device.type not in devices:
        raise UsageError(
            f"--precision {precision} needs a {' or '.join(d.upper() for d in devices)} device, "
            f"not {device.type}; use --precision float32" + (" or bfloat16" if device.type == "cpu" else "")
        )
    return dtype


class AutocastModel(nn.Module):
    """``model`` with its forward under ``torch.autocast(device_type, dtype)`` (matmuls and
    convolutions in ``dtype``), its logits cast back to float32 so losses and their gradients
    w.r.t. the float32 input are computed as before. Only attacks run through it (``--precision``)."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


def in_precision(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """``model`` itself at float32, else an :class:`AutocastModel` in that precision."""
    dtype = autocast_dtype(precision, device)
    return model if dtype is None else AutocastModel(model, device.type, dtype)


class ChannelsLastModel(nn.Module):
    """``model`` fed its 4-d inputs in ``torch.channels_last`` memory format (NHWC strides, same
    values): convolution kernels may then run without layout conversions (``--channels-last``).
    The logits equal the default format's up to float rounding (another kernel, another order of
    additions); inputs of any other rank (a vmap-ed single sample, vectors) pass unchanged."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


def in_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` itself by default; with ``channels_last`` its 4-d parameters converted in place to
    channels_last (values unchanged) and the model wrapped in :class:`ChannelsLastModel`."""
    if not channels_last:
        return model
    return ChannelsLastModel(model.to(memory_format=torch.channels_last))


_RUNTIME_FIELDS = frozenset({"counter", "max_rows", "progress", "stagger"})


@dataclass
class Attack(ABC):
    """An attack under a threat model. Subclasses are dataclasses whose fields are the
    hyper-parameters (with the paper's defaults) and implement :meth:`_perturb`.

    ``name`` is the registry key; ``norms`` the threat models it supports.
    """

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[Norm, ...]] = (Norm.LINF, Norm.L2)
    # True: _perturb draws only through robaudit.rng's helpers (uniform, normal, randint, signs),
    # so a scan passes a SampleRNG — one stream per sample, keyed by its dataset index — and a
    # sample's result doesn't depend on its batch. False (older plugins): a torch.Generator.
    per_sample_rng: ClassVar[bool] = False
    # "white-box" (uses input gradients), "black-box" (scores only) or "gradient-free" (estimates
    # gradients from scores); validity flags compare the kinds (docs/flags.md).
    kind: ClassVar[str] = "white-box"
    single_step: ClassVar[bool] = False
    counter: PassCounter = field(default_factory=PassCounter, repr=False, compare=False)
    # Set by the caller, not hyper-parameters (they change the cost, never the result):
    # max_rows — the most rows one model call may take (None: the batch given to run), so attacks
    # that pack several runs of a sample into shared model calls (APGD, FAB-T) stay within memory;
    # progress — called with the fraction (0..1) of the current run() call's work done, as it goes.
    max_rows: int | None = field(default=None, repr=False, compare=False)
    progress: Callable[[float], None] | None = field(default=None, repr=False, compare=False)
    # Attacks that can tell that a sample's remaining iterations are provably identical to the
    # last one (a zero input gradient at a point that no longer moves: APGD, FAB-T) stop it there;
    # the result is the same, only the pass counts drop. An internal switch for the tests that
    # prove it (not a user option, not a hyper-parameter).
    stop_at_fixed_points: ClassVar[bool] = True

    def params(self) -> dict:
        """Hyper-parameters as plain values (for provenance in ScanResult)."""
        from dataclasses import fields

        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _RUNTIME_FIELDS}

    def max_passes(self, num_classes: int) -> tuple[int, int] | None:
        """An upper bound of (forward, backward) model passes one sample costs in :meth:`run`
        (its success check included) against a model of ``num_classes`` classes: the cost of a
        sample that resists to the end. None: not known in advance (the scan's estimate says so)."""
        return None

    def _report(self, fraction: float) -> None:
        """Tell the caller how much of this run() call's work is done (0..1)."""
        if self.progress is not None:
            self.progress(fraction)

    @abstractmethod
    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, generator) -> torch.Tensor:
        """Return x_adv (any point; the base projects it and checks success)."""

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        generator=None,
    ) -> AttackOutput:
        """Attack a batch. The model's mode and weights are left exactly as they were.
        ``generator``: a torch.Generator, None, or (attacks with ``per_sample_rng``) a
        :class:`robaudit.rng.SampleRNG` whose rows are the batch's samples, which is what a scan
        passes: ``SampleRNG.for_indices(seed, tag, dataset_indices)`` (its ``indices``)."""
        if rng.is_sample_rng(generator) and len(generator) != x.shape[0]:
            raise ValueError(f"a SampleRNG of {len(generator)} rows for a batch of {x.shape[0]}")
        if threat.norm not in self.norms:
            raise UsageError(
                f"attack {self.name!r} does not support the {threat.norm.value} threat model "
                f"(supports: {', '.join(n.value for n in self.norms)})"
            )
        was_training = model.training
        if was_training:  # exported graphs can't switch modes; only touch a module that needs it
            model.eval()
        try:
            x = x.detach()
            x_adv = project(self._perturb(model, x, y, threat, generator).detach(), x, threat)
            success = predict(model, x_adv, self.counter).argmax(dim=1) != y
        finally:
            if was_training:
                model.train()
        return AttackOutput(x_adv=x_adv, success=success)
