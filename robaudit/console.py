"""The consoles robaudit prints through: every string is printed as text, never as Rich markup.

A path such as ``nets[/bad]/net.py`` or an attack label such as ``pgd[steps=50]`` is text; with
Rich's markup on, the first raises a MarkupError and the second silently loses ``[steps=50]``.
So markup and emoji codes (``:smile:``) are off on every console made here, and styles are given
as :class:`rich.text.Text` spans or ``style=``, never as ``[tags]`` inside a string.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.text import Text

__all__ = ["PIPE_WIDTH", "make_console", "styled", "one_line"]

# Width when the output is not a terminal (CI logs, pipes): Rich's default of 80 columns truncates
# the tables' headers and numbers; $COLUMNS still wins.
PIPE_WIDTH = 120


def make_console(stderr: bool = False, *, highlight: bool = True) -> Console:
    """A console with markup and emoji codes off: a terminal's own width, 120 columns in a pipe."""
    console = Console(stderr=stderr, markup=False, emoji=False, highlight=highlight)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, markup=False, emoji=False, highlight=highlight, width=PIPE_WIDTH)
    return console


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line from plain strings and ``(text, style)`` pairs; nothing in them is parsed as markup.

    >>> styled(("error:", "bold red"), " ", "cannot read nets[/bad]/net.py")
    """
    return Text.assemble(*parts)


def one_line(text: str) -> str:
    """``text`` with control characters (newlines, tabs, ESC, ...) written as escapes (``\\n``), so a
    user string can neither break a one-line message nor send terminal control sequences."""
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)
