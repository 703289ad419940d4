"""CI gates: thresholds on ScanResult metrics and forbidden flags.

A threshold is ``<metric> <op> <number>``: ``metric`` any name in ``ScanResult.metrics()``
(docs/results.md; ``robaudit gate --list-metrics RESULT`` lists them), or ``lower(<metric>)`` /
``upper(<metric>)`` for the bounds of an accuracy's 95% Clopper–Pearson interval
(:mod:`robaudit.stats`); ``op`` one of ``>= > <= < == !=``; ``number`` a decimal or a fraction such
as ``8/255``. Thresholds come from ``--require`` (repeatable) or a TOML file: a ``[gate]`` table in
``robaudit.toml`` or ``[tool.robaudit.gate]`` in ``pyproject.toml``::

    [gate]
    require = ["clean.accuracy >= 0.9", "lower(robust_acc.ensemble.linf@8/255) >= 0.40"]
    forbid_flags = ["probabilities-not-logits"]   # or "all"

Comparisons are exact on the stored float: ``>= 0.4`` passes at exactly 0.4. Metric names match
in their canonical spelling (:func:`robaudit.metric_names.canonical_metric`: ``@0.0313725…`` finds
``@8/255``, ``pgd[steps=20]`` finds ``pgd``). A name the result cannot have, or a malformed line
or file, is a :class:`~robaudit.errors.UsageError` (exit 2) with up to three close names.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from xml.etree import ElementTree as ET

from .errors import UsageError

__all__ = [
    "OPS",
    "Threshold",
    "GateSpec",
    "GateResult",
    "GateOutcome",
    "parse_threshold",
    "load_gate_file",
    "find_gate_file",
    "evaluate_gates",
    "resolve_metric",
    "check_metric_names",
    "junit_xml",
    "write_junit",
]

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
# metric: no whitespace, not ending in an operator character (so "a => 1" is an error, not "a =" > 1)
_THRESHOLD_RE = re.compile(r"^\s*(?P<metric>\S*?[^\s<>=!])\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<number>[^<>=!\s]+)\s*$")
_GATE_KEYS = ("require", "forbid_flags")
_BOUND_RE = re.compile(r"^(?P<bound>lower|upper)\((?P<metric>[^()]+)\)$")
BOUNDS = ("lower", "upper")


@dataclass(frozen=True)
class Threshold:
    """One parsed ``<metric> <op> <number>``; ``source`` says where it was written."""

    expression: str
    metric: str
    op: str
    value: float
    source: str = "--require"
    bound: str | None = None  # "lower" / "upper": the bound of the metric's 95% interval, not its value


@dataclass(frozen=True)
class GateSpec:
    """What to enforce: thresholds, flag codes that must not be raised, or every flag."""

    thresholds: tuple[Threshold, ...] = ()
    forbid_flags: tuple[str, ...] = ()
    forbid_all_flags: bool = False
    source: str = ""

    def merged(self, other: GateSpec) -> GateSpec:
        return GateSpec(
            thresholds=self.thresholds + other.thresholds,
            forbid_flags=self.forbid_flags + tuple(c for c in other.forbid_flags if c not in self.forbid_flags),
            forbid_all_flags=self.forbid_all_flags or other.forbid_all_flags,
            source=", ".join(s for s in (self.source, other.source) if s),
        )

    def __bool__(self) -> bool:
        return bool(self.thresholds or self.forbid_flags or self.forbid_all_flags)


@dataclass(frozen=True)
class GateResult:
    """One evaluated gate. For a threshold: ``actual op threshold``. For a flag gate ``metric`` is
    ``flags`` or ``flag:<code>``, ``op`` is ``absent`` and ``actual`` the number of such flags raised."""

    expression: str
    metric: str
    op: str
    threshold: float | None
    actual: float | None
    passed: bool
    message: str
    source: str = ""


@dataclass(frozen=True)
class GateOutcome:
    results: tuple[GateResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> tuple[GateResult, ...]:
        return tuple(r for r in self.results if not r.passed)


# --- parsing ---------------------------------------------------------------------------------------
def _parse_number(text: str) -> float:
    try:
        value = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{text!r} is not a number (write 0.4 or a fraction like 8/255)") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def parse_threshold(text: str, source: str = "--require") -> Threshold:
    """``'robust_acc.pgd.linf@8/255 >= 0.40'`` → Threshold. Malformed → UsageError naming ``source``."""
    if not isinstance(text, str):
        raise UsageError(f"{source}: a threshold must be a string like 'clean.accuracy >= 0.9', got {text!r}")
    m = _THRESHOLD_RE.match(text)
    if not m:
        raise UsageError(
            f"{source}: cannot read threshold {text!r}; write '<metric> <op> <number>' with op one of "
            f"{' '.join(OPS)}, e.g. 'robust_acc.pgd.linf@8/255 >= 0.40'"
        )
    try:
        value = _parse_number(m["number"])
    except ValueError as exc:
        raise UsageError(f"{source}: in threshold {text!r}: {exc}") from None
    metric, bound = m["metric"], None
    b = _BOUND_RE.match(metric)
    if b:
        metric, bound = b["metric"].strip(), b["bound"]
    elif "(" in metric or ")" in metric:
        raise UsageError(
            f"{source}: cannot read {metric!r} in threshold {text!r}; the functions are lower(<metric>) and "
            "upper(<metric>), the bounds of an accuracy's 95% interval"
        )
    return Threshold(expression=text.strip(), metric=metric, op=m["op"], value=value, source=source, bound=bound)


def parse_requires(lines: Iterable[str]) -> GateSpec:
    """Thresholds from repeated ``--require`` options."""
    items = tuple(dataclasses.replace(parse_threshold(t, f"--require {t!r}"), source="--require") for t in lines)
    return GateSpec(thresholds=items, source="--require" if items else "")


def _line_of(text: str, needle: str, default: int | None = None) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    return default


def _item_line(text: str, item: str) -> int | None:
    """Line of a TOML string item: its quoted form first, so 'a >= 0.4' doesn't match 'a >= 0.45'."""
    for needle in (f'"{item}"', f"'{item}'", item):
        line = _line_of(text, needle)
        if line is not None:
            return line
    return None


