"""Certified robust accuracy: a lower bound beside the attacks' upper bound.

For every clean-correct sample and every ε, a lower bound of each margin z_y − z_j (j ≠ y, logits)
over the threat set — the ε-ball of ``--norm`` intersected with the [0,1] box, in pixel space,
through the model's own normalization — from :mod:`robaudit.certify` (IBP: Gowal et al. 2018;
CROWN: Zhang et al. 2018; α-CROWN: Xu et al. 2021; exact: a MILP per sample, Tjeng et al. 2019).
A sample is *certified* when every lower bound is > 0: no attack can break it. With the attacks
in the same scan the section brackets the truth per ε:

    certified accuracy ≤ true robust accuracy ≤ attacked (worst-case) robust accuracy

and counts the *unresolved* samples (neither certified nor broken). ``method=exact`` decides every
sample within its time limit (certified, or falsified by a counterexample that the float32 model
misclassifies, which lowers the upper bound like an attack success).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import UsageError
from ..metric_names import certified_acc_name, certify_metric_name
from ..parts import Part
from ..schema import Flag, Section, section
from ..threat import format_eps
from .base import CHECKS, Check

__all__ = ["CertifyRun", "CertifySection", "CertifyCheck", "STATUSES"]

METHODS = ("ibp", "crown", "alpha-crown", "exact")
# per sample and ε: certified; unknown (bound ≤ 0, not decided); incorrect (misclassified clean);
# broken (an attack of the same scan broke it at this or a smaller ε: not bounded, skip_broken);
# exact only: falsified (counterexample), timeout, undecided (within the solver's tolerance),
# skipped (more binary variables than max_unstable)
STATUSES = ("certified", "unknown", "incorrect", "broken", "falsified", "timeout", "undecided", "skipped")


@dataclass(frozen=True)
class CertifyRun:
    """One ε. certified_accuracy: certified samples / all n. upper_accuracy: the attacks' worst
    case (robust at this and every smaller ε) with exact's counterexamples removed, None when neither
    ran; n_unresolved: samples in the upper but not the lower bound. Per sample: certified,
    lower (the lower bound of the smallest margin, logits; None for a misclassified sample),
    status (:data:`STATUSES`)."""

    eps: float
    certified_accuracy: float
    n_certified: int
    upper_accuracy: float | None
    n_unresolved: int | None
    n_falsified: int
    seconds: float
    certified: tuple[bool, ...]
    lower: tuple[float | None, ...]
    status: tuple[str, ...]
    unresolved: tuple[bool, ...] = ()
    per_sample_fields: ClassVar = ("certified", "lower", "status", "unresolved")
    counted_fields: ClassVar = (("n_certified", "certified"),)


@section("certify")
@dataclass(frozen=True)
class CertifySection(Section):
    """norm, method ('ibp', 'crown', 'alpha-crown', 'exact') and ``intermediate`` (how the
    pre-activation boxes were bounded: 'ibp' or 'crown'); runs per ε ascending. ``blocked_by``: the
    layers outside the supported operators (no runs then); ``untraceable``: why the model's graph
    could not be traced. ``radius``: per sample, the largest ε certified by bisection (pixel scale;
    None for a misclassified sample), when asked for; ``radius_max``: the top of its search."""

    norm: str
    method: str
    intermediate: str
    eps: tuple[float, ...]
    runs: tuple[CertifyRun, ...]
    relu_units: int = 0
    blocked_by: tuple[str, ...] = ()
    untraceable: str | None = None
    radius: tuple[float | None, ...] = ()
    radius_max: float | None = None
    per_sample_fields: ClassVar = ("radius",)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.runs:
            out[certified_acc_name(self.method, self.norm, r.eps)] = r.certified_accuracy
            if r.upper_accuracy is not None and r.n_unresolved is not None:
                out[certify_metric_name("upper", self.method, self.norm, r.eps)] = r.upper_accuracy
                unresolved = r.n_unresolved / max(len(r.certified), 1)
                out[certify_metric_name("unresolved", self.method, self.norm, r.eps)] = unresolved
        radii = [v for v in self.radius if v is not None]
        if radii:
            out["certify.radius_median"] = float(torch.tensor(radii, dtype=torch.float64).median())
        return out

    def outcomes(self) -> dict[str, tuple[bool, ...]]:
        out = {certified_acc_name(self.method, self.norm, r.eps): tuple(r.certified) for r in self.runs}
        for r in self.runs:
            if r.upper_accuracy is not None and r.unresolved:
                out[certify_metric_name("unresolved", self.method, self.norm, r.eps)] = tuple(r.unresolved)
                upper = tuple(c or u for c, u in zip(r.certified, r.unresolved))
                out[certify_metric_name("upper", self.method, self.norm, r.eps)] = upper
        return out


@CHECKS.register("certify")
class CertifyCheck(Check):
    """Per-sample records (table ``samples``) for run r (ε ascending): ``certified.r``, ``lower.r``,
    ``status.r``; ``radius`` with ``radius=true``. Extra: seconds per ε, the traced graph's ReLU
    count, or why it could not be certified (blocking layers / untraceable)."""

    name = "certify"
    requires = ("clean",)
    after = ("attacks",)  # runs after the attacks when both are selected: the bracket needs them
    description = "certified robust accuracy (IBP / CROWN / exact MILP lower bound) beside the attacks"

    method: str = "crown"
    intermediate: str = "auto"  # pre-activation boxes: crown (tight), ibp (cheap, CROWN-IBP); auto: the method's own
    alpha_steps: int = 20  # alpha-crown: Adam steps on the lower ReLU slopes
    time_limit: float = 30.0  # exact: seconds per sample and ε
    max_unstable: int = 400  # exact: refuse models whose probed samples need more binary variables
    radius: bool = False  # also the largest certified ε per sample (bisection with the method; crown for exact)
    radius_steps: int = 12
    skip_broken: bool = (
        True  # don't bound samples an attack of this scan broke at ε (false: bound them, a soundness cross-check)
    )
    dtype: str = "auto"  # bounds in float32 or float64 (auto: float64 for exact and under --compute-block)

    # --- settings ---------------------------------------------------------------------------------
    def _validate(self, norm: str) -> None:
        if self.method not in METHODS:
            raise UsageError(f"certify:method={self.method!r} is not one of {', '.join(METHODS)}")
        if self.intermediate not in ("auto", "ibp", "crown"):
            raise UsageError(f"certify:intermediate={self.intermediate!r} must be auto, ibp or crown")
        if self.dtype not in ("auto", "float32", "float64"):
            raise UsageError(f"certify:dtype={self.dtype!r} must be auto, float32 or float64")
        if self.method == "exact" and norm != "linf":
            raise UsageError(
                "certify:method=exact works with --norm linf only (an ℓ2 ball is not a set of linear "
                "constraints); use certify:method=crown for ℓ2"
            )
        for key in ("alpha_steps", "radius_steps", "max_unstable"):
            if getattr(self, key) < 0:
                raise UsageError(f"certify:{key} must be >= 0")
        if not self.time_limit > 0:
            raise UsageError("certify:time_limit must be > 0 seconds")

    def _bound_method(self) -> str:
        return "crown" if self.method == "exact" else self.method

    def _intermediate(self) -> str:
        if self.intermediate != "auto":
            return self.intermediate
        return "ibp" if self.method == "ibp" else "crown"

    def _dtype(self, config) -> torch.dtype:
        """float64 for exact (its big-M constants) and under --compute-block (whose promise is the same
        JSON at any batch size: float32 bounds differ in their last bits with the batch's kernels);
        float32 otherwise."""
        if self.dtype == "auto":
            return torch.float64 if self.method == "exact" or config.compute_block else torch.float32
        return getattr(torch, self.dtype)

    # --- planning ---------------------------------------------------------------------------------
    def metric_names(self, plan) -> tuple[str, ...]:
        self._validate(plan.config.norm.value)
        norm = plan.config.norm.value
        with_upper = "attacks" in plan.config.checks or self.method == "exact"
        names = []
        for eps in sorted(plan.eps):
            names.append(certified_acc_name(self.method, norm, eps))
            if with_upper:
                names += [
                    certify_metric_name("upper", self.method, norm, eps),
                    certify_metric_name("unresolved", self.method, norm, eps),
                ]
        if self.radius:
            names.append("certify.radius_median")
        return tuple(names)

    def max_passes(self, plan) -> tuple[float, float] | None:
        """In model-pass equivalents per sample: IBP ≈ 2 forwards per ε; CROWN ≤ one pass back
        through the layers per bound row — two per neuron of every tightened pre-activation layer
        (an upper bound: only the unstable ones are tightened) plus one per other class; α-CROWN
        adds 2 × steps × rows.
        None for exact (a MILP's time is not bounded by passes; its time limit is) or without a model."""
        if self.method == "exact" or plan.model is None:
            return None
        from ..certify import UnsupportedModel, UntraceableModel, trace
        from ..certify.bounds import tightened_nodes

        try:
            graph = trace(plan.model, tuple(plan.input_shape))
        except (UnsupportedModel, UntraceableModel):
            return (0.0, 0.0)
        rows = float(plan.num_classes - 1)  # each bound row costs about one pass back through the layers
        if self._intermediate() == "crown":
            rows += sum(2 * math.prod(graph.nodes[i].shape) for i in tightened_nodes(graph, plan.config.norm.value))
        if self.method == "alpha-crown":
            rows += 2 * self.alpha_steps * (plan.num_classes - 1)
        per_eps = len(plan.eps) + (self.radius_steps if self.radius else 0)
        # counted as passes with a backward (the estimate's second figure) and, like them, in the total
        return (2.0 + rows) * per_eps, rows * per_eps

    def preflight(self, ctx) -> None:
        """Before any check runs: the settings, and for ``exact`` the size of the programs on the
        scan's first samples at the largest ε (exit 2 when they exceed ``max_unstable``)."""
        self._validate(ctx.config.norm.value)
        if self.method != "exact":
            return
        from ..certify import ThreatSet, UnsupportedModel, UntraceableModel, margin_spec, spec_bounds
        from ..certify.exact import count_binaries

        try:
            graph = self._trace(ctx)
        except (UnsupportedModel, UntraceableModel):
            return  # the section says why; not an error
        probe = torch.arange(min(ctx.data.n, 16))
        x = ctx.data.batch(probe).to(ctx.device)
        y = ctx.data.y[probe].to(ctx.device)
        eps = max(ctx.eps)
        with torch.no_grad():
            threat = ThreatSet(x.to(self._dtype(ctx.config)), eps, ctx.config.norm.value)
            _, bounds = spec_bounds(graph, threat, margin_spec(y, graph.num_classes, self._dtype(ctx.config)), "crown")
            counts = count_binaries(graph, bounds)
        worst = int(counts.argmax())
        if int(counts[worst]) > self.max_unstable:
            index = int(ctx.data.dataset_indices[probe[worst]])
            raise UsageError(
                f"certify:method=exact: sample {index} needs {int(counts[worst])} binary variables (unstable ReLUs) at "
                f"ε={format_eps(eps)}, more than max_unstable={self.max_unstable}; exact verification could take hours — "
                f"use certify:method=crown or alpha-crown, a smaller --eps, or raise certify:max_unstable"
            )

    def _trace(self, ctx):
        from ..certify import trace

        cached = ctx.cache.get("certify_graph")
        if cached is None:
            try:
                cached = trace(ctx.plain_model, tuple(ctx.data.input_shape), device=ctx.device)
            except Exception as exc:  # noqa: BLE001 - kept to re-raise the same way in compute
                cached = exc
            ctx.cache["certify_graph"] = cached
        if isinstance(cached, Exception):
            raise cached
        return cached

    # --- compute ----------------------------------------------------------------------------------
    def compute(self, ctx) -> Part:
        from ..certify import UnsupportedModel, UntraceableModel

        self._validate(ctx.config.norm.value)
        part = Part()
        try:
            graph = self._trace(ctx)
        except UnsupportedModel as exc:
            part.extra["blocked_by"] = exc.blocking
            return part
        except UntraceableModel as exc:
            part.extra["untraceable"] = str(exc)
            return part
        part.extra["relu_units"] = graph.relu_units()
        clean = ctx.local("clean")
        correct = torch.tensor(clean.col("correct"), dtype=torch.bool)
        n = int(ctx.positions.numel())
        broken = self._broken_by_attacks(ctx, n) if self.skip_broken else {}
        columns: dict[str, list] = {}
        seconds = []
        for r, eps in enumerate(sorted(ctx.eps)):
            t0 = time.perf_counter()
            certified, lower, status = self._at_eps(ctx, graph, eps, correct, n, broken.get(eps))
            columns.update({f"certified.{r}": certified, f"lower.{r}": lower, f"status.{r}": status})
            seconds.append(round(time.perf_counter() - t0, 4))
        if self.radius:
            columns["radius"] = self._radii(ctx, graph, correct, n)
        part.extra["seconds"] = seconds
        part.add("samples", ctx.positions, **columns)
        return part

    @staticmethod
    def _broken_by_attacks(ctx, n: int) -> dict[float, torch.Tensor]:
        """ε → this process's samples an attack of the same scan broke at ε or a smaller ε (the
        attacks check's records: run r is ε index r // len(attacks), attack r % len(attacks))."""
        table = ctx.local("attacks")
        specs = ctx.config.attacks
        if not len(table) or not specs:
            return {}
        out: dict[float, torch.Tensor] = {}
        carried = torch.zeros(n, dtype=torch.bool)
        for k, eps in enumerate(sorted(ctx.eps)):
            for a in range(len(specs)):
                carried = carried | torch.tensor(table.col(f"broken.{k * len(specs) + a}"), dtype=torch.bool)
            out[eps] = carried.clone()
        return out

    def _at_eps(self, ctx, graph, eps: float, correct: torch.Tensor, n: int, broken: torch.Tensor | None = None):
        from ..certify import ThreatSet, margin_spec, spec_bounds

        certified = [False] * n
        lower: list[float | None] = [None] * n
        status = ["incorrect"] * n
        if broken is not None:  # an attack found an adversarial example: it can't be certified
            for i in (correct & broken).nonzero().squeeze(1).tolist():
                status[i] = "broken"
            correct = correct & ~broken
        rows = correct.nonzero().squeeze(1)
        if not rows.numel():
            return certified, lower, status
        verifier = self._verifier(ctx, graph) if self.method == "exact" else None
        dtype = self._dtype(ctx.config)
        norm = ctx.config.norm.value
        tag = f"certify {self.method} {norm}@{format_eps(eps)}"

        def batch(x, y, sl):
            local = rows[sl].tolist()
            threat = ThreatSet(x.to(dtype), eps, norm)
            spec = margin_spec(y, graph.num_classes, dtype)
            with torch.no_grad():
                low, bounds = spec_bounds(
                    graph,
                    threat,
                    spec,
                    self._bound_method(),
                    intermediate=self._intermediate(),
                    alpha_steps=self.alpha_steps,
                    progress=ctx.within,
                )
            worst = low.min(1).values.double().cpu()
            for k, i in enumerate(local):
                lower[i] = float(worst[k])
                certified[i] = bool(worst[k] > 0)
                status[i] = "certified" if certified[i] else "unknown"
            if verifier is not None:
                self._exact(verifier, x, y, eps, bounds, low, local, certified, lower, status, graph, ctx.within)

        ctx.map_batches(batch, indices=ctx.positions[rows], description=tag)
        return certified, lower, status

    def _verifier(self, ctx, graph):
        from ..certify.exact import ExactVerifier

        cached = ctx.cache.get("certify_verifier")
        if cached is None:
            cached = ctx.cache["certify_verifier"] = ExactVerifier(graph, ctx.plain_model, self.time_limit)
        return cached

    def _exact(self, verifier, x, y, eps, bounds, low, local, certified, lower, status, graph, progress) -> None:
        """MILP for the samples CROWN left undecided (one program per sample; time limit each)."""
        from ..certify import other_classes
        from ..certify.exact import count_binaries

        others = other_classes(y, graph.num_classes).cpu()
        binaries = count_binaries(graph, bounds).cpu()
        for k, i in enumerate(local):
            if certified[i]:
                continue
            if int(binaries[k]) > self.max_unstable:
                status[i] = "skipped"
                continue
            with _quiet_stdout():
                out = verifier.verify(
                    x[k], int(y[k]), eps, [(lo[k], hi[k]) for lo, hi in bounds], low[k].double().cpu(), others[k]
                )
            status[i] = out.status
            lower[i] = out.lower
            certified[i] = out.status == "certified"
            progress((k + 1) / len(local))

    def _radii(self, ctx, graph, correct: torch.Tensor, n: int) -> list[float | None]:
        """Per clean-correct sample: the largest ε in [0, radius_max] certified by the bound method,
        by bisection (``radius_steps`` halvings; the radius reported is the last certified one, so
        a lower bound of the sample's certified radius to within radius_max / 2^steps)."""
        from ..certify import ThreatSet, margin_spec, spec_bounds

        radii: list[float | None] = [None] * n
        rows = correct.nonzero().squeeze(1)
        top = self.radius_max(ctx.eps)
        dtype = self._dtype(ctx.config)
        method = self._bound_method()

        def batch(x, y, sl):
            lo = torch.zeros(x.shape[0], dtype=torch.float64)
            hi = torch.full((x.shape[0],), top, dtype=torch.float64)
            spec = margin_spec(y, graph.num_classes, dtype)

            def certified_at(eps: torch.Tensor) -> torch.Tensor:
                threat = ThreatSet(x.to(dtype), eps.to(x.device, dtype), ctx.config.norm.value)
                with torch.no_grad():
                    low, _ = spec_bounds(
                        graph, threat, spec, method, intermediate=self._intermediate(), alpha_steps=self.alpha_steps
                    )
                return (low.min(1).values > 0).cpu()

            ok_top = certified_at(hi)
            lo = torch.where(ok_top, hi, lo)
            for step in range(self.radius_steps):
                mid = (lo + hi) / 2
                ok = certified_at(mid) & ~ok_top
                lo = torch.where(ok, mid, lo)
                hi = torch.where(ok | ok_top, hi, mid)
                ctx.within((step + 1) / (self.radius_steps + 1))
            for k, i in enumerate(rows[sl].tolist()):
                radii[i] = float(lo[k])

        ctx.map_batches(batch, indices=ctx.positions[rows], description=f"certify radius ({method})")
        return radii

    @staticmethod
    def radius_max(eps) -> float:
        """The top of the radius search: twice the largest scan ε (pixel scale)."""
        return 2.0 * max(max(eps), 1e-3)

    # --- combine ----------------------------------------------------------------------------------
    def combine(self, tables, extras, info) -> CertifySection:
        norm = info.config.norm.value
        blocked = next((tuple(e["blocked_by"]) for e in extras if e.get("blocked_by")), ())
        untraceable = next((e["untraceable"] for e in extras if e.get("untraceable")), None)
        base = dict(norm=norm, method=self.method, intermediate=self._intermediate(), eps=tuple(sorted(info.eps)))
        if blocked or untraceable:
            return CertifySection(**base, runs=(), blocked_by=blocked, untraceable=untraceable)
        t = tables["samples"]
        n = info.n
        clean_correct = info.clean().tensor("correct", torch.bool)
        attacks = info.sections.get("attacks")
        ensemble = getattr(attacks, "ensemble_robust", None) if getattr(attacks, "norm", None) == norm else None
        runs = []
        for r, eps in enumerate(sorted(info.eps)):
            certified = t.tensor(f"certified.{r}", torch.bool)
            status = list(t.col(f"status.{r}"))
            falsified = torch.tensor([s == "falsified" for s in status], dtype=torch.bool)
            attacked = ensemble.get(format_eps(eps)) if ensemble is not None else None
            if attacked is None and self.method != "exact":
                upper = None
            else:
                upper = clean_correct & ~falsified
                if attacked is not None:
                    upper &= torch.tensor(attacked, dtype=torch.bool)
            unresolved = (upper & ~certified) if upper is not None else None
            if upper is not None and bool((certified & ~upper).any()):
                bad = int((certified & ~upper).sum())
                info.flags.append(
                    Flag(
                        "certified-but-broken",
                        (
                            f"at ε={format_eps(eps)}, {bad} sample(s) certified by {self.method} were broken by an attack: a "
                            f"certificate must never be broken — this is a bug in the bound or the attack; please report it"
                        ),
                        severity="error",
                    )
                )
            seconds = max((e["seconds"][r] for e in extras if e.get("seconds")), default=0.0)
            runs.append(
                CertifyRun(
                    eps=eps,
                    certified_accuracy=float(certified.double().mean()) if n else 0.0,
                    n_certified=int(certified.sum()),
                    upper_accuracy=float(upper.double().mean()) if upper is not None and n else None,
                    n_unresolved=int(unresolved.sum()) if unresolved is not None else None,
                    n_falsified=int(falsified.sum()),
                    seconds=seconds,
                    certified=tuple(bool(v) for v in certified.tolist()),
                    lower=tuple(None if v is None else round(float(v), 6) for v in t.col(f"lower.{r}")),
                    status=tuple(status),
                    unresolved=tuple(bool(v) for v in unresolved.tolist()) if unresolved is not None else (),
                )
            )
        radius = tuple(None if v is None else round(float(v), 6) for v in t.col("radius")) if t.has("radius") else ()
        relu = next((int(e["relu_units"]) for e in extras if "relu_units" in e), 0)
        return CertifySection(
            **base, runs=tuple(runs), relu_units=relu, radius=radius, radius_max=self.radius_max(info.eps) if radius else None
        )


@contextlib.contextmanager
def _quiet_stdout():
    """HiGHS prints some solver messages from C++ straight to file descriptor 1, whatever its
    options say; keep them off the user's terminal and out of piped output."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
