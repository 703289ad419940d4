"""robaudit's modules form layers that import only downward, with no import cycle.

The layers, bottom first, and the few declared facade edges are in pyproject.toml
(``[[tool.robaudit.layers]]``, ``[tool.robaudit.import-facades]``); docs/development.md explains them.
The graph is read from the source with an AST walk (no import runs):

* every ``import``/``from … import`` inside ``robaudit/``, at module level *and* inside functions
  (a lazy import is still a dependency: it only moves when the cost is paid);
* importing ``a.b.c`` also runs the package ``a.b`` (its ``__init__``), so that edge counts too,
  unless ``a.b`` is a package the importing module itself lives in (already running);
* imports under ``if TYPE_CHECKING:`` never execute; they name a type for annotations only and are
  not edges (mypy checks them; a lower layer may name the type of what calls it).

Run ``python tests/test_import_layers.py`` for the graph's summary (modules, edges, layers, cycles).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (a dependency there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "robaudit"
MAX_LINES = 500  # a longer module states why at its top (LONG_MODULE_MARK in its first lines)
LONG_MODULE_MARK = "Why this module is long:"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str  # the importing file, relative to the repository root
    line: int
    lazy: bool  # inside a function: runs when the function is first called
    implicit: bool  # the target package's __init__, run because a module inside it was imported
    via: str  # the module the import statement names (the target itself unless implicit)

    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def describe(self) -> str:
        how = "lazy import" if self.lazy else "import"
        via = " (its package __init__ runs first)" if self.implicit else ""
        return f"{self.where()}: {self.source} -> {self.target}{via} [{how}]"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file, for every module and package of robaudit."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_edges(root: Path = ROOT) -> list[Edge]:
    """Every runtime import between robaudit's modules (see the module docstring)."""
    mods = modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: list[Edge] = []
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        ancestors = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
        rel = str(path.relative_to(root))

        def add(target: str, node: ast.stmt, lazy: bool, name=name, ancestors=ancestors, rel=rel) -> None:
            resolved = resolve(target)
            if resolved is None or resolved == name:
                return
            edges.append(Edge(name, resolved, rel, node.lineno, lazy, False, resolved))
            parent = resolved
            while "." in parent:
                parent = parent.rpartition(".")[0]
                if parent in ancestors or parent == name:
                    break
                edges.append(Edge(name, parent, rel, node.lineno, lazy, True, resolved))

        def visit(nodes, lazy: bool, here=here) -> None:
            for child in nodes:
                if isinstance(child, ast.If) and _is_type_checking(child.test):
                    visit(child.orelse, lazy)  # the body never runs
                    continue
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        if alias.name.split(".")[0] == PACKAGE:
                            add(alias.name, child, lazy)
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = here.split(".")
                        base = base[: len(base) - (child.level - 1)]
                        module = ".".join(base + ([child.module] if child.module else []))
                    else:
                        module = child.module or ""
                    if module.split(".")[0] == PACKAGE:
                        for alias in child.names:  # `from pkg import submodule` imports the submodule
                            sub = f"{module}.{alias.name}"
                            add(sub if sub in mods else module, child, lazy)
                inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(ast.iter_child_nodes(child), inner)

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)).body, False)
    return edges


# --- the declared layers and facades ----------------------------------------------------------


