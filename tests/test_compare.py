"""compare: deltas sorted by drop, refusal on different data / threat model, --force, --max-drop."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robaudit.cli.main import app
from robaudit.compare import compare_results
from robaudit.config import ScanConfig, parse_attack_list
from robaudit.data.spec import DataSpec
from robaudit.engine import run_scan
from robaudit.errors import UsageError
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.results import ScanResult

runner = CliRunner()


def _scan(n: int = 16) -> ScanResult:
    """A real scan of the first ``n`` of 16 samples (a result of another size reads back consistently)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::2] = (y[::2] + 1) % 10  # half misclassified: clean accuracy 0.5 exactly
    data = DataSpec("synthetic", "test", x[:n], y[:n], tuple(str(i) for i in range(10)), "memory")
    loaded = LoadedModel(net, ModelInfo(path="a.safetensors", format="safetensors", sha256="0" * 64, arch="lin"))
    config = ScanConfig(
        eps=(0.01, 0.1),
        attacks=parse_attack_list("fgsm"),
        device="cpu",
        checks=("clean", "attacks", "margins"),
        keep_examples=0,
    )
    return run_scan(loaded, data, config, command_line="t")


@pytest.fixture(scope="module")
def before() -> ScanResult:
    return _scan()


def _with(result: ScanResult, *, clean=None, robust_shift=0.0, prov=None, attacks=None) -> ScanResult:
    sections = dict(result.sections)
    if clean is not None:
        sections["clean"] = dataclasses.replace(sections["clean"], accuracy=clean)
    att = sections["attacks"]
    if robust_shift:
        att = dataclasses.replace(
            att,
            runs=tuple(dataclasses.replace(r, robust_accuracy=r.robust_accuracy + robust_shift) for r in att.runs),
            ensemble={k: v + robust_shift for k, v in att.ensemble.items()},
        )
    if attacks:
        att = dataclasses.replace(att, **attacks)
    sections["attacks"] = att
    return dataclasses.replace(result, sections=sections, provenance=dataclasses.replace(result.provenance, **(prov or {})))


def _files(tmp_path, a: ScanResult, b: ScanResult):
    pa, pb = tmp_path / "before.json", tmp_path / "after.json"
    a.write_json(pa)
    b.write_json(pb)
    return str(pa), str(pb)


def test_deltas_sorted_largest_drop_first(before):
    assert before.section("clean").accuracy == 0.5
    after = _with(before, clean=0.25, robust_shift=-0.0625)
    c = compare_results(before, after)
    assert c.deltas[0].metric == "clean.accuracy" and c.deltas[0].delta == -0.25
    deltas = [d.delta for d in c.deltas]
    assert deltas == sorted(deltas)
    assert {d.metric for d in c.deltas} == set(before.metrics())
    assert all(d.delta == -0.0625 for d in c.deltas if d.metric.startswith("robust_acc."))
    assert c.regressions(0.25) == ()  # a drop of exactly max_drop is allowed
    assert [d.metric for d in c.regressions(0.2)] == ["clean.accuracy"]
    assert len(c.regressions(0.0)) == 1 + len(before.section("attacks").metrics())


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(prov={"dataset": "cifar10"}), "provenance.dataset"),
        (dict(prov={"split": "train"}), "provenance.split"),
        (dict(n=8), "provenance.n"),
        (dict(prov={"data_source": "/other"}), "provenance.data_source"),
        (dict(attacks={"norm": "l2"}), "attacks.norm"),
        (dict(attacks={"eps": (0.01, 0.2)}), "attacks.eps"),
    ],
)
def test_refuses_mismatched_data_or_threat_model(before, tmp_path, change, field):
    after = _scan(change["n"]) if "n" in change else _with(before, **change)
    with pytest.raises(UsageError, match=field.replace(".", r"\.")):
        compare_results(before, after)
    assert field in compare_results(before, after, force=True).problems[0]
    a, b = _files(tmp_path, before, after)
    res = runner.invoke(app, ["compare", a, b])
    assert res.exit_code == 2 and field in res.output and "--force" in res.output
    res = runner.invoke(app, ["compare", a, b, "--force"])
    assert res.exit_code == 0, res.output
    assert "warning (--force)" in res.output and field in res.output


def test_max_drop_cli(before, tmp_path):
    a, b = _files(tmp_path, before, _with(before, robust_shift=-0.125))
    assert runner.invoke(app, ["compare", a, a, "--max-drop", "0"]).exit_code == 0
    res = runner.invoke(app, ["compare", a, b, "--max-drop", "0.01"])
    assert res.exit_code == 1, res.output
    assert "REGRESSION" in res.output and "robust_acc.fgsm.linf@0.1" in res.output
    assert runner.invoke(app, ["compare", a, b, "--max-drop", "0.125"]).exit_code == 0  # equal drop passes
    assert runner.invoke(app, ["compare", a, b, "--max-drop", "0.12"]).exit_code == 1
    assert runner.invoke(app, ["compare", a, b, "--max-drop", "-1"]).exit_code == 2
    # a gain is never a regression
    assert runner.invoke(app, ["compare", b, a, "--max-drop", "0"]).exit_code == 0


