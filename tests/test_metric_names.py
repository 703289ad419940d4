"""Metric names: canonical spelling, prediction before a scan (= the names a real scan produces),
`scan --list-metrics` and pre-scan gate checks without a forward pass, and every name the README,
docs/ and examples/ mention resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.config import ScanConfig, predict_metric_names
from robaudit.data import DataRequest, load_dataset
from robaudit.engine import run_scan
from robaudit.gating import resolve_metric
from robaudit.metric_names import canonical_metric, parse_attack_label
from robaudit.models import load_model
from robaudit.models.nets.small_cnn import SmallCNN

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
# every check, with settings small enough for a test (the names do not depend on them)
ALL_CHECKS_SMALL = "all,curvature:k=2,surfaces:n_samples=1:steps=5,landscape:n_samples=16:steps_1d=3:steps_2d=3"


@pytest.mark.parametrize(
    "written, canonical",
    [
        ("robust_acc.pgd[steps=20].linf@0.1", "robust_acc.pgd.linf@0.1"),
        ("robust_acc.pgd.linf@0.03137254901960784", "robust_acc.pgd.linf@8/255"),
        ("robust_acc.pgd[steps=50,restarts=2].l2@1/2", "robust_acc.pgd[restarts=2,steps=50].l2@0.5"),
        ("robust_acc.ensemble.Linf@8/255", "robust_acc.ensemble.linf@8/255"),
        ("robust_acc.fab-t[n_iter=100].linf@0.1", "robust_acc.fab-t.linf@0.1"),
        ("robust_acc.not-an-attack[x=1].linf@0.1", "robust_acc.not-an-attack[x=1].linf@0.1"),
        ("clean.accuracy", "clean.accuracy"),
        ("robust_acc.pgd.linf@abc", "robust_acc.pgd.linf@abc"),
    ],
)
def test_canonical_metric(written, canonical):
    assert canonical_metric(written) == canonical


@pytest.fixture(scope="module")
def demo():
    return load_model(str(DEMO_MODEL)), load_dataset("demo", DataRequest(n=12))


@pytest.mark.slow
def test_prediction_is_exactly_what_a_real_scan_produces(demo):
    """Every check, two radii, an attack list with a non-default parameter and --train-n: the
    predicted names equal the result's (every name its sections can produce, valued or not)."""
    torch.manual_seed(0)
    loaded, data = demo
    config = ScanConfig.parse(
        eps="0.05,8/255", attacks="fgsm,pgd:steps=3,pgd:steps=20", checks=ALL_CHECKS_SMALL, device="cpu", batch_size=12
    )
    predicted = predict_metric_names(
        config, input_shape=data.input_shape, num_classes=data.num_classes, model=loaded.model, train_n=data.n
    )
    result = run_scan(loaded, data, config, quiet=True, command_line="t", train_data=data)
    assert not predicted.unpredictable
    assert sorted(predicted.names) == sorted(result.metric_names())
    assert set(result.metrics()) <= set(predicted.names)
    assert "robust_acc.pgd.linf@8/255" in predicted.names and "robust_acc.pgd[steps=3].linf@0.05" in predicted.names


def test_default_scan_prediction_matches(demo):
    loaded, data = demo
    config = ScanConfig.parse(eps="0.1", device="cpu")
    predicted = predict_metric_names(config, input_shape=data.input_shape, num_classes=data.num_classes, model=loaded.model)
    result = run_scan(loaded, data, config, quiet=True, command_line="t")
    assert sorted(predicted.names) == sorted(result.metric_names())
    # the quick preset's PGD-20 is PGD at its defaults: named pgd, as harden and the docs name it
    assert "robust_acc.pgd.linf@0.1" in result.metrics()


@pytest.fixture
def no_forward(monkeypatch):
    """Fail the test if the demo model's forward runs."""

    def boom(self, x):
        raise AssertionError("the model ran a forward pass")

    monkeypatch.setattr(SmallCNN, "forward", boom)