def config(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["robaudit"]


def layers(root: Path = ROOT) -> list[tuple[str, tuple[str, ...]]]:
    """(layer name, its module prefixes), bottom first."""
    return [(layer["name"], tuple(layer["modules"])) for layer in config(root)["layers"]]


def facades(root: Path = ROOT) -> dict[tuple[str, str], str]:
    """(source, target) → why this upward edge is a facade (pyproject.toml)."""
    out = {}
    for key, reason in config(root).get("import-facades", {}).items():
        source, _, target = (part.strip() for part in key.partition("->"))
        out[(source, target)] = reason
    return out


def layer_of(module: str, table: list[tuple[str, tuple[str, ...]]]) -> int | None:
    """Index of the layer whose longest prefix names ``module`` (a package covers its submodules)."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(table):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def strongly_connected(nodes, adjacency: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(adjacency.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(nodes):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def _graph(edges: list[Edge], skip: set[tuple[str, str]]) -> tuple[dict[str, set[str]], dict[tuple[str, str], Edge]]:
    adjacency: dict[str, set[str]] = defaultdict(set)
    first: dict[tuple[str, str], Edge] = {}
    for e in edges:
        if (e.source, e.via) in skip:  # a facade's import, and the packages it runs
            continue
        adjacency[e.source].add(e.target)
        first.setdefault((e.source, e.target), e)
    return adjacency, first


def _cycle_through(component: list[str], adjacency: dict[str, set[str]]) -> list[str]:
    """One shortest cycle inside ``component`` through its first module, as [a, b, ..., a]."""
    members = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in parent:
        following = []
        for v in frontier:
            for w in sorted(adjacency.get(v, set()) & members):
                if w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    path = [start]
    while len(path) == 1 or path[-1] != start:
        path.append(parent[path[-1]])
    return path[::-1]


# --- the tests ------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    table = layers()
    missing = [m for m in modules() if layer_of(m, table) is None]
    assert not missing, "\n".join(
        f"{m} is in no layer: add it (or its package) to a [[tool.robaudit.layers]] entry in pyproject.toml" for m in missing
    )


def cycle_problems(root: Path = ROOT) -> list[str]:
    """One line per import cycle (lazy imports included, declared facades excepted): its modules and
    one shortest loop through them, each step with its file and line."""
    adjacency, first = _graph(import_edges(root), set(facades(root)))
    problems = []
    for component in strongly_connected(modules(root), adjacency):
        cycle = _cycle_through(component, adjacency)
        steps = " ; ".join(first[(a, b)].describe() for a, b in zip(cycle, cycle[1:]))
        problems.append(f"import cycle of {len(component)} modules ({', '.join(component)}): {steps}")
    return problems


def upward_imports(root: Path = ROOT) -> list[str]:
    """One line per import that goes up the declared layers and is not a declared facade."""
    table = layers(root)
    declared = facades(root)
    problems = set()
    for e in import_edges(root):
        src, dst = layer_of(e.source, table), layer_of(e.target, table)
        if src is None or dst is None or dst <= src or (e.source, e.via) in declared:
            continue
        problems.add(
            f"{e.describe()}: layer {table[src][0]!r} imports the higher layer {table[dst][0]!r}; move the code "
            "down, or declare a lazy facade in [tool.robaudit.import-facades] (pyproject.toml)"
        )
    return sorted(problems)


def test_no_import_cycle():
    """Lazy imports included, the declared facade edges excepted."""
    problems = cycle_problems()
    assert not problems, "\n".join(problems)


def test_imports_go_down_the_layers():
    """A module imports its own layer or the layers below it; an upward edge must be a declared facade."""
    problems = upward_imports()
    assert not problems, "\n".join(problems)


def test_declared_facades_are_lazy_and_used():
    """A facade edge is a lazy import inside a method (the pandas DataFrame.plot pattern): importing the
    lower module never loads the higher one. A declared edge that no longer exists is removed."""
    edges = import_edges()
    problems = []
    for (source, target), reason in facades().items():
        found = [e for e in edges if (e.source, e.target) == (source, target) and not e.implicit]
        if not reason.strip():
            problems.append(f"facade {source} -> {target}: give the reason in pyproject.toml")
        if not found:
            problems.append(
                f"facade {source} -> {target} is declared but no such import exists: remove it from pyproject.toml"
            )
        problems += [f"{e.describe()}: a declared facade must be imported inside a function" for e in found if not e.lazy]
    assert not problems, "\n".join(problems)


def test_registries_load_builtins_from_their_own_package():
    """A Registry imports its ``builtin_modules`` by name on first lookup (the path a plugin takes,
    robaudit.registry); those names must lie inside the registry's own package, so the registry
    mechanism can't become a hidden import of another layer."""
    problems = []
    for name, path in modules().items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Registry"):
                continue
            for kw in node.keywords:
                if kw.arg != "builtin_modules":
                    continue
                for const in ast.walk(kw.value):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        if not (const.value == package or const.value.startswith(package + ".")):
                            problems.append(
                                f"{path.relative_to(ROOT)}:{const.lineno}: registry built-in {const.value!r} "
                                f"is outside its package {package!r}"
                            )
    assert not problems, "\n".join(problems)


def test_long_modules_say_why():
    """No module over MAX_LINES lines without a reason at its top (split it, or write why it is one file)."""
    problems = []
    for path in modules().values():
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES and not any(LONG_MODULE_MARK in line for line in lines[:40]):
            problems.append(
                f"{path.relative_to(ROOT)}: {len(lines)} lines > {MAX_LINES} and no {LONG_MODULE_MARK!r} "
                "in its first 40 lines: split it, or say why it is one module"
            )
    assert not problems, "\n".join(problems)


def test_the_walk_sees_lazy_and_implicit_imports(tmp_path):
    """The oracle for the walk itself, on a made-up package: a function-level import is an edge, the
    imported module's package __init__ is an edge, a TYPE_CHECKING import is not."""
    pkg = tmp_path / PACKAGE
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "leaf.py").write_text("")
    (pkg / "high.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .typing_only import T\n"
        "def f():\n    from .low import leaf\n"
    )
    (pkg / "typing_only.py").write_text("from .high import f\n")
    edges = {(e.source, e.target, e.lazy, e.implicit) for e in import_edges(tmp_path)}
    assert edges == {
        ("robaudit.high", "robaudit.low.leaf", True, False),
        ("robaudit.high", "robaudit.low", True, True),
        ("robaudit.typing_only", "robaudit.high", False, False),
    }
    adjacency, _ = _graph(import_edges(tmp_path), set())
    assert strongly_connected(modules(tmp_path), adjacency) == []
    (pkg / "low" / "leaf.py").write_text("import robaudit.high\n")
    adjacency, _ = _graph(import_edges(tmp_path), set())
    assert strongly_connected(modules(tmp_path), adjacency) == [["robaudit.high", "robaudit.low.leaf"]]


