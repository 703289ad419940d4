"""The documentation (issue 24): the README is a landing page whose links lead into docs/, every
relative link and anchor of README.md and docs/*.md resolves as GitHub renders them, every page is
in the site's nav, the CLI reference is the page the Typer app generates, and the screenshots stay
small.

The site itself is built by `make docs` (``mkdocs build --strict``, which `make test` and .ci/run
run): broken links, unknown anchors and pages missing from the nav fail it as MkDocs renders them.
These tests need no MkDocs and no network.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (links there are examples, not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text(encoding="utf-8")))


def _external(target: str) -> bool:
    return re.match(r"[a-z][a-z0-9+.-]*:", target) is not None  # https:, mailto:, ...


def github_slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: its text lower-cased, punctuation and symbols removed
    (letters of any script, digits, ``_`` and ``-`` stay), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links → their text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives ``page``: its headings (a repeated one gets -1, -2, …) and the
    explicit ``id``/``name`` attributes of its raw HTML."""
    text = page.read_text(encoding="utf-8")
    found: set[str] = set(re.findall(r"""\b(?:id|name)=["']([^"']+)["']""", text))
    seen: dict[str, int] = {}
    for line in re.sub(r"^```.*?^```", "", text, flags=re.S | re.M).splitlines():
        m = re.match(r"#{1,6} +(.*?)#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def test_github_slugs_match_githubs_rules():
    assert github_slug("`robaudit scan`") == "robaudit-scan"
    assert github_slug("ONNX: data, once its names are robaudit's") == "onnx-data-once-its-names-are-robaudits"
    assert github_slug("Methods (`certify:method=…`)") == "methods-certifymethod"
    assert (
        github_slug("Certified robustness: the other half of the bracket")
        == "certified-robustness-the-other-half-of-the-bracket"
    )


def test_every_relative_link_and_anchor_resolves():
    problems = []
    for page in PAGES:
        for target in _links(page):
            if _external(target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                problems.append(f"{where}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: {dest.name} has no heading or id '{anchor}'")
    assert not problems, "\n".join(problems)


def test_the_readme_is_a_landing_page_that_links_into_docs():
    """≤ 250 lines (issue 24), and its relative links lead into docs/ only: the site's home page is
    the README with ``docs/`` stripped from its links (scripts/mkdocs_hooks.py, which also maps the
    flags' page, robaudit/report/flags.md, to docs/flags.md), and on PyPI, where the README is the
    project description, links into the repository's other folders would break."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    outside = [t for t in _links(README) if not _external(t) and not t.startswith(("docs/", "robaudit/report/flags.md"))]
    assert not outside, f"README links outside docs/: {outside}"
    assert any(t.startswith("docs/tutorial.md") for t in _links(README))


def test_every_docs_page_is_in_the_site_nav():
    nav = re.findall(r":\s*([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), flags=re.M)
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(nav) == pages, f"in docs/ but not in mkdocs.yml's nav, or the reverse: {sorted(set(pages) ^ set(nav))}"


def test_screenshots_are_used_and_small():
    """scripts/screenshots.py writes them; every one is shown somewhere, and all together stay a few
    hundred KB (the repository carries them)."""
    pngs = sorted((DOCS / "img").glob("*.png"))
    assert pngs, "no screenshots: run python scripts/screenshots.py"
    shown = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    assert [p.name for p in pngs if f"img/{p.name}" not in shown] == []
    total = sum(p.stat().st_size for p in pngs)
    assert total <= 600_000, f"screenshots take {total / 1e3:.0f} KB"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", ROOT / "scripts" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_the_generated_one():
    """docs/cli.md is what Typer's generator (`typer robaudit.cli.main utils docs`) makes of the app
    now: a new option, a changed help text or default makes this fail until the page is regenerated."""
    gen = _generator()
    expected = gen.generate()
    committed = gen.PAGE.read_text(encoding="utf-8")
    if committed != expected:
        diff = difflib.unified_diff(
            committed.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            "docs/cli.md (committed)",
            "docs/cli.md (generated from the app)",
        )
        pytest.fail(
            f"docs/cli.md is out of date with the command-line app; regenerate it with: "
            f"{gen.REGENERATE}\n" + "".join(list(diff)[:80])
        )
    assert "### `robaudit scan`" in committed and "`--eps <str>`" in committed