def test_scan_list_metrics_runs_no_forward(no_forward, tmp_path):
    res = runner.invoke(
        app,
        [
            "scan",
            str(DEMO_MODEL),
            "-d",
            "demo",
            "--n",
            "8",
            "--attacks",
            "standard",
            "--eps",
            "8/255",
            "--list-metrics",
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for name in (
        "clean.accuracy",
        "robust_acc.apgd-ce.linf@8/255",
        "robust_acc.fab-t.linf@8/255",
        "robust_acc.ensemble.linf@8/255",
        "spectra.conv1.sigma_max",
    ):
        assert any(line.split()[0] == name for line in lines if line.strip()), name
    assert not (tmp_path / "r.json").exists()


def test_unknown_gate_name_rejected_before_the_scan(no_forward, tmp_path):
    """issue 12: no scan, exit 2, no r.json, a did-you-mean and no list of every name."""
    out = tmp_path / "r.json"
    res = runner.invoke(
        app, ["scan", str(DEMO_MODEL), "-d", "demo", "--n", "8", "--json", str(out), "--require", "no.such.metric >= 1"]
    )
    assert res.exit_code == 2, res.output
    assert not out.exists()
    assert "no.such.metric" in res.output and "--list-metrics" in res.output
    assert "robust_acc.fgsm" not in res.output and "spectra" not in res.output
    res = runner.invoke(
        app, ["scan", str(DEMO_MODEL), "-d", "demo", "--n", "8", "--eps", "0.1", "--require", "robust_acc.pgd.linf@0.2 >= 0.1"]
    )
    assert res.exit_code == 2 and "did you mean 'robust_acc.pgd.linf@0.1'" in res.output, res.output


def test_gate_file_names_checked_before_the_scan(no_forward, tmp_path):
    gate = tmp_path / "robaudit.toml"
    gate.write_text('[gate]\nrequire = ["clean.acuracy >= 0.5"]\n')
    res = runner.invoke(app, ["scan", str(DEMO_MODEL), "-d", "demo", "--n", "8", "--gate", str(gate)])
    assert res.exit_code == 2 and "did you mean 'clean.accuracy'" in res.output and "robaudit.toml:2" in res.output


def test_a_spelling_of_a_predicted_name_passes_the_pre_scan_check(tmp_path):
    res = runner.invoke(
        app,
        [
            "scan",
            str(DEMO_MODEL),
            "-d",
            "demo",
            "--n",
            "8",
            "--eps",
            "8/255",
            "--checks",
            "clean,attacks",
            "--attacks",
            "pgd:steps=20",
            "-q",
            "--require",
            "robust_acc.pgd[steps=20].linf@0.03137254901960784 >= 0",
            "--require",
            "lower(robust_acc.ensemble.linf@8/255) >= 0",
        ],
    )
    assert res.exit_code == 0, res.output


# --- every metric name the documentation shows resolves ---------------------------------------------
_PREFIXES = (
    "clean",
    "robust_acc",
    "margins",
    "sanity",
    "minimal",
    "jacobian",
    "curvature",
    "indicator",
    "spectra",
    "surfaces",
    "landscape",
    "certified_acc",
    "certify",
)
_NAME = re.compile(r"(?<![\w.\-])(?:" + "|".join(_PREFIXES) + r")\.[A-Za-z0-9_.\[\]=,@/\-]+")
_FILE = re.compile(r"\.(?:safetensors|py|json|html|csv|md|toml|xml|pt2?|pth|onnx|npz|png|j2)$")
_DOC_FILES = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").iterdir()),
]


def _documented_names() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for rel in _DOC_FILES:
        text = (ROOT / rel).read_text(encoding="utf-8")
        # paragraphs documenting the columns of ScanResult.samples()/per_class() name table columns
        # (minimal.radius, jacobian.margin.l1, ...), not metrics
        text = "\n\n".join(p for p in text.split("\n\n") if "`samples()` columns" not in p)
        for m in _NAME.finditer(text):
            name = m.group(0).rstrip(",")
            if name.endswith(("@", ".")):
                continue  # a placeholder (robust_acc.<attack>…) or an f-string ({eps}) left a prefix only
            if _FILE.search(name):
                continue  # a file name (robaudit/checks/sanity.py, runs/jacobian.safetensors), not a metric
            found.setdefault(name, set()).add(rel)
    return found


def test_documentation_mentions_metric_names():
    names = _documented_names()
    assert "robust_acc.ensemble.linf@8/255" in names and "clean.accuracy" in names and len(names) >= 30


def test_every_documented_metric_name_resolves(demo):
    """Names other than robust_acc.* against the prediction for every check on the demo model
    (--train-n on, so the train metrics exist); each robust_acc.* name against the prediction for
    the attack, norm and ε it names — the attack and its parameters must exist and the name be the
    canonical one or a spelling of it. Prediction = a real scan's names (the tests above)."""
    loaded, data = demo
    config = ScanConfig.parse(eps="0.1", checks=ALL_CHECKS_SMALL, device="cpu")
    general = predict_metric_names(
        config, input_shape=data.input_shape, num_classes=data.num_classes, model=loaded.model, train_n=10
    ).names
    failures = []
    for name, where in sorted(_documented_names().items()):
        if "robust_acc.random-sign." in name and where == {"docs/plugins.md"}:
            continue  # the attack docs/plugins.md's walkthrough writes; not installed here
        try:
            if name.startswith("robust_acc."):
                head, _, eps = name.rpartition("@")
                label, _, norm = head[len("robust_acc.") :].rpartition(".")
                attack, params = parse_attack_label(label)
                spec = "fgsm" if attack == "ensemble" else ":".join([attack, *(f"{k}={v}" for k, v in params)])
                cfg = ScanConfig.parse(eps=eps, norm=norm, attacks=spec, checks="clean,attacks")
                names = predict_metric_names(cfg, input_shape=(3, 32, 32), num_classes=10).names
            elif name.startswith(("certified_acc.", "certify.")) and "@" in name:
                head, _, eps = name.rpartition("@")
                method, _, norm = head.split(".", 1)[1].removeprefix("upper.").removeprefix("unresolved.").rpartition(".")
                cfg = ScanConfig.parse(eps=eps, norm=norm, attacks="fgsm", checks=f"clean,attacks,certify:method={method}")
                names = predict_metric_names(cfg, input_shape=(3, 32, 32), num_classes=10).names
            elif name.startswith("certify."):
                cfg = ScanConfig.parse(eps="0.1", checks="clean,certify:radius=true")
                names = predict_metric_names(cfg, input_shape=(3, 32, 32), num_classes=10).names
            else:
                names = general
            resolve_metric(name, names)
        except Exception as exc:  # noqa: BLE001 - collect every failure with where it is written
            failures.append(f"{name} ({', '.join(sorted(where))}): {exc}")
    assert not failures, "\n".join(failures)
