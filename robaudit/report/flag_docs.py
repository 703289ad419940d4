"""The explanation of every validity flag, from ``flags.md`` shipped in this package (also linked as
docs/flags.md), so a report explains its own flags with no repository at hand.

flags.md has one entry per flag: an anchor ``<a id="flag-<code>"></a>``, a heading ``## `<code>` ``
and paragraphs (**bold** labels such as "Raised if", ``code`` spans). :func:`flag_explanations`
turns each entry into escaped HTML paragraphs, with author-year mentions linked to the report's
bibliography.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from markupsafe import Markup, escape

from .bibliography import link_mentions

__all__ = ["flags_markdown", "flag_explanations"]

_ENTRY = re.compile(r'<a id="flag-(?P<code>[a-z0-9-]+)"></a>\s*\n##[^\n]*\n(?P<body>.*?)(?=\n<a id="flag-|\Z)', re.S)


def flags_markdown() -> str:
    """The text of the packaged flags.md."""
    return resources.files("robaudit.report").joinpath("flags.md").read_text(encoding="utf-8")


def _inline(text: str) -> str:
    """Escape, then **bold**, `code` and *emphasis* (the only markup flags.md uses)."""
    html = str(escape(re.sub(r"\s+", " ", text.strip())))
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    html = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", html)
    return re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", html)


@functools.lru_cache(maxsize=1)
def flag_explanations() -> dict[str, Markup]:
    """Flag code → its explanation as HTML paragraphs."""
    out = {}
    for m in _ENTRY.finditer(flags_markdown()):
        paragraphs = [p for p in re.split(r"\n\s*\n", m["body"]) if p.strip()]
        out[m["code"]] = link_mentions("".join(f"<p>{_inline(p)}</p>" for p in paragraphs))
    return out
