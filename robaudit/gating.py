"""CI gates: thresholds on ScanResult metrics and forbidden flags.

A threshold is ``<metric> <op> <number>``: ``metric`` any name in ``ScanResult.metrics()``
(docs/results.md), ``op`` one of ``>= > <= < == !=``, ``number`` a decimal or a fraction such
as ``8/255``. Thresholds come from ``--require`` (repeatable) or a TOML file: a ``[gate]`` table in
``robaudit.toml`` or ``[tool.robaudit.gate]`` in ``pyproject.toml``::

    [gate]
    require = ["clean.accuracy >= 0.9", "robust_acc.ensemble.linf@8/255 >= 0.40"]
    forbid_flags = ["probabilities-not-logits"]   # or "all"

Comparisons are exact on the stored float: ``>= 0.4`` passes at exactly 0.4. A metric name not in
the result, or a malformed line or file, is a :class:`~robaudit.errors.UsageError` (exit 2).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable
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


@dataclass(frozen=True)
class Threshold:
    """One parsed ``<metric> <op> <number>``; ``source`` says where it was written."""

    expression: str
    metric: str
    op: str
    value: float
    source: str = "--require"


@dataclass(frozen=True)
class GateSpec:
    """What to enforce: thresholds, flag codes that must not be raised, or every flag."""

    thresholds: tuple[Threshold, ...] = ()
    forbid_flags: tuple[str, ...] = ()
    forbid_all_flags: bool = False
    source: str = ""

    def merged(self, other: "GateSpec") -> "GateSpec":
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
    return Threshold(expression=text.strip(), metric=m["metric"], op=m["op"], value=value, source=source)


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
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise UsageError("reading a thresholds file on Python 3.10 needs tomli (pip install tomli); or use --require") from None
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
            raise UsageError(f"{_where(path, text, key)}: unknown key {key!r} in {header}{hint} (known: {', '.join(_GATE_KEYS)})")
    require = table.get("require", [])
    if isinstance(require, str):
        require = [require]
    if not isinstance(require, list):
        raise UsageError(f"{_where(path, text, 'require')}: 'require' must be a list of strings like [\"clean.accuracy >= 0.9\"]")
    thresholds = []
    for item in require:
        line = _item_line(text, item) if isinstance(item, str) else None
        where = _where(path, text, "require", line)
        short = f"{path}:{line}" if line else str(path)
        thresholds.append(dataclasses.replace(parse_threshold(item, where), source=short))
    forbid = table.get("forbid_flags", [])
    forbid_all = False
    if isinstance(forbid, str):
        if forbid.strip().lower() != "all":
            raise UsageError(f"{_where(path, text, 'forbid_flags')}: 'forbid_flags' must be \"all\" or a list of flag codes")
        forbid_all, forbid = True, []
    if not isinstance(forbid, list) or not all(isinstance(c, str) and c.strip() for c in forbid):
        raise UsageError(f"{_where(path, text, 'forbid_flags')}: 'forbid_flags' must be \"all\" or a list of flag codes like [\"zero-gradients\"]")
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
def resolve_metric(name: str, available: Iterable[str]) -> str:
    """``name`` itself if present; else the metric with the same prefix and a numerically equal ε
    after ``@`` (``...linf@0.0313725...`` finds ``...linf@8/255``); else UsageError with did-you-mean."""
    names = sorted(available)
    if name in names:
        return name
    if "@" in name:
        prefix, _, eps_text = name.rpartition("@")
        try:
            eps = _parse_number(eps_text)
        except ValueError:
            eps = None
        if eps is not None:
            for cand in names:
                cp, _, ce = cand.rpartition("@")
                if cp == prefix:
                    try:
                        if math.isclose(_parse_number(ce), eps, rel_tol=1e-9, abs_tol=1e-12):
                            return cand
                    except ValueError:
                        continue
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise UsageError(f"unknown metric {name!r} in the result; {hint}(available: {', '.join(names) or 'none'})")


def evaluate_gates(result, gates: GateSpec) -> GateOutcome:
    """Evaluate every threshold and flag rule of ``gates`` against ``result``.

    Unknown metrics are checked first, all at once, so a typo fails before anything is reported.
    """
    metrics = result.metrics()
    resolved = [resolve_metric(t.metric, metrics) for t in gates.thresholds]
    out: list[GateResult] = []
    for t, name in zip(gates.thresholds, resolved):
        actual = metrics[name]
        if actual is None or (isinstance(actual, float) and math.isnan(actual)):
            passed, message = False, f"{name} has no value in this result"
            actual = None
        else:
            actual = float(actual)
            passed = OPS[t.op](actual, t.value)
            verb = "holds" if passed else "fails"
            message = f"{name} = {actual:.6g} {verb}: required {t.op} {t.value:.6g}"
        out.append(GateResult(t.expression, name, t.op, t.value, actual, passed, message, t.source))
    raised = [f.code for f in result.flags]
    if gates.forbid_all_flags:
        passed = not raised
        message = "no flags raised" if passed else f"flags raised: {', '.join(dict.fromkeys(raised))}"
        out.append(GateResult("no flags", "flags", "absent", None, float(len(raised)), passed, message, gates.source))
    for code in gates.forbid_flags:
        count = raised.count(code)
        msgs = [f.message for f in result.flags if f.code == code]
        message = f"flag {code} not raised" if not count else f"flag {code} raised: {msgs[0]}"
        out.append(GateResult(f"no flag {code}", f"flag:{code}", "absent", None, float(count), count == 0, message, gates.source))
    return GateOutcome(tuple(out))


# --- JUnit -----------------------------------------------------------------------------------------
def junit_xml(outcome: GateOutcome, suite: str = "robaudit.gate") -> str:
    """JUnit XML: one <testcase> per gate, a <failure message=...> for each failed one. No timestamps."""
    root = ET.Element("testsuites", name="robaudit", tests=str(len(outcome.results)), failures=str(len(outcome.failures)))
    ts = ET.SubElement(
        root, "testsuite", name=suite, tests=str(len(outcome.results)), failures=str(len(outcome.failures)),
        errors="0", skipped="0", time="0",
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(outcome), encoding="utf-8")
