"""MkDocs hooks (mkdocs.yml ``hooks:``): the site's home page is the README.

docs/index.md is a stand-in; at build time its Markdown is replaced by README.md with the README's
links re-pointed from the repository root into docs/ (``docs/tutorial.md`` → ``tutorial.md``,
``docs/img/x.png`` → ``img/x.png``). The README links the flags' page where GitHub renders it,
``robaudit/report/flags.md`` (docs/flags.md is a symbolic link to it, which GitHub shows as a path);
the site has it as ``flags.md``. Any other README link outside docs/ fails ``mkdocs build
--strict``, so the README, which is also the PyPI description, keeps to links GitHub renders.
"""

from __future__ import annotations

import re
from pathlib import Path


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - MkDocs' hook signature
    if page.file.src_uri != "index.md":
        return markdown
    readme = (Path(config.config_file_path).parent / "README.md").read_text(encoding="utf-8")
    readme = readme.replace("](robaudit/report/flags.md", "](docs/flags.md")
    return re.sub(r"(\]\()docs/", r"\1", readme)
