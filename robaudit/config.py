"""Typed scan configuration. Strings from the CLI or TOML become these at the boundary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError
from .metric_names import PredictedMetrics, attack_label, canonical_params
from .params import parse_spec_list
from .threat import Norm, parse_eps_list

__all__ = [
    "AttackSpec",
    "ScanConfig",
    "parse_attack_list",
    "parse_check_list",
    "predict_metric_names",
    "ATTACK_PRESETS",
    "PRESET_MODE",
    "PAPER_EPS",
    "DEFAULT_CHECKS",
    "ALL_CHECKS",
    "default_eps",
    "check_radii",
    "ensemble_mode_for",
    "PRECISIONS",
]

# Presets expand to attack specs; each attack's own defaults follow its paper (see its docstring).
ATTACK_PRESETS: dict[str, str] = {
    # FGSM + PGD-20 (PGD's defaults): fast, and *not* AutoAttack-grade (the verdict says so).
    "quick": "fgsm,pgd",
    # AutoAttack's standard recipe (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square, in cascade.
    "standard": "apgd-ce,apgd-t,fab-t,square",
    # The columns of Yu et al.'s Tables 1-4: FGSM, BIM and the C&W margin loss inside ℓ∞ PGD.
    "paper": "fgsm,bim,cw-pgd",
}
# How the ensemble runs for a preset when --ensemble isn't given: cascade skips samples already broken.
PRESET_MODE = {"quick": "independent", "standard": "cascade", "paper": "independent"}
# --precision: the dtype the attacks' forward passes run in (torch.autocast); everything else stays float32/64.
PRECISIONS = ("float32", "bfloat16", "float16")
# ε columns of Yu et al.'s tables, used by the paper preset when --eps isn't given.
PAPER_EPS = {"grey": (0.1, 0.2, 0.3), "colour": (3 / 255, 6 / 255, 9 / 255)}

DEFAULT_CHECKS = ("clean", "sanity", "attacks", "margins", "jacobian", "spectra")
# The whole battery in a sensible order (``--checks all``); minimal before indicator so it reuses the radii.
ALL_CHECKS = (
    "clean",
    "sanity",
    "attacks",
    "margins",
    "minimal",
    "jacobian",
    "curvature",
    "indicator",
    "spectra",
    "surfaces",
    "landscape",
)


@dataclass(frozen=True)
class AttackSpec:
    """An attack by registry name plus hyper-parameter overrides, e.g. ``pgd:steps=50:restarts=2``."""

    name: str
    params: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        """Name used in results: ``pgd`` at the defaults, ``pgd[steps=50]`` for the parameters that
        differ from them (canonical spelling: :mod:`robaudit.metric_names`)."""
        return attack_label(self.name, self.params)

    def build(self):
        from .attacks import ATTACKS

        cls = ATTACKS.get(self.name)
        kwargs: dict[str, Any] = dict(self.params)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            import dataclasses

            names = [f.name for f in dataclasses.fields(cls) if f.name != "counter"]
            raise UsageError(f"attack {self.name!r}: {exc}; its parameters are: {', '.join(names)}") from None


def parse_attack_list(text: str) -> tuple[AttackSpec, ...]:
    """``quick`` | ``pgd:steps=50:restarts=2,fgsm`` | ``pgd:steps=50,restarts=2,fgsm``.

    Syntax of :func:`parse_spec_list`; presets (``quick``) expand in place.
    """
    specs: list[tuple[str, list[tuple[str, object]]]] = []
    for name, params in parse_spec_list(text, "attack"):
        if name in ATTACK_PRESETS and not params:
            specs.extend((spec.name, list(spec.params)) for spec in parse_attack_list(ATTACK_PRESETS[name]))
        else:
            specs.append((name, params))
    if not specs:
        raise UsageError("empty attack list; use e.g. --attacks quick or --attacks pgd:steps=50,fgsm")
    out = tuple(AttackSpec(n, tuple(p)) for n, p in specs)
    for spec in out:
        spec.build()  # validate names and parameters now, not halfway through a scan
    return tuple(AttackSpec(s.name, canonical_params(s.name, s.params)) for s in out)


CheckOptions = tuple[tuple[str, tuple[tuple[str, object], ...]], ...]


def parse_check_list(text: str | Sequence[str]) -> tuple[tuple[str, ...], CheckOptions]:
    """``clean,attacks,surfaces:steps=41:extent_factor=3`` (or a sequence of such entries; ``all``
    expands to :data:`ALL_CHECKS`) → (names, per-check parameter overrides), validated now."""
    from .checks.base import build_check

    text = text if isinstance(text, str) else ",".join(text)
    names: list[str] = []
    options: dict[str, tuple[tuple[str, object], ...]] = {}
    for name, params in parse_spec_list(text, "check"):
        expanded = ALL_CHECKS if name == "all" and not params else (name,)
        for n in expanded:
            if n not in names:
                names.append(n)
        if params:
            options[name] = options.get(name, ()) + tuple(params)
    if not names:
        raise UsageError("--checks is empty; e.g. --checks clean,attacks,margins")
    for n in names:
        build_check(n, options.get(n, ()))  # unknown names/parameters → UsageError now
    return tuple(names), tuple(options.items())


def ensemble_mode_for(attacks_text: str, requested: str | None) -> str:
    """``--ensemble`` if given, else the preset's mode (cascade for ``standard``), else independent."""
    if requested is not None:
        mode = requested.strip().lower()
        if mode not in ("independent", "cascade"):
            raise UsageError(f"--ensemble must be 'independent' or 'cascade', got {requested!r}")
        return mode
    return PRESET_MODE.get(attacks_text.strip().lower(), "independent")


