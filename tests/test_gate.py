"""Gates: threshold syntax, both sides of every threshold, TOML files, errors (exit 2), JUnit, CLI."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from xml.etree import ElementTree as ET

import pytest
from typer.testing import CliRunner

from robaudit.checks.clean import CleanSection
from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.errors import UsageError
from robaudit.gating import GateSpec, evaluate_gates, junit_xml, load_gate_file, parse_requires, parse_threshold
from robaudit.results import Flag, Provenance, ScanResult

runner = CliRunner()


@dataclass(frozen=True)
class _Metrics:
    """A stand-in section with chosen metric values (gates read only ``metrics()``)."""

    values: dict

    def metrics(self) -> dict[str, float]:
        return dict(self.values)


def _prov(**kw) -> Provenance:
    base = dict(
        robaudit_version="0",
        torch_version="0",
        device="cpu",
        seed=0,
        checkpoint="m.safetensors",
        checkpoint_sha256="0" * 64,
        checkpoint_format="safetensors",
        arch="tiny",
        dataset="synthetic",
        split="test",
        n=5,
        input_shape=(1, 8, 8),
        class_names=tuple("abcde"),
        data_source="memory",
    )
    base.update(kw)
    return Provenance(**base)


def _clean(accuracy: float = 0.4) -> CleanSection:
    return CleanSection(
        n=5,
        accuracy=accuracy,
        per_class=(1.0, 1.0, 0.0, 0.0, None),
        correct=(True, True, False, False, False),
        predictions=(0, 1, 0, 0, 0),
    )


def make_result(accuracy: float = 0.4, robust: float = 8 / 255, flags=()) -> ScanResult:
    return ScanResult(
        provenance=_prov(),
        sections={
            "clean": _clean(accuracy),
            "extra": _Metrics({"robust_acc.pgd.linf@8/255": robust, "robust_acc.pgd[steps=10].linf@0.1": 0.25}),
        },
        flags=tuple(flags),
    )


def _gate(result, *lines):
    return evaluate_gates(result, parse_requires(lines))


# --- syntax ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, metric, op, value",
    [
        ("clean.accuracy >= 0.9", "clean.accuracy", ">=", 0.9),
        ("clean.accuracy>=0.9", "clean.accuracy", ">=", 0.9),
        ("  robust_acc.pgd.linf@8/255   <   8/255 ", "robust_acc.pgd.linf@8/255", "<", 8 / 255),
        ("robust_acc.pgd[steps=10].linf@0.1 == 0.25", "robust_acc.pgd[steps=10].linf@0.1", "==", 0.25),
        ("margins.mean != -1e-3", "margins.mean", "!=", -1e-3),
        ("margins.q05 > 0", "margins.q05", ">", 0.0),
        ("margins.q95 <= 1/2", "margins.q95", "<=", 0.5),
    ],
)
def test_parse_threshold(text, metric, op, value):
    t = parse_threshold(text)
    assert (t.metric, t.op, t.value) == (metric, op, value)


@pytest.mark.parametrize(
    "text",
    [
        "clean.accuracy",
        "clean.accuracy >= ",
        ">= 0.4",
        "clean.accuracy => 0.4",
        "clean.accuracy >= abc",
        "clean.accuracy >= 1/0",
        "clean.accuracy >= nan",
        "clean.accuracy = 0.4",
        "clean.accuracy >= 0.4 0.5",
    ],
)
def test_malformed_threshold_is_usage_error(text):
    with pytest.raises(UsageError, match="--require"):
        parse_requires([text])


# --- both sides of each threshold, equality exact ---------------------------------------------------
@pytest.mark.parametrize(
    "op, expect_below, expect_equal, expect_above",
    [
        (">=", False, True, True),
        (">", False, False, True),
        ("<=", True, True, False),
        ("<", True, False, False),
        ("==", False, True, False),
        ("!=", True, False, True),
    ],
)
@pytest.mark.parametrize("actual_text, actual", [("0.4", 0.4), ("8/255", 8 / 255)])
def test_threshold_sides(op, expect_below, expect_equal, expect_above, actual_text, actual):
    """Actual value fixed; threshold just above (actual is below it), equal, just below."""
    up, down = actual + 1e-9, actual - 1e-9
    for threshold, expected in ((repr(up), expect_below), (actual_text, expect_equal), (repr(down), expect_above)):
        outcome = _gate(make_result(accuracy=actual), f"clean.accuracy {op} {threshold}")
        assert outcome.results[0].passed is expected, (op, threshold)
        assert outcome.results[0].actual == actual


def test_eps_in_metric_name_matched_numerically():
    outcome = _gate(make_result(robust=0.5), "robust_acc.pgd.linf@0.03137254901960784 >= 0.5")
    assert outcome.passed and outcome.results[0].metric == "robust_acc.pgd.linf@8/255"


def test_unknown_metric_did_you_mean():
    with pytest.raises(UsageError) as exc:
        _gate(make_result(), "clean.acuracy >= 0.5")
    msg = str(exc.value)
    assert "did you mean 'clean.accuracy'" in msg and "--list-metrics" in msg
    assert "robust_acc.pgd.linf@8/255" not in msg, "the message suggests close names, it does not dump the list"


def test_did_you_mean_names_at_most_three_of_many():
    many = {f"robust_acc.pgd[steps={k}].linf@0.1": 0.5 for k in range(1, 90)}
    result = ScanResult(provenance=_prov(), sections={"clean": _clean(), "extra": _Metrics(many)})
    with pytest.raises(UsageError) as exc:
        _gate(result, "robust_acc.pgd[steps=100].linf@0.1 >= 0.5")
    msg = str(exc.value)
    assert 1 <= msg.count("robust_acc.") <= 4  # the name asked for + at most three suggestions
    assert "lists all 90" in msg and len(msg) < 400


def test_canonical_attack_spelling_resolves():
    """A name with an attack's default parameters spelled out resolves to the canonical name."""
    result = ScanResult(provenance=_prov(), sections={"extra": _Metrics({"robust_acc.pgd.linf@0.1": 0.3})})
    outcome = _gate(result, "robust_acc.pgd[steps=20].linf@1/10 >= 0.3")
    assert outcome.passed and outcome.results[0].metric == "robust_acc.pgd.linf@0.1"
    # and a result written with the old spelling answers to the canonical name
    old = ScanResult(provenance=_prov(), sections={"extra": _Metrics({"robust_acc.pgd[steps=20].linf@0.1": 0.3})})
    assert _gate(old, "robust_acc.pgd.linf@0.1 >= 0.3").passed


