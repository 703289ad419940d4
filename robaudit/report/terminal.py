"""Rich terminal summary: the verdict first, then compact tables. Reads only ScanResult.

Colour is decoration only: every status is also a word, so NO_COLOR terminals read the same.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..results import ScanResult
from ..threat import format_eps

__all__ = ["print_summary"]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def print_summary(result: ScanResult, console: Console | None = None) -> None:
    console = console or Console()
    p = result.provenance
    clean = result.section("clean")
    attacks = result.section("attacks")
    margins = result.section("margins")

    head = f"[bold]robaudit[/bold] {escape(Path(p.checkpoint).name)} on {escape(p.dataset)} ({p.split}, n={p.n})"
    console.print(head)
    verdict = []
    if clean is not None:
        verdict.append(f"clean accuracy [bold]{_pct(clean.accuracy)}[/bold]")
    if attacks is not None:
        for key, acc in attacks.ensemble.items():
            verdict.append(f"robust accuracy ({attacks.norm}, ε={key}, worst case) [bold]{_pct(acc)}[/bold]")
    console.print("  " + " · ".join(verdict))
    for flag in result.flags:
        console.print(f"  [yellow]FLAG[/yellow] {flag.code}: {escape(flag.message)} (docs/flags.md#flag-{flag.code})")
    for w in result.model_warnings:
        console.print(f"  [yellow]WARNING[/yellow] {escape(w)}")
    console.print(
        f"  [dim]{p.checkpoint_format} sha256:{p.checkpoint_sha256[:12]} · arch {p.arch or 'embedded'} · "
        f"device {p.device} · seed {p.seed} · pixel space [0,1][/dim]"
    )

    if attacks is not None and attacks.runs:
        mode = "each attack alone" if attacks.mode == "independent" else "cascade: after this and earlier attacks"
        t = Table(title=f"Robust accuracy ({attacks.norm}, pixel space [0,1]; {mode})", title_justify="left")
        for col, just in [
            ("attack", "left"),
            ("ε", "right"),
            ("robust acc", "right"),
            ("success rate", "right"),
            (f"mean ‖δ‖ ({attacks.norm})", "right"),
            ("fwd+bwd / sample", "right"),
            ("time", "right"),
        ]:
            t.add_column(col, justify=just)
        for r in attacks.runs:
            t.add_row(
                escape(r.attack),
                format_eps(r.eps),
                _pct(r.robust_accuracy),
                _pct(r.success_rate),
                "—" if r.mean_perturbation is None else f"{r.mean_perturbation:.4f}",
                f"{r.forward_per_sample:.0f}+{r.backward_per_sample:.0f}",
                f"{r.seconds:.1f}s",
            )
        for key, acc in attacks.ensemble.items():
            t.add_row("[bold]worst case[/bold]", key, f"[bold]{_pct(acc)}[/bold]", "", "", "", "")
        console.print(t)

    if margins is not None:
        t = Table(title="Margin L(x) = Z_y − max_{i≠y} Z_i (logits)", title_justify="left")
        for col in ("mean", "q05", "q25", "median", "q75", "q95", "L<0", "mean p(y|x)", "mean CE (nats)"):
            t.add_column(col, justify="right")
        q = margins.quantiles
        t.add_row(
            f"{margins.mean:.3f}",
            f"{q['05']:.3f}",
            f"{q['25']:.3f}",
            f"{margins.median:.3f}",
            f"{q['75']:.3f}",
            f"{q['95']:.3f}",
            _pct(margins.fraction_negative),
            f"{margins.mean_true_class_probability:.3f}",
            f"{margins.mean_loss:.3f}",
        )
        console.print(t)
    if result.timings:
        console.print("  [dim]time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()) + "[/dim]")