def test_the_rules_catch_a_planted_upward_import_and_accept_a_declared_facade(tmp_path):
    """The oracle for the layer and facade rules, on a made-up package of two layers."""
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def show():\n    from .high import render\n")
    (pkg / "high.py").write_text("from .low import show\n\ndef render():\n    pass\n")
    (tmp_path / "pyproject.toml").write_text(
        '[[tool.robaudit.layers]]\nname = "low"\nmodules = ["robaudit.low"]\n'
        '[[tool.robaudit.layers]]\nname = "high"\nmodules = ["robaudit", "robaudit.high"]\n'
    )
    assert upward_imports(tmp_path) == [
        "robaudit/low.py:2: robaudit.low -> robaudit.high [lazy import]: layer 'low' imports the higher layer 'high'; "
        "move the code down, or declare a lazy facade in [tool.robaudit.import-facades] (pyproject.toml)"
    ]
    assert len(cycle_problems(tmp_path)) == 1 and "robaudit/low.py:2" in cycle_problems(tmp_path)[0]
    with (tmp_path / "pyproject.toml").open("a") as f:
        f.write('[tool.robaudit.import-facades]\n"robaudit.low -> robaudit.high" = "show(): a convenience"\n')
    assert upward_imports(tmp_path) == [] and cycle_problems(tmp_path) == []


def summary(root: Path = ROOT) -> str:
    """The graph in a few lines: sizes, the cycles, and how many modules each layer holds."""
    mods = modules(root)
    edges = import_edges(root)
    pairs = {(e.source, e.target) for e in edges}
    out = [f"{len(mods)} modules, {len(pairs)} import edges ({sum(1 for e in edges if e.lazy)} lazy import statements)"]
    for label, skip in (("all imports", set()), ("minus the declared facades", set(facades(root)))):
        adjacency, _ = _graph(edges, skip)
        cycles = strongly_connected(mods, adjacency)
        out.append(f"cycles, {label}: {[len(c) for c in cycles] or 'none'}")
        out += [f"  {len(c)}: {' '.join(c)}" for c in cycles]
    table = layers(root)
    for i, (name, _) in enumerate(table):
        members = [m for m in mods if layer_of(m, table) == i]
        out.append(f"layer {i} {name}: {len(members)} modules")
    return "\n".join(out)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT))