def test_flag_gates():
    flags = (Flag("zero-gradients", "masked"), Flag("non-monotone-eps", "a"), Flag("non-monotone-eps", "b"))
    result = make_result(flags=flags)
    spec = GateSpec(forbid_flags=("zero-gradients", "probabilities-not-logits"))
    out = evaluate_gates(result, spec)
    assert [r.passed for r in out.results] == [False, True]
    assert evaluate_gates(result, GateSpec(forbid_all_flags=True)).results[0].actual == 3
    assert evaluate_gates(make_result(), GateSpec(forbid_all_flags=True)).passed


# --- TOML ------------------------------------------------------------------------------------------
def test_gate_files(tmp_path):
    f = tmp_path / "robaudit.toml"
    f.write_text(
        '[scan]\neps = "8/255"\n\n[gate]\nrequire = [\n  "clean.accuracy >= 0.4",\n  "robust_acc.pgd.linf@8/255 >= 8/255",\n]\nforbid_flags = "all"\n'
    )
    spec = load_gate_file(f)
    assert [t.metric for t in spec.thresholds] == ["clean.accuracy", "robust_acc.pgd.linf@8/255"]
    assert spec.forbid_all_flags and spec.thresholds[1].source.startswith(f"{f}:7")
    assert evaluate_gates(make_result(), spec).passed
    assert not evaluate_gates(make_result(flags=(Flag("x", "y"),)), spec).passed
    p = tmp_path / "pyproject.toml"
    p.write_text(
        '[project]\nname = "m"\n\n[tool.robaudit.gate]\nrequire = ["clean.accuracy > 0.4"]\nforbid_flags = ["zero-gradients"]\n'
    )
    spec = load_gate_file(p)
    assert spec.forbid_flags == ("zero-gradients",) and not evaluate_gates(make_result(), spec).passed


def test_gate_file_errors_name_the_table(tmp_path):
    f = tmp_path / "robaudit.toml"
    f.write_text("[other]\nx = 1\n")
    with pytest.raises(UsageError, match=r"no \[gate\] table .* \[tool\.robaudit\.gate\]"):
        load_gate_file(f)


