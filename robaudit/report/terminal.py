"""Rich terminal summary: the verdict first, then compact tables. Reads only ScanResult.

Colour is decoration only: every status is also a word, so NO_COLOR terminals read the same.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from ..console import make_console, styled
from ..metric_names import robust_acc_name
from ..results import ScanResult
from ..stats import proportion
from ..threat import format_eps
from .verdict import fraction_text, headline, recipe

__all__ = ["print_summary", "geometry_tables", "pct_ci"]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def pct_ci(v: float | None, p=None) -> str:
    """A fraction as ``5.0% [1.0, 13.9]`` (95% Clopper–Pearson interval in points), or just ``5.0%``."""
    if v is None:
        return "—"
    return _pct(v) if p is None else f"{_pct(v)} [{100 * p.lower:.1f}, {100 * p.upper:.1f}]"


def _fixed(v, decimals: int = 3) -> str:
    """A number with ``decimals`` decimals; '—' for none."""
    return "—" if v is None else f"{float(v):.{decimals}f}"


def _negative_fraction_interval(margins):
    """The 95% interval of the fraction of negative margins, counted from the per-sample margins."""
    values = [m for m in margins or () if isinstance(m, (int, float)) and m == m]
    return proportion(k=sum(m < 0 for m in values), n=len(values)) if values else None


def _num(v, digits: int = 4) -> str:
    """A number to ``digits`` significant digits; '—' for none."""
    return "—" if v is None else f"{float(v):.{digits}g}"


def _table(title: str, columns: list[str], row: list[str | Text]) -> Table:
    """A one-row table: a few key numbers of one section."""
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="right")
    t.add_row(*row)
    return t


def _typed(result: ScanResult, name: str):
    sec = result.section(name)
    return None if sec is None or isinstance(sec, dict) else sec


def _median(values) -> float | None:
    vals = sorted(float(v) for v in values or () if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])


def _minimal_table(sec) -> Table:
    """Minimal perturbation ‖δ‖ (threat norm, pixel scale): median and quantiles."""
    q = sec.quantiles
    return _table(
        f"Minimal perturbation ‖δ‖ ({sec.norm}, pixel space [0,1]; attack-found upper bounds)",
        ["found / attacked", "q05", "q25", "median", "q75", "q95", "mean"],
        [
            f"{sec.n_found}/{sec.n_attacked}",
            _num(q.get("05")),
            _num(q.get("25")),
            _num(sec.median),
            _num(q.get("75")),
            _num(q.get("95")),
            _num(sec.mean),
        ],
    )


def _jacobian_table(sec) -> Table:
    """Margin and loss gradients (per unit pixel intensity): ℓ1 norms and near-zero entries."""
    m, c = sec.margin, sec.ce
    return _table(
        "Input Jacobian (pixel space [0,1]; ∂L/∂x in logits/pixel, ∇ℓ in nats/pixel)",
        ["mean ‖∂L/∂x‖₁", "median ‖∂L/∂x‖₁", f"∂L/∂x entries < {sec.zero_threshold:g}", "mean ‖∇ℓ‖₁", "∇ℓ entries near 0"],
        [_num(m.mean_l1), _num(m.median_l1), _pct(m.mean_zero_fraction), _num(c.mean_l1), _pct(c.mean_zero_fraction)],
    )


def _curvature_table(sec) -> Table:
    """Hessian of the loss (nats/pixel²): λ_max, alignment, ‖Hz‖ medians."""
    ex, fd = sec.exact, sec.finite_difference
    return _table(
        f"Curvature of the loss ({sec.n_samples} samples; nats/pixel², pixel space [0,1])",
        ["λ_max exact (median)", "λ_max FD (median)", "alignment exact", "alignment FD", "‖Hz‖ exact", "‖Hz‖ FD"],
        [
            _num(getattr(ex, "lambda_max_median", None)),
            _num(getattr(fd, "lambda_max_median", None)),
            _num(getattr(ex, "alignment_mean", None), 3),
            _num(getattr(fd, "alignment_mean", None), 3),
            _num(_median(sec.hz_exact)),
            _num(_median(sec.hz_fd)),
        ],
    )


def _indicator_table(sec) -> Table:
    """Theorem-1 coverage (fractions) and the Eq. 9 indicator (radii, pixel scale) with Spearman ρ."""
    fd = sec.theorem1.get("finite_difference")
    ex = sec.theorem1.get("exact")
    return _table(
        f"Bounds and indicator ({sec.n_samples} samples; median radii, pixel scale; ρ vs attack radii)",
        ["Thm 1 within, FD", "Thm 1 within, exact", "indicator ℓ∞", "ρ ℓ∞", "indicator ℓ2", "ρ ℓ2"],
        [
            _pct(getattr(fd, "fraction_within", None)),
            _pct(getattr(ex, "fraction_within", None)),
            _num(sec.indicator_linf),
            _num(sec.spearman_linf, 3),
            _num(sec.indicator_l2),
            _num(sec.spearman_l2, 3),
        ],
    )


def _spectra_table(sec) -> Table | None:
    """Largest spectral norm, mean per-layer std and worst condition ratio (weight units)."""
    if not sec.layers:
        return None
    largest = max(sec.layers, key=lambda layer: layer.sigma_max)
    ratios = [layer.ratio for layer in sec.layers if layer.ratio is not None]
    return _table(
        f"Layer spectra ({len(sec.layers)} weight matrices; singular values in weight units)",
        ["largest σ_max", "in layer", "mean std of σ", "largest σ_max/σ_min"],
        [
            _num(largest.sigma_max),
            Text(largest.name),
            _num(sum(layer.std for layer in sec.layers) / len(sec.layers)),
            _num(max(ratios)) if ratios else "—",
        ],
    )


def _surfaces_table(sec) -> Table | None:
    """Per plane, averaged over the samples: misclassified fraction within ε and min margin (logits)."""
    metrics = sec.metrics()
    names = [k.split(".")[1] for k in metrics if k.endswith(".fraction_misclassified_within_eps")]
    if not names:
        return None
    t = Table(title=f"Decision surfaces ({len(sec.samples)} samples, {sec.norm} ε={sec.eps:g})", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("plane u", "left"),
        ("misclassified within ε", "right"),
        ("min L within ε (logits)", "right"),
    )
    for col, just in columns:
        t.add_column(col, justify=just)
    for name in names:
        t.add_row(
            Text(name),
            _pct(metrics[f"surfaces.{name}.fraction_misclassified_within_eps"]),
            _num(metrics[f"surfaces.{name}.min_margin_within_eps"]),
        )
    return t


def _landscape_table(sec) -> Table | None:
    """Parameter-space landscape: loss at θ and its rises (nats)."""
    if sec.skipped:
        return None
    return _table(
        f"Loss landscape, weight space (n={sec.n_samples}; nats)",
        ["loss at θ", "accuracy at θ", "sharpness 1-D", "mean rise 2-D"],
        [_num(sec.center_loss), _pct(sec.center_accuracy), _num(sec.sharpness_1d), _num(sec.mean_increase_2d)],
    )


_GEOMETRY_TABLES = {
    "minimal": _minimal_table,
    "jacobian": _jacobian_table,
    "curvature": _curvature_table,
    "indicator": _indicator_table,
    "spectra": _spectra_table,
    "surfaces": _surfaces_table,
    "landscape": _landscape_table,
}


def geometry_tables(result: ScanResult) -> list[Table]:
    """Compact tables for the geometry sections present, in the result's section order."""
    tables = []
    for name in result.sections:
        fn = _GEOMETRY_TABLES.get(name)
        sec = _typed(result, name) if fn else None
        table = fn(sec) if fn is not None and sec is not None else None
        if table is not None:
            tables.append(table)
    return tables