def _where(path: Path, text: str, needle: str, line: int | None = None) -> str:
    line = line if line is not None else _line_of(text, needle)
    if line is None:
        return str(path)
    return f"{path}:{line}: {text.splitlines()[line - 1].strip()!r}"


def _toml():
    """tomllib (Python ≥ 3.11), else the tomli backport."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UsageError(
                "reading a thresholds file on Python 3.10 needs tomli (pip install tomli); or use --require"
            ) from None
    return tomllib


def load_gate_file(path: str | Path) -> GateSpec:
    """Read ``[gate]`` (robaudit.toml) or ``[tool.robaudit.gate]`` (pyproject.toml) from ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"thresholds file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read thresholds file {path}: {exc}") from None
    toml = _toml()
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        lines = text.splitlines()
        m = re.search(r"line (\d+)", str(exc))
        line = int(m[1]) if m else (len(lines) if "end of document" in str(exc) else 0)
        where = f"{path}:{line}: {lines[line - 1].strip()!r}" if 1 <= line <= len(lines) else str(path)
        raise UsageError(f"{where}: not valid TOML ({exc})") from None
    table = data.get("tool", {}).get("robaudit", {}).get("gate") if isinstance(data.get("tool"), dict) else None
    header = "[tool.robaudit.gate]"
    if table is None:
        table, header = data.get("gate"), "[gate]"
    if table is None:
        raise UsageError(f"{path} has no [gate] table (robaudit.toml) or [tool.robaudit.gate] table (pyproject.toml)")
    if not isinstance(table, dict):
        raise UsageError(f"{_where(path, text, 'gate')}: 'gate' must be a table like {header}")
    for key in table:
        if key not in _GATE_KEYS:
            close = difflib.get_close_matches(key, _GATE_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(
                f"{_where(path, text, key)}: unknown key {key!r} in {header}{hint} (known: {', '.join(_GATE_KEYS)})"
            )
    require = table.get("require", [])
    if isinstance(require, str):
        require = [require]
    if not isinstance(require, list):
        raise UsageError(
            f"{_where(path, text, 'require')}: 'require' must be a list of strings like [\"clean.accuracy >= 0.9\"]"
        )
    thresholds = []
    for item in require:
        item_line = _item_line(text, item) if isinstance(item, str) else None
        where = _where(path, text, "require", item_line)
        short = f"{path}:{item_line}" if item_line else str(path)
        thresholds.append(dataclasses.replace(parse_threshold(item, where), source=short))
    forbid = table.get("forbid_flags", [])
    forbid_all = False
    if isinstance(forbid, str):
        if forbid.strip().lower() != "all":
            raise UsageError(f"{_where(path, text, 'forbid_flags')}: 'forbid_flags' must be \"all\" or a list of flag codes")
        forbid_all, forbid = True, []
    if not isinstance(forbid, list) or not all(isinstance(c, str) and c.strip() for c in forbid):
        raise UsageError(
            f'{_where(path, text, "forbid_flags")}: \'forbid_flags\' must be "all" or a list of flag codes like ["zero-gradients"]'
        )
    spec = GateSpec(
        thresholds=tuple(thresholds),
        forbid_flags=tuple(dict.fromkeys(c.strip() for c in forbid)),
        forbid_all_flags=forbid_all,
        source=str(path),
    )
    if not spec:
        raise UsageError(f"{path}: {header} sets no 'require' thresholds and no 'forbid_flags'")
    return spec


def find_gate_file(directory: str | Path = ".") -> Path | None:
    """``robaudit.toml`` with a [gate] table, else ``pyproject.toml`` with [tool.robaudit.gate], in ``directory``."""
    directory = Path(directory)
    for name, probe in (("robaudit.toml", "[gate]"), ("pyproject.toml", "[tool.robaudit.gate]")):
        candidate = directory / name
        if candidate.is_file() and probe in candidate.read_text(encoding="utf-8", errors="replace"):
            return candidate
    return None


# --- evaluation ------------------------------------------------------------------------------------
_LIST_RESULT = "`robaudit gate --list-metrics RESULT`"


def resolve_metric(name: str, available: Iterable[str], *, where: str = "in the result", listing: str = _LIST_RESULT) -> str:
    """The name in ``available`` that ``name`` spells (canonical spelling compared: any ε equal to
    ``8/255`` finds ``@8/255``, ``pgd[steps=20]`` finds ``pgd``); else UsageError with up to three
    close names and the command that lists them all (never the whole list)."""
    from .metric_names import canonical_metric, unknown_metric_message

    names = list(dict.fromkeys(available))
    if name in names:
        return name
    canon = {canonical_metric(n): n for n in names}
    found = canon.get(canonical_metric(name))
    if found is not None:
        return found
    raise UsageError(unknown_metric_message(name, names, where, listing))


def check_metric_names(gates: GateSpec | None, predicted, listing: str) -> None:
    """Before a scan: every threshold's metric must be one ``predicted`` (a
    :class:`~robaudit.metric_names.PredictedMetrics`) says the scan can produce; else UsageError."""
    from .metric_names import has_interval, unknown_metric_message

    for t in gates.thresholds if gates else ():
        if not predicted.may_produce(t.metric):
            raise UsageError(f"{t.source}: " + unknown_metric_message(t.metric, predicted.names, "for this scan", listing))
        if t.bound and not has_interval(t.metric) and t.metric.split(".", 1)[0] in predicted.prefixes:
            raise UsageError(
                f"{t.source}: {t.bound}({t.metric}): only accuracies have a 95% interval "
                "(clean.accuracy, robust_acc.*, sanity.large_eps_robust_accuracy)"
            )


def evaluate_gates(result, gates: GateSpec) -> GateOutcome:
    """Evaluate every threshold and flag rule of ``gates`` against ``result``.

    Unknown metrics are checked first, all at once, so a typo fails before anything is reported.
    A metric the result's sections can produce but have no value for fails its gate ("no value").
    """
    from .metric_names import has_interval

    metrics = result.metrics()
    intervals = result.intervals()
    resolved = [resolve_metric(t.metric, result.metric_names()) for t in gates.thresholds]
    for t, name in zip(gates.thresholds, resolved):
        if t.bound and name not in intervals and not has_interval(name):
            raise UsageError(
                f"{t.source}: {t.bound}({name}): only accuracies have a 95% interval "
                "(clean.accuracy, robust_acc.*, sanity.large_eps_robust_accuracy)"
            )
    out: list[GateResult] = []
    for t, name in zip(gates.thresholds, resolved):
        label = f"{t.bound}({name})" if t.bound else name
        actual = metrics.get(name)
        if t.bound and actual is not None:
            actual = getattr(intervals[name], t.bound) if name in intervals else None
        if actual is None or (isinstance(actual, float) and math.isnan(actual)):
            passed, message = False, f"{label} has no value in this result"
            actual = None
        else:
            actual = float(actual)
            passed = OPS[t.op](actual, t.value)
            verb = "holds" if passed else "fails"
            message = f"{label} = {actual:.6g} {verb}: required {t.op} {t.value:.6g}"
            if t.bound:
                p = intervals[name]
                message += f" ({name} = {p.k}/{p.n}, 95% interval [{p.lower:.4g}, {p.upper:.4g}])"
        out.append(GateResult(t.expression, label, t.op, t.value, actual, passed, message, t.source))
    raised = [f.code for f in result.flags]
    if gates.forbid_all_flags:
        passed = not raised
        message = "no flags raised" if passed else f"flags raised: {', '.join(dict.fromkeys(raised))}"
        out.append(GateResult("no flags", "flags", "absent", None, float(len(raised)), passed, message, gates.source))
    for code in gates.forbid_flags:
        count = raised.count(code)
        msgs = [f.message for f in result.flags if f.code == code]
        message = f"flag {code} not raised" if not count else f"flag {code} raised: {msgs[0]}"
        out.append(
            GateResult(f"no flag {code}", f"flag:{code}", "absent", None, float(count), count == 0, message, gates.source)
        )
    return GateOutcome(tuple(out))


# --- JUnit -----------------------------------------------------------------------------------------
def junit_xml(outcome: GateOutcome, suite: str = "robaudit.gate") -> str:
    """JUnit XML: one <testcase> per gate, a <failure message=...> for each failed one. No timestamps."""
    root = ET.Element("testsuites", name="robaudit", tests=str(len(outcome.results)), failures=str(len(outcome.failures)))
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(outcome.results)),
        failures=str(len(outcome.failures)),
        errors="0",
        skipped="0",
        time="0",
    )
    for r in outcome.results:
        tc = ET.SubElement(ts, "testcase", classname=suite, name=r.expression, time="0")
        if not r.passed:
            fail = ET.SubElement(tc, "failure", message=r.message, type="GateFailed")
            fail.text = f"{r.message}\nsource: {r.source}" if r.source else r.message
        else:
            ET.SubElement(tc, "system-out").text = r.message
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(outcome: GateOutcome, path: str | Path) -> None:
    from .outputs import atomic_write

    atomic_write(path, junit_xml(outcome))