@pytest.mark.parametrize(
    "content, needle",
    [
        ('[gate]\nrequire = ["clean.accuracy >= 0.4",\n  "clean.accuracy >>= 0.4"]\n', ":3: '\"clean.accuracy >>= 0.4\"]'"),
        ('[gate]\nrequire = ["clean.accuracy >= 0.4"\n', ":2: 'require = [\"clean.accuracy >= 0.4\"'"),  # unclosed array
        ('[gate]\nrequires = ["clean.accuracy >= 0.4"]\n', "did you mean 'require'"),
        ("[gate]\nrequire = 3\n", ":2"),
        ('[gate]\nforbid_flags = "some"\n', ":2"),
        ("[other]\nx = 1\n", "has no"),
        ("[gate]\n", "sets no"),
    ],
)
def test_malformed_gate_file_exit_2(tmp_path, content, needle):
    f = tmp_path / "robaudit.toml"
    f.write_text(content)
    r = make_result()
    path = tmp_path / "r.json"
    r2 = ScanResult(provenance=r.provenance, sections={"clean": r.section("clean")})
    r2.write_json(path)
    res = runner.invoke(app, ["gate", str(path), "--gate", str(f)])
    assert res.exit_code == 2, res.output
    assert str(f) in res.output and needle in res.output.replace("\n", ""), res.output


# --- JUnit -----------------------------------------------------------------------------------------
def test_junit_counts():
    outcome = evaluate_gates(
        make_result(flags=(Flag("zero-gradients", 'bad <"&">'),)),
        parse_requires(["clean.accuracy >= 0.4", "clean.accuracy > 0.4", "robust_acc.pgd.linf@8/255 < 0.5"]).merged(
            GateSpec(forbid_flags=("zero-gradients",))
        ),
    )
    root = ET.fromstring(junit_xml(outcome).encode())
    suite = root.find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "2" and suite.get("errors") == "0"
    cases = suite.findall("testcase")
    assert len(cases) == 4
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["clean.accuracy > 0.4", "no flag zero-gradients"]
    assert 'bad <"&">' in failed[1].find("failure").get("message")


# --- CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def result_json(tmp_path):
    r = make_result()
    path = tmp_path / "results.json"
    ScanResult(provenance=r.provenance, sections={"clean": r.section("clean")}).write_json(path)
    return path


def test_gate_cli(result_json, tmp_path, monkeypatch):
    ok = runner.invoke(app, ["gate", str(result_json), "--require", "clean.accuracy >= 0.4"])
    assert ok.exit_code == 0, ok.output
    junit = tmp_path / "out" / "junit.xml"
    bad = runner.invoke(
        app,
        [
            "gate",
            str(result_json),
            "--require",
            "clean.accuracy > 0.4",
            "--require",
            "clean.accuracy <= 0.4",
            "--junit",
            str(junit),
        ],
    )
    assert bad.exit_code == 1, bad.output
    assert "clean.accuracy > 0.4" in bad.output
    assert "1 of 2 gates failed" in bad.output
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    typo = runner.invoke(app, ["gate", str(result_json), "--require", "clean.acc >= 0.4"])
    assert typo.exit_code == 2 and "did you mean 'clean.accuracy'" in typo.output
    # no thresholds given: ./robaudit.toml is found; without it, a usage error
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["gate", str(result_json)]).exit_code == 2
    (tmp_path / "robaudit.toml").write_text('[gate]\nrequire = ["clean.accuracy >= 0.5"]\n')
    res = runner.invoke(app, ["gate", str(result_json)])
    assert res.exit_code == 1 and "clean.accuracy >= 0.5" in res.output
    assert runner.invoke(app, ["gate", str(tmp_path / "missing.json"), "--require", "clean.accuracy > 0"]).exit_code == 3