def certify_lines(sec) -> list[str]:
    """Why a certify section has no runs (blocking layers, an untraceable graph), as text lines."""
    if sec.untraceable:
        return [f"CERTIFY: not run: the model's graph can't be traced ({sec.untraceable}); the rest of the scan ran"]
    if sec.blocked_by:
        return [
            f"CERTIFY: not run: certification is blocked by {'; '.join(sec.blocked_by)} (operators outside "
            "the supported set, docs/certify.md); the rest of the scan ran"
        ]
    return []


def certify_table(sec, result: ScanResult) -> Table | None:
    """Per ε: certified accuracy (lower bound), the attacks' worst case (upper bound) and the
    samples in between, each accuracy with its 95% interval."""
    if not sec.runs:
        return None
    from ..metric_names import certified_acc_name, certify_metric_name

    intervals = result.intervals()
    exact = sec.method == "exact"
    inter = "" if sec.method == "ibp" or exact else f", pre-activation boxes by {sec.intermediate}"
    t = Table(
        title=(
            f"Certified vs attacked robust accuracy ({sec.norm}, pixel space [0,1]; {sec.method}{inter}; "
            f"n={result.provenance.n}, 95% Clopper–Pearson interval): certified ≤ true ≤ attacked"
        ),
        title_justify="left",
    )
    columns = ["ε", f"certified ({sec.method}) [95% CI]", "attacked worst case [95% CI]", "unresolved"]
    if exact:
        columns += ["falsified", "timeout"]
    columns += ["time"]
    for col in columns:
        t.add_column(col, justify="right")
    for r in sec.runs:
        cert = pct_ci(r.certified_accuracy, intervals.get(certified_acc_name(sec.method, sec.norm, r.eps)))
        upper = pct_ci(r.upper_accuracy, intervals.get(certify_metric_name("upper", sec.method, sec.norm, r.eps)))
        unresolved = "—" if r.n_unresolved is None else str(r.n_unresolved)
        row = [format_eps(r.eps), cert, upper if r.upper_accuracy is not None else "— (no attacks)", unresolved]
        if exact:
            row += [str(r.n_falsified), str(sum(s in ("timeout", "undecided", "skipped") for s in r.status))]
        row.append(f"{r.seconds:.1f}s")
        t.add_row(*row)
    return t


