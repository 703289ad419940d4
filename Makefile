# Two set-up commands for a fresh machine (see README):  make demo  ·  make test
# `make docs` builds the documentation site (mkdocs build --strict into build/site); `make test` runs it first.
# Each creates its own virtual environment in .venv and installs torch from the pinned releases
# (TORCH_SPEC; add TORCH_INDEX=https://download.pytorch.org/whl/cpu for CPU-only wheels).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# the optional model sources the tests exercise (timm, ONNX) and the docs site's builder (MkDocs);
# `make EXTRAS=dev` skips them (their tests skip, and so does the site build)
EXTRAS ?= dev,timm,onnx,docs
PYTEST_ARGS ?=

.PHONY: demo test docs lint venv clean

EXAMPLE_PLUGIN := plugins/robaudit-example

$(VENV)/.installed: pyproject.toml $(EXAMPLE_PLUGIN)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	# the example plugin: its tests are in pytest's testpaths (pyproject.toml), so `make test` runs them
	$(PY) -m pip install --quiet -e ./$(EXAMPLE_PLUGIN)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/robaudit demo

# The suite, then `make lint`: both run, and either failing fails the target (CI: .ci/run).
# pytest exits 5 when it collected no test; that is not a failure of the suite itself.
# The docs site is built first: a broken link or a missing page fails in seconds, before the suite.
test: venv docs
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; \
	$(MAKE) --no-print-directory lint || { [ $$rc -ne 0 ] || rc=1; }; exit $$rc

# ruff (lint and format check) on the whole tree and mypy on the package; their settings are in
# pyproject.toml ([tool.ruff], [tool.mypy]). `ruff check --fix .` and `ruff format .` fix most findings.
# All three run (every finding shown); any failing fails the target.
lint: venv
	rc=0; $(PY) -m ruff check . || rc=1; $(PY) -m ruff format --check . || rc=1; $(PY) -m mypy || rc=1; exit $$rc

# --strict (also `strict: true` in mkdocs.yml): broken links, unknown anchors and pages missing from
# the nav fail the build. Offline: no web fonts, no social cards.
docs: venv
	@if $(PY) -c 'import mkdocs, material' 2>/dev/null; then \
	  NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir build/site && echo "docs: site built in build/site"; \
	else echo "docs: MkDocs is not installed (EXTRAS without docs): site build skipped"; fi

clean:
	rm -rf $(VENV) build *.egg-info robaudit-demo $(EXAMPLE_PLUGIN)/src/*.egg-info