def test_compare_html(before, tmp_path):
    after = _with(before, clean=0.25, prov={"checkpoint": "<b>after</b>.safetensors"})
    a, b = _files(tmp_path, before, after)
    out = tmp_path / "compare.html"
    res = runner.invoke(app, ["compare", a, b, "-o", str(out), "--max-drop", "0.01"])
    assert res.exit_code == 1
    html = out.read_text(encoding="utf-8")
    assert "REGRESSION" in html and "clean.accuracy" in html and "-25.00 pp" in html
    assert "<b>after</b>" not in html and "&lt;b&gt;after&lt;/b&gt;" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count('src="data:image/png;base64,') == 1
    assert html.index("clean.accuracy") < html.index("margins.mean")


# --- paired test on the per-sample results -------------------------------------------------------------
def _lose(result: ScanResult, k: int) -> ScanResult:
    """The same result with the first k correct samples now wrong (and so not robust anywhere)."""
    clean = result.section("clean")
    lost = [i for i, c in enumerate(clean.correct) if c][:k]
    correct = tuple(c and i not in lost for i, c in enumerate(clean.correct))
    att = result.section("attacks")
    runs = tuple(dataclasses.replace(r, robust=tuple(v and i not in lost for i, v in enumerate(r.robust))) for r in att.runs)
    robust = {k2: tuple(v and i not in lost for i, v in enumerate(vs)) for k2, vs in att.ensemble_robust.items()}
    sections = dict(result.sections)
    sections["clean"] = dataclasses.replace(clean, correct=correct, accuracy=sum(correct) / len(correct))
    sections["attacks"] = dataclasses.replace(
        att,
        runs=tuple(dataclasses.replace(r, robust_accuracy=sum(r.robust) / len(r.robust)) for r in runs),
        ensemble_robust=robust,
        ensemble={k2: sum(v) / len(v) for k2, v in robust.items()},
    )
    return dataclasses.replace(result, sections=sections)


def test_exact_mcnemar_on_every_accuracy_and_accuracies_first(before):
    from robaudit.compare import is_accuracy_metric
    from robaudit.stats import mcnemar_exact

    after = _lose(before, 6)  # 6 of the 8 correct samples lost, none gained
    c = compare_results(before, after)
    clean = next(d for d in c.deltas if d.metric == "clean.accuracy")
    assert (clean.paired.lost, clean.paired.gained, clean.paired.n) == (6, 0, 16)
    assert clean.paired.p_value == pytest.approx(mcnemar_exact(6, 0)) == pytest.approx(2 / 64)
    assert clean.significant and clean.delta == pytest.approx(-6 / 16)
    for d in c.deltas:
        assert (d.paired is not None) == is_accuracy_metric(d.metric)
    kinds = [is_accuracy_metric(d.metric) for d in c.deltas]
    assert kinds == sorted(kinds, reverse=True), "accuracy metrics come first"
    acc = [d.delta for d in c.deltas if is_accuracy_metric(d.metric)]
    assert acc == sorted(acc), "largest drop first among accuracies"
    assert compare_results(before, _lose(before, 1)).deltas[0].paired.p_value == 1.0  # 1 of 1 discordant: p = 1


def test_max_drop_significant(before, tmp_path):
    a, one = _files(tmp_path, before, _lose(before, 1))
    res = runner.invoke(app, ["compare", a, one, "--max-drop", "0.01"])
    assert res.exit_code == 1 and "McNemar p = 1" in res.output, res.output
    res = runner.invoke(app, ["compare", a, one, "--max-drop", "0.01", "--significant"])
    assert res.exit_code == 0, res.output  # a one-sample drop is not evidence of a regression
    six = tmp_path / "six.json"
    _lose(before, 6).write_json(six)
    res = runner.invoke(app, ["compare", a, str(six), "--max-drop", "0.01", "--significant", "-o", str(tmp_path / "c.html")])
    assert res.exit_code == 1 and "significant at 0.05" in res.output, res.output
    assert "McNemar" in (tmp_path / "c.html").read_text(encoding="utf-8")
    assert runner.invoke(app, ["compare", a, one, "--significant"]).exit_code == 2  # needs --max-drop


def test_pairing_needs_the_same_samples(before, tmp_path):
    clean = before.section("clean")
    shuffled = dataclasses.replace(
        before, sections={**before.sections, "clean": dataclasses.replace(clean, labels=clean.labels[::-1])}
    )
    with pytest.raises(UsageError, match="labels differ"):
        compare_results(before, shuffled)
    forced = compare_results(before, shuffled, force=True)
    assert forced.unpaired and all(d.paired is None for d in forced.deltas)
    with pytest.raises(UsageError, match="--significant"):
        forced.regressions(0.0, significant=True)
    a, b = _files(tmp_path, before, shuffled)
    res = runner.invoke(app, ["compare", a, b, "--force", "--max-drop", "0", "--significant"])
    assert res.exit_code == 2 and "same samples" in res.output