def _fixed_batch_line(batch: int) -> str:
    """What auditing a model that runs at one batch size only costs."""
    if batch == 1:
        cost = "one model call per sample, no batching: about as slow as --batch-size 1"
    else:
        cost = (
            f"{batch} samples per model call; smaller calls (the last batch, the samples an attack still "
            f"queries) are padded to {batch} and pay for {batch}"
        )
    return (
        f"the model runs at batch size {batch} only, so it was audited at that size ({cost}); "
        f"re-export it with a dynamic batch dimension to batch freely"
    )


def _blackbox_only_line(c) -> str:
    """One line per ε: black-box successes on white-box survivors, and what the masking flag needs."""
    head = f"black-box after white-box at ε={format_eps(c.eps)}: broke {c.broken} of {c.attacked} white-box survivors"
    if c.attacked:
        head += f" ({c.broken / c.attacked:.1%})"
    need = f"the masking flag needs ≥ {c.needed}" if c.needed is not None else "too few survivors to test for masking"
    return f"{head}; {'flagged' if c.flagged else need} (docs/flags.md#flag-blackbox-beats-whitebox)"


def print_summary(result: ScanResult, console: Console | None = None) -> None:
    """The verdict, provenance line and tables. Every string is printed as text (the console's markup
    is off, see robaudit.console): paths, dataset, attack and class names can hold ``[`` or ``:``."""
    console = console or make_console()
    p = result.provenance
    attacks = _typed(result, "attacks")
    margins = _typed(result, "margins")

    console.print(styled(("robaudit", "bold"), f" {Path(p.checkpoint).name} on {p.dataset} ({p.split}, n={p.n})"))
    for h in headline(result):
        console.print(Text("  " + h.label + " ").append(fraction_text(h.value, h.p), style="bold"))
    rec = recipe(attacks) if attacks is not None else None
    if rec is not None:
        console.print(Text("  " + rec.sentence(), style="" if rec.autoattack else "yellow"), soft_wrap=True)
    for flag in result.flags:
        console.print(styled("  ", ("FLAG", "yellow"), f" {flag.code}: {flag.message} (docs/flags.md#flag-{flag.code})"))
    for w in result.model_warnings:
        console.print(styled("  ", ("WARNING", "yellow"), f" {w}"))
    console.print(
        Text(
            f"  {p.checkpoint_format} sha256:{p.checkpoint_sha256[:12]} · arch {p.arch or 'embedded'} · "
            f"device {p.device} · seed {p.seed} · pixel space [0,1]",
            style="dim",
        )
    )
    fixed = getattr(p, "fixed_batch", None)
    if fixed:
        console.print(styled("  ", ("FIXED BATCH", "yellow"), f" {_fixed_batch_line(fixed)}"))
    precision = getattr(p, "precision", "float32")
    if precision != "float32":
        console.print(
            styled(
                "  ",
                ("PRECISION", "yellow"),
                f" attacks ran in {precision} (torch.autocast); every "
                "adversarial example was re-checked in float32 before it counted",
            )
        )
    memory = getattr(p, "memory_format", None)
    if memory is not None and (memory.channels_last or memory.probe_rows is not None):
        console.print(Text(f"  {memory.summary()}", style="dim"))
    elif getattr(p, "channels_last", False):
        console.print(
            Text("  channels_last: the model and its image batches ran in torch.channels_last memory format", style="dim")
        )

    if attacks is not None and attacks.runs:
        mode = "each attack alone" if attacks.mode == "independent" else "cascade: after this and earlier attacks"
        intervals = result.intervals()
        t = Table(
            title=f"Robust accuracy ({attacks.norm}, pixel space [0,1]; {mode}; n={p.n}, 95% Clopper–Pearson interval)",
            title_justify="left",
        )
        columns: list[tuple[str, JustifyMethod]] = [
            ("attack", "left"),
            ("ε", "right"),
            ("robust acc [95% CI]", "right"),
            ("success rate [95% CI]", "right"),
            (f"mean ‖δ‖ ({attacks.norm})", "right"),
            ("fwd+bwd / sample", "right"),
            ("time", "right"),
        ]
        for col, just in columns:
            t.add_column(col, justify=just)
        for r in attacks.runs:
            t.add_row(
                Text(r.attack),
                format_eps(r.eps),
                pct_ci(r.robust_accuracy, intervals.get(robust_acc_name(r.attack, r.norm, r.eps))),
                pct_ci(r.success_rate, proportion(k=sum(r.broken), n=r.n_attacked) if r.n_attacked else None),
                "—" if r.mean_perturbation is None else f"{r.mean_perturbation:.4f}",
                f"{r.forward_per_sample:.0f}+{r.backward_per_sample:.0f}",
                f"{r.seconds:.1f}s",
            )
        for key, acc in attacks.ensemble.items():
            ci = pct_ci(acc, intervals.get(robust_acc_name("ensemble", attacks.norm, key)))
            t.add_row(Text("worst case", style="bold"), key, Text(ci, style="bold"), "", "", "", "")
        console.print(t)
        for c in getattr(attacks, "blackbox_only", ()):
            console.print(Text(f"  {_blackbox_only_line(c)}", style="dim"), soft_wrap=True)

    certify = _typed(result, "certify")
    if certify is not None:
        for line in certify_lines(certify):
            console.print(Text(f"  {line}", style="yellow"), soft_wrap=True)
        table = certify_table(certify, result)
        if table is not None:
            console.print(table)

    if margins is not None:
        t = Table(title="Margin L(x) = Z_y − max_{i≠y} Z_i (logits)", title_justify="left")
        for col in ("mean", "q05", "q25", "median", "q75", "q95", "L<0", "mean p(y|x)", "mean CE (nats)"):
            t.add_column(col, justify="right")
        q = margins.quantiles
        t.add_row(
            _fixed(margins.mean),
            _fixed(q.get("05")),
            _fixed(q.get("25")),
            _fixed(margins.median),
            _fixed(q.get("75")),
            _fixed(q.get("95")),
            pct_ci(margins.fraction_negative, _negative_fraction_interval(margins.margins)),
            _fixed(margins.mean_true_class_probability),
            _fixed(margins.mean_loss),
        )
        console.print(t)
    for table in geometry_tables(result):
        console.print(table)
    if result.timings:
        console.print(Text("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()), style="dim"))