def default_eps(input_shape: tuple[int, ...], norm: Norm, preset: str | None = None) -> tuple[float, ...]:
    """ε when none is given, on the [0,1] pixel scale: the ``paper`` preset's Yu et al. columns
    (:data:`PAPER_EPS`); otherwise 0.1 for 1-channel MNIST-like data, 8/255 for colour images
    (ℓ∞); ℓ2: 1.5 for MNIST-like, 0.5 for colour (RobustBench's CIFAR ℓ2 radius)."""
    grey = input_shape[0] == 1
    if preset == "paper":
        return PAPER_EPS["grey" if grey else "colour"]
    if norm is Norm.LINF:
        return (0.1,) if grey else (8 / 255,)
    return (1.5,) if grey else (0.5,)


def check_radii(
    eps: Sequence[float], norm: Norm | str, input_shape: Sequence[int] | None = None, *, given: str | None = None
) -> None:
    """Raise UsageError unless every radius means something on the [0,1] pixel cube.

    ε must be finite and >= 0 (ε = 0 is the clean accuracy, the first point of a sweep). ℓ∞: ε <= 1,
    since the ℓ∞ ball of radius 1 around any image already holds the whole cube [0,1]^d, so every
    larger ε is the same threat; ε > 1 is nearly always a value on the 0–255 scale (8 for 8/255).
    ℓ2: ε <= √d (d = C·H·W, checked when ``input_shape`` is known), the cube's diameter, for the
    same reason (√784 = 28 for 28×28 grey images, √3072 ≈ 55.4 for 32×32 colour ones).
    ``given``: the text the radii came from; a sweep (start:stop:count) is named in the message.
    """
    norm = Norm.parse(norm)
    source = f" (in --eps {given})" if given is not None and ":" in given else ""  # a sweep
    for e in eps:
        if not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0):
            raise UsageError(f"epsilon must be a finite number >= 0 on the [0,1] pixel scale, got {e!r}")
        if norm is Norm.LINF and e > 1:
            hint = f" (for {e:g} grey levels of 255 write {e:g}/255)" if e <= 255 and e == int(e) else ""
            raise UsageError(
                f"ℓ∞ epsilon {e:g}{source} is larger than 1, the whole [0,1] pixel range: every ℓ∞ radius >= 1 allows "
                f"any image. Radii are on the [0,1] scale{hint}"
            )
        if norm is Norm.L2 and input_shape is not None:
            d = math.prod(input_shape)
            if e > math.sqrt(d):
                raise UsageError(
                    f"ℓ2 epsilon {e:g}{source} is larger than √d = {math.sqrt(d):.4g}, the diameter of the [0,1] pixel cube of "
                    f"these {'×'.join(map(str, input_shape))} inputs: every larger ℓ2 radius allows any image. "
                    f"Radii are on the [0,1] pixel scale"
                )