def test_scan_gate_html_junit_end_to_end(tmp_path):
    """scan --html --csv --require --junit on the embedded demo; the report re-rendered with the same
    gates from the JSON is byte-identical to the one scan wrote."""
    args = ["--require", "clean.accuracy >= 0", "--require", "robust_acc.ensemble.linf@0.1 > 1"]
    paths = {k: tmp_path / v for k, v in dict(json="r.json", html="r.html", junit="junit.xml", csv="csv").items()}
    res = runner.invoke(
        app,
        [
            "scan",
            str(DEMO_MODEL),
            "--dataset",
            "demo",
            "--n",
            "12",
            "--eps",
            "0.1",
            "--attacks",
            "fgsm",
            "--checks",
            "clean,attacks,margins",
            "--device",
            "cpu",
            "-q",
            "--json",
            str(paths["json"]),
            "--html",
            str(paths["html"]),
            "--csv",
            str(paths["csv"]),
            "--junit",
            str(paths["junit"]),
            *args,
        ],
    )
    assert res.exit_code == 1, res.output
    assert "robust_acc.ensemble.linf@0.1" in res.output and "1 of 2 gates failed" in res.output
    html = paths["html"].read_text(encoding="utf-8")
    assert "GATE FAILED" in html
    suite = ET.parse(paths["junit"]).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert (paths["csv"] / "samples.csv").exists()
    again = tmp_path / "again.html"
    res = runner.invoke(app, ["report", str(paths["json"]), "-o", str(again), *args])
    assert res.exit_code == 1
    assert again.read_text(encoding="utf-8") == html
    # a usage error in the gates stops the scan before any work
    res = runner.invoke(
        app,
        ["scan", str(DEMO_MODEL), "--dataset", "demo", "--require", "clean.accuracy >=", "--json", str(tmp_path / "no.json")],
    )
    assert res.exit_code == 2 and not (tmp_path / "no.json").exists()
    res = runner.invoke(app, ["scan", str(DEMO_MODEL), "--dataset", "demo", "--junit", str(tmp_path / "j.xml")])
    assert res.exit_code == 2 and "--junit needs gates" in res.output


def test_gate_outcome_dataclasses_frozen():
    outcome = _gate(make_result(), "clean.accuracy >= 0.4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.results[0].passed = False  # type: ignore[misc]


# --- intervals, names without a value, --list-metrics ------------------------------------------------
def test_lower_and_upper_gate_on_the_95_percent_interval():
    from robaudit.stats import clopper_pearson

    lo, hi = clopper_pearson(2, 5)  # make_result: 2 of 5 samples correct → about 0.053 … 0.853
    assert 0.05 < lo < 0.06 and 0.85 < hi < 0.86
    out = _gate(
        make_result(),
        "lower(clean.accuracy) >= 0.05",
        "lower(clean.accuracy) >= 0.06",
        "upper(clean.accuracy) <= 0.86",
        "upper(clean.accuracy) <= 0.85",
        "clean.accuracy >= 0.4",
    )
    assert [r.passed for r in out.results] == [True, False, True, False, True]
    assert out.results[0].actual == pytest.approx(lo) and out.results[2].actual == pytest.approx(hi)
    assert out.results[0].metric == "lower(clean.accuracy)" and "2/5" in out.results[1].message
    t = parse_threshold("lower(robust_acc.pgd.linf@8/255) >= 0.4")
    assert (t.bound, t.metric, t.value) == ("lower", "robust_acc.pgd.linf@8/255", 0.4)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("lower(clean.acuracy) >= 0.1", "did you mean 'clean.accuracy'"),
        ("lowr(clean.accuracy) >= 0.1", "lower(<metric>)"),
        ("upper(margins.mean) <= 1", "only accuracies"),
    ],
)
def test_interval_gate_errors(text, needle):
    result = ScanResult(provenance=_prov(), sections={"clean": _clean(), "margins": _Metrics({"margins.mean": 0.5})})
    with pytest.raises(UsageError, match=re.escape(needle)):
        _gate(result, text)


@dataclass(frozen=True)
class _Possible(_Metrics):
    """A section that can produce more names than it has values for (like minimal.median with no radius)."""

    names: tuple = ()

    def metric_names(self):
        return tuple(self.values) + self.names


def test_a_possible_metric_without_a_value_fails_its_gate_not_the_command():
    result = ScanResult(provenance=_prov(), sections={"minimal": _Possible({"minimal.q05": 0.1}, ("minimal.median",))})
    out = _gate(result, "minimal.median >= 0.01")
    assert not out.passed and "no value" in out.results[0].message
    with pytest.raises(UsageError, match="did you mean 'minimal.median'"):
        _gate(result, "minimal.medain >= 0.01")


def test_gate_list_metrics(result_json):
    res = runner.invoke(app, ["gate", str(result_json), "--list-metrics"])
    assert res.exit_code == 0, res.output
    line = next(row for row in res.output.splitlines() if row.startswith("clean.accuracy"))
    assert "0.4" in line and "2/5" in line and "lower(...)" in line
