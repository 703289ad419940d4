"""`robaudit list [KIND] [-v]`: what is registered (built-ins and plugins) for architectures, datasets,
attacks, checks and hardeners. Without ``-v`` plugins are listed from their metadata, without
importing them; ``-v`` imports each entry to show its parameters with their defaults and its paper."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import UsageError
from . import _options as opt
from ._common import error_boundary, make_console

# architecture factory arguments robaudit fills in itself (from the data / --num-classes / --input-shape)
_FILLED_IN = {"num_classes": "--num-classes", "in_channels": "--input-shape", "input_size": "--input-shape"}


def _registries():
    from ..attacks import ATTACKS
    from ..checks import CHECKS
    from ..data import DATASETS
    from ..harden import HARDENERS
    from ..models import ARCHITECTURES

    return {"architectures": ARCHITECTURES, "datasets": DATASETS, "attacks": ATTACKS, "checks": CHECKS, "hardeners": HARDENERS}


def _kind(kind: str, kinds) -> str:
    """``attacks``, also ``attack`` (singular) and any case; unknown → UsageError with a did-you-mean."""
    k = kind.strip().lower()
    if k in ("all", *kinds):
        return k
    if k + "s" in kinds:
        return k + "s"
    close = difflib.get_close_matches(k, ["all", *kinds], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"unknown kind {kind!r}{hint} (use one of: all, {', '.join(kinds)})")


def _paragraphs(text: str | None) -> list[str]:
    """A docstring's paragraphs, each on one line, reST ``literals`` unquoted."""
    return [re.sub(r"\s+", " ", p.replace("``", "")).strip() for p in inspect.cleandoc(text or "").split("\n\n") if p.strip()]


_CITES = re.compile(r"\b(19|20)\d\d\b")  # a paragraph that cites a paper names its year


def _value(v: object) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def parameters(kind: str, obj) -> list[str]:
    """``name=default`` for what a user can set: attack/hardener dataclass fields, check parameters
    (``--checks name:k=v``), architecture factory arguments (``--arch-kwargs k=v``)."""
    if kind == "checks":
        from ..checks.base import check_parameters

        return [f"{k}={_value(v)}" for k, v in check_parameters(obj).items()]
    if dataclasses.is_dataclass(obj):
        out = []
        for f in dataclasses.fields(obj):
            if f.name == "counter" or f.name.startswith("_"):
                continue
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
            )
            out.append(f"{f.name}={_value(default)}")
        return out
    if callable(obj):
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            return []
        out = []
        for name, p in sig.parameters.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if name in _FILLED_IN:
                continue
            out.append(f"{name}={_value(p.default)}" if p.default is not p.empty else f"{name} (required)")
        return out
    return []


def paper(kind: str, obj) -> str:
    """Where the entry comes from: a check's description; else the first paragraph that cites a
    paper (names a year) in the entry's docstring, then in its module's; else its first paragraph."""
    description = getattr(obj, "description", None)
    if kind == "checks" and description:
        return str(description)
    module = inspect.getmodule(obj)
    candidates = _paragraphs(getattr(obj, "__doc__", ""))[:2] + _paragraphs(module.__doc__ if module is not None else "")[:2]
    return next((p for p in candidates if _CITES.search(p)), candidates[0] if candidates else "")


def _details(kind: str, entry) -> list[str]:
    obj = entry.obj
    lines = [paper(kind, obj)]
    if kind == "attacks":
        norms = ", ".join(n.value for n in getattr(obj, "norms", ()))
        lines.append(f"{getattr(obj, 'kind', '?')}; norms: {norms}")
    params = parameters(kind, obj) if kind != "datasets" else []
    how = {
        "attacks": "--attacks NAME:k=v",
        "checks": "--checks NAME:k=v",
        "architectures": "--arch-kwargs k=v",
        "hardeners": "robaudit harden --help",
    }.get(kind)
    if params:
        lines.append(f"parameters ({how}): " + ", ".join(params))
    if kind == "architectures":
        lines.append("num_classes, in_channels and input_size come from --num-classes / --input-shape (else the data)")
    return [line for line in lines if line]


def list_command(
    kind: str = typer.Argument("all", help="architectures, datasets, attacks, checks, hardeners, or all (singular accepted)."),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Also each entry's parameters with their defaults and its paper, and every model source with an example and its kwargs (imports plugins).",
    ),
    debug: bool = opt.DEBUG,
) -> None:
    """List the registered architectures, datasets, attacks, checks and hardeners, with where each comes from."""
    with error_boundary(debug):
        regs = _registries()
        kind = _kind(kind, list(regs))
        console = make_console()
        for name, reg in regs.items():
            if kind not in ("all", name):
                continue
            if verbose:
                reg.load_all()
                console.print(Text(name, style="bold"))
                for e in reg.entries():
                    console.print(Text(f"  {e.name}", style="bold").append(f"  ({e.distribution} {e.version})", style="dim"))
                    for line in _details(name, e):
                        console.print(Text(f"      {line}"), soft_wrap=True)
                console.print()
            else:
                t = Table(title=name, title_justify="left")
                t.add_column("name")
                t.add_column("from")
                t.add_column("version")
                for e in reg.entries():
                    t.add_row(Text(e.name), Text(e.distribution), Text(e.version))
                console.print(t)
            if name == "architectures":
                print_model_sources(console, verbose)
            for msg in reg.load_errors:
                console.print(Text("plugin failed to load: ", style="yellow").append(msg))
        if not verbose:
            console.print(Text("  (robaudit list KIND -v: parameters, defaults and papers)", style="dim"))


def print_model_sources(console: Console, verbose: bool) -> None:
    """Where models come from (``robaudit.models.model_sources``): a table; with ``-v`` each source's
    example command, what is read and the kwargs it takes."""
    from ..models.sources import describe, model_sources

    if verbose:
        console.print(Text("model sources", style="bold"))
        for source in model_sources():
            d = describe(source)
            console.print(Text(f"  {d['name']}", style="bold").append(f"  ({d['trust']}; {d['installed']})", style="dim"))
            for key in ("example", "reads", "kwargs"):
                console.print(Text(f"      {key}: {d[key]}"), soft_wrap=True)
        return
    t = Table(title="model sources", title_justify="left")
    for col in ("source", "data or code", "installed"):
        t.add_column(col)
    for source in model_sources():
        d = describe(source)
        t.add_row(Text(d["name"]), Text(d["trust"]), Text(d["installed"]))
    console.print(t)
    console.print(
        Text("  (robaudit list architectures -v: an example command, what is read and the kwargs of each source)", style="dim")
    )