@dataclass(frozen=True)
class ScanConfig:
    norm: Norm = Norm.LINF
    eps: tuple[float, ...] = ()  # empty → default_eps for the data
    attacks: tuple[AttackSpec, ...] = field(default_factory=lambda: parse_attack_list("quick"))
    checks: tuple[str, ...] = DEFAULT_CHECKS
    check_options: CheckOptions = ()  # (check name, ((parameter, value), ...)) overrides, see parse_check_list
    ensemble: str = "independent"  # or "cascade" (see checks/attacks.py)
    seed: int = 0
    device: str = "auto"
    batch_size: int = 256
    keep_examples: int = 8  # weakest samples whose adversarial examples are kept for the report
    preset: str | None = None  # the attack preset the list came from (its ε default: default_eps)
    compute_block: int | None = None  # run the model on blocks of exactly this many rows (engine.FixedBlockModel)
    workers: int | None = None  # DataLoader workers for lazy datasets (None: engine.default_workers())
    precision: str = "float32"  # the attacks' forward passes (PRECISIONS); checked_precision() for the device
    # the model and its 4-d inputs in torch.channels_last: True/False forced, None chosen at scan start (robaudit.memory_format)
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        check_radii(self.eps, self.norm)  # ℓ2's bound needs the data: radii()

    def radii(self, input_shape: Sequence[int]) -> tuple[float, ...]:
        """The radii of this scan for inputs of ``input_shape`` (``eps``, or :func:`default_eps`), checked."""
        eps = tuple(self.eps) if self.eps else default_eps(tuple(input_shape), self.norm, self.preset)
        check_radii(eps, self.norm, input_shape)
        return eps

    @classmethod
    def parse(
        cls,
        *,
        norm: str = "linf",
        eps: str | Sequence[float] | None = None,
        attacks: str = "quick",
        ensemble: str | None = None,
        checks: str | Sequence[str] = DEFAULT_CHECKS,
        seed: int = 0,
        device: str = "auto",
        batch_size: int = 256,
        compute_block: int | None = None,
        workers: int | None = None,
        precision: str = "float32",
        channels_last: bool | None = None,
    ) -> ScanConfig:
        """The config from the CLI's / API's strings, every usage error raised here, before heavy work."""
        if batch_size < 1:
            raise UsageError("--batch-size must be >= 1")
        if compute_block is not None and not 1 <= compute_block <= batch_size:
            raise UsageError(f"--compute-block must be between 1 and --batch-size ({batch_size}), got {compute_block}")
        if workers is not None and workers < 0:
            raise UsageError(f"--workers must be >= 0, got {workers}")
        precision = str(precision).strip().lower()
        if precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if isinstance(eps, str):
            eps_t = tuple(parse_eps_list(eps)) if eps.strip() else ()
        else:
            eps_t = tuple(float(e) for e in eps) if eps else ()
        check_radii(eps_t, norm, given=eps if isinstance(eps, str) else None)
        names, options = parse_check_list(checks)
        preset = attacks.strip().lower()
        return cls(
            norm=Norm.parse(norm),
            eps=eps_t,
            attacks=parse_attack_list(attacks),
            ensemble=ensemble_mode_for(attacks, ensemble),
            checks=names,
            check_options=options,
            seed=seed,
            device=device,
            batch_size=batch_size,
            preset=preset if preset in ATTACK_PRESETS else None,
            compute_block=compute_block,
            workers=workers,
            precision=precision,
            channels_last=None if channels_last is None else bool(channels_last),
        )


def predict_metric_names(
    config: ScanConfig, *, input_shape: Sequence[int], num_classes: int, model=None, train_n: int | None = None
) -> PredictedMetrics:
    """Every metric name ``config``'s checks will produce on data of ``input_shape`` (ε defaults
    resolved as the scan resolves them); ``model`` (loaded, not run) names the spectra layers."""
    from .checks.base import MetricPlan, build_check

    plan = MetricPlan(
        config=config,
        eps=config.radii(tuple(input_shape)),
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        train_n=train_n,
        model=model,
    )
    options = dict(config.check_options)
    names: dict[str, None] = {}
    unknown = []
    for check_name in config.checks:
        got = build_check(check_name, options.get(check_name, ())).metric_names(plan)
        if got is None:
            unknown.append(check_name)
        else:
            names.update(dict.fromkeys(got))
    return PredictedMetrics(tuple(names), tuple(unknown))
