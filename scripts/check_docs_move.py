#!/usr/bin/env python3
"""Check that moving text out of the README lost nothing: every sentence, table row, command line
and number of an earlier README must still be written in README.md or docs/*.md.

The README was split into the docs site (issue 24); when a branch that still edits the old, long
README is merged, run this against that branch's README to find what has not been carried over:

    python scripts/check_docs_move.py 4f4a834          # the README of a commit (git show REV:README.md)
    python scripts/check_docs_move.py --file OLD.md    # or of a file

Compared after normalizing both sides: Markdown links become their text, emphasis marks and
repeated spaces go, so re-wrapped lines and links re-pointed to docs pages still match. Prints
each unit that is not found (exit 1), or a one-line summary (exit 0).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def normalize(text: str) -> str:
    text = re.sub(r"!?\[([^\[\]]*)\]\(([^()\s]*)\)", r"\1", text)  # [text](url) → text
    text = text.replace("**", "").replace("\\|", "|")
    return re.sub(r"\s+", " ", text).strip()


def units(readme: str) -> dict[str, list[str]]:
    """Sentences of prose, table rows, lines of code blocks, and numbers, of one Markdown text."""
    found: dict[str, list[str]] = {"code": [], "row": [], "sentence": [], "number": []}
    prose: list[str] = []
    fenced = False
    for line in readme.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            prose.append("")
            continue
        if fenced:
            code = line.split("  # ")[0] if not line.lstrip().startswith("#") else line
            if code.strip():
                found["code"].append(normalize(code))
            continue
        if line.startswith("|"):
            if not re.fullmatch(r"[|\s:-]+", line):
                found["row"].append(normalize(line))
            prose.append("")
            continue
        if re.match(r"#+ ", line):
            prose.append("")
            continue
        prose.append(line)
    for block in re.split(r"\n\s*\n|\n(?=\s*(?:- |\d+\. ))", "\n".join(prose)):
        text = normalize(re.sub(r"^\s*(?:- |\d+\. )", "", block))
        # sentence ends: ". " + capital letter, "; ", ": " — small enough units to survive re-wrapping
        for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z(`*])", text):
            if len(sentence) > 12:
                found["sentence"].append(sentence)
    found["number"] = sorted(set(re.findall(r"(?<![\w.])\d[\d,.]*\d(?:\s?%|×)?|(?<![\w.])\d(?:\s?%|×)", readme)))
    return found


def corpus() -> str:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return normalize("\n".join(f.read_text(encoding="utf-8") for f in files))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", default="HEAD", help="git revision whose README.md to check (default HEAD)")
    parser.add_argument("--file", type=Path, help="an old README file instead of a git revision")
    args = parser.parse_args()
    old = (
        args.file.read_text(encoding="utf-8")
        if args.file
        else subprocess.run(
            ["git", "show", f"{args.rev}:README.md"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    )
    text = corpus()
    missing = {kind: [u for u in us if u not in text] for kind, us in units(old).items()}
    total = sum(len(us) for us in units(old).values())
    for kind, us in missing.items():
        for u in us:
            print(f"{kind}: {u}")
    lost = sum(len(us) for us in missing.values())
    print(f"{total - lost} of {total} units of the old README found in README.md + docs/*.md; {lost} missing")
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
