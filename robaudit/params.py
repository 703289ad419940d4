"""The text of ``name:key=value`` lists (``--attacks``, ``--checks``, metric labels): one parser.

Lowest layer: config, metric naming and the CLI read parameters through it, so that none of them
needs another to read ``steps=50`` or ``eps=8/255``.
"""

from __future__ import annotations

from .errors import UsageError
from .threat import parse_eps

__all__ = ["parse_value", "parse_spec_list"]


def parse_value(text: str) -> object:
    """A parameter value from its text: true/false, none/null, an int, a fraction such as 8/255 or a
    float (ε is written like that), else the string itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return parse_eps(text) if "/" in text else float(text)
    except (ValueError, UsageError):
        return text


def parse_spec_list(text: str, kind: str) -> list[tuple[str, list[tuple[str, object]]]]:
    """``pgd:steps=50:restarts=2,fgsm`` or ``pgd:steps=50,restarts=2,fgsm`` → [(name, [(k, v), ...]), ...].

    Parameters follow the name after ``:``; a comma-separated ``k=v`` without a name continues the
    previous entry's parameters. Names are lower-cased, ``-`` in parameter names becomes ``_``.
    """
    specs: list[tuple[str, list[tuple[str, object]]]] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "=" in token and ":" not in token:
            if not specs:
                raise UsageError(f"{kind} list {text!r} starts with a parameter; write name:param=value")
            k, v = token.split("=", 1)
            specs[-1][1].append((k.strip().replace("-", "_"), parse_value(v.strip())))
            continue
        name, *params = token.split(":")
        parsed = []
        for p in params:
            if "=" not in p:
                raise UsageError(f"{kind} parameter {p!r} in {token!r} must be written name=value")
            k, v = p.split("=", 1)
            parsed.append((k.strip().replace("-", "_"), parse_value(v.strip())))
        specs.append((name.strip().lower(), parsed))
    return specs
