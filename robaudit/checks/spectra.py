"""Check ``spectra``: singular values of the raw network's weight matrices (ICML 2020 paper, 003 §4.2.2).

Every parameter with ≥ 2 dimensions of the raw network (the model inside robaudit's normalizing
wrapper; biases and norm-layer affine vectors are skipped) is read as a matrix with **one row per
output unit**: a Linear weight ``[out, in]`` as is; a convolution kernel ``[out, in/groups, k…]``
reshaped to ``out × (in/groups·k…)`` (the convention of 003 and most spectral-norm code; note that
the operator norm of the convolution itself, Sedghi et al. 2018, can exceed this matrix's σ_max).
For each: σ_max, σ_min (the smallest of the min(rows, cols) singular values), σ_max/σ_min (None
when σ_min = 0), their count, mean and standard deviation (003 compares the per-layer std between
robustness levels: smaller with stronger adversarial training) and up to :data:`MAX_VALUES` of the
singular values (descending; evenly subsampled beyond that). Computed in float64 by
``torch.linalg.svdvals``.

A model with no accessible parameters (some exported graphs keep weights as constants) falls back
to its floating-point buffers with ≥ 2 dimensions; with neither, the section says ``skipped``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..parts import Part
from ..schema import Section, from_jsonable, section, to_jsonable
from .base import CHECKS, Check

__all__ = ["MAX_VALUES", "LayerSpectrum", "SpectraSection", "SpectraCheck", "layer_spectrum"]

MAX_VALUES = 64


def _round(v: float) -> float:
    return float(f"{v:.7g}")


@dataclass(frozen=True)
class LayerSpectrum:
    """One weight: its name and shape, the matrix shape it was read as (rows = output units) and
    its singular-value statistics (weight units; ``ratio`` None when σ_min = 0)."""

    name: str
    shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    count: int
    sigma_max: float
    sigma_min: float
    ratio: float | None
    mean: float
    std: float
    values: tuple[float, ...]
    non_negative_fields: ClassVar = ("sigma_max", "sigma_min", "mean", "std", "values.*")  # singular values (results.Section)


@section("spectra")
@dataclass(frozen=True)
class SpectraSection(Section):
    """Per-layer singular values of the raw network's weights (``layers``, in parameter order).
    ``convention`` states how tensors become matrices; ``source``: "parameters", "buffers" or
    "skipped" (``reason`` then says why)."""

    convention: str
    source: str
    reason: str
    layers: tuple[LayerSpectrum, ...]

    def metrics(self) -> dict[str, float]:
        if not self.layers:
            return {}
        out = {
            "spectra.sigma_max_max": max(layer.sigma_max for layer in self.layers),
            "spectra.std_mean": sum(layer.std for layer in self.layers) / len(self.layers),
        }
        ratios = [layer.ratio for layer in self.layers if layer.ratio is not None]
        if ratios:
            out["spectra.ratio_max"] = max(ratios)
        for layer in self.layers:
            key = _layer_key(layer.name)
            out[f"spectra.{key}.sigma_max"] = layer.sigma_max
            out[f"spectra.{key}.std"] = layer.std
        return out

    def metric_names(self) -> tuple[str, ...]:
        return spectra_metric_names([layer.name for layer in self.layers])


def _layer_key(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def spectra_metric_names(layer_names) -> tuple[str, ...]:
    """The metric names of a spectra section over these weight tensors (none when there are none)."""
    if not layer_names:
        return ()
    names = ["spectra.sigma_max_max", "spectra.std_mean", "spectra.ratio_max"]
    for name in layer_names:
        names += [f"spectra.{_layer_key(name)}.sigma_max", f"spectra.{_layer_key(name)}.std"]
    return tuple(names)


def layer_spectrum(name: str, w: torch.Tensor) -> LayerSpectrum:
    """Singular-value statistics of ``w`` read as ``w.shape[0] × (rest)``."""
    m = w.detach().to(device="cpu", dtype=torch.float64).reshape(w.shape[0], -1)
    s = torch.linalg.svdvals(m)  # descending
    n = s.numel()
    if n > MAX_VALUES:
        keep = torch.linspace(0, n - 1, MAX_VALUES).round().long()
        shown = s[keep]
    else:
        shown = s
    smin = float(s[-1])
    return LayerSpectrum(
        name=name,
        shape=tuple(int(v) for v in w.shape),
        matrix_shape=(int(m.shape[0]), int(m.shape[1])),
        count=int(n),
        sigma_max=_round(float(s[0])),
        sigma_min=_round(smin),
        ratio=_round(float(s[0]) / smin) if smin > 0 and math.isfinite(float(s[0]) / smin) else None,
        mean=_round(float(s.mean())),
        std=_round(float(s.std(unbiased=False))) if n > 1 else 0.0,
        values=tuple(_round(float(v)) for v in shown),
    )


def _raw(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "inner", model)


@CHECKS.register("spectra")
class SpectraCheck(Check):
    name = "spectra"
    requires = ()
    description = "singular values of every weight matrix (per-layer spread, ICML 2020)"
    scope = "model"  # computed once, by the lead process

    def max_passes(self, plan) -> tuple[float, float]:
        return 0.0, 0.0  # weight matrices only: no model pass on the samples

    def metric_names(self, plan) -> tuple[str, ...] | None:
        if plan.model is None:
            return None
        _, _, named = weight_matrices(plan.model)
        return spectra_metric_names([n for n, _ in named])

    def compute(self, ctx) -> Part:
        return Part(extra={"section": to_jsonable(self._spectra(ctx))})

    def combine(self, tables, extras, info) -> SpectraSection:
        return from_jsonable(SpectraSection, next(e["section"] for e in extras if "section" in e))

    def _spectra(self, ctx) -> SpectraSection:
        convention = (
            "rows = output units: Linear [out, in] as is; conv [out, in/groups, k...] reshaped to out x (in/groups*k...)"
        )
        source, reason, named = weight_matrices(ctx.plain_model)
        if not named:
            return SpectraSection(convention, "skipped", reason, ())
        layers = []
        with ctx.task(f"spectra ({len(named)} weight matrices)", total=len(named)) as advance:
            for n, w in named:  # an SVD per layer: seconds for a large network
                layers.append(layer_spectrum(n, w))
                advance()
        return SpectraSection(convention, source, "", tuple(layers))


def weight_matrices(model: torch.nn.Module) -> tuple[str, str, list[tuple[str, torch.Tensor]]]:
    """(source, reason, [(name, tensor)]): the raw network's non-empty floating weights with ≥ 2
    dimensions, from its parameters, else its buffers (exported graphs); reason says why none."""
    net = _raw(model)
    try:
        named: list[tuple[str, torch.Tensor]] = [
            (n, p) for n, p in net.named_parameters() if p.dim() >= 2 and p.is_floating_point()
        ]
        source = "parameters"
        if not named:
            named = [(n, b) for n, b in net.named_buffers() if b is not None and b.dim() >= 2 and b.is_floating_point()]
            source = "buffers"
    except Exception as exc:  # noqa: BLE001 - exotic module types
        return "skipped", f"parameters not accessible ({type(exc).__name__}: {exc})", []
    named = [(n, w) for n, w in named if w.numel() > 0]
    if not named:
        return "skipped", "the model exposes no weight tensors with 2 or more dimensions", []
    return source, "", named
