"""HTML report and CSV tables: self-contained, escaped, deterministic, only the sections that ran."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from robaudit.cli.main import app
from robaudit.config import ScanConfig, parse_attack_list
from robaudit.data.spec import DataSpec
from robaudit.engine import run_scan
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.report.html import render_html
from robaudit.report.tables import robust_table, samples_table, write_csv
from robaudit.results import Flag, ScanResult

runner = CliRunner()
EVIL = "<script>alert(1)</script>"


class _Net(nn.Module):
    def __init__(self, channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16, 10)
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def tiny_result(channels: int = 1, n: int = 24, class_names=None) -> ScanResult:
    """A real scan of a tiny CNN on random 8×8 images: clean, attacks (with examples), margins."""
    torch.manual_seed(0)
    net = _Net(channels).eval()
    x = torch.rand(n, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::4] = (y[::4] + 1) % 10
    names = class_names or tuple(f"class-{i}" for i in range(10))
    data = DataSpec("synthetic", "test", x, y, names, "memory")
    loaded = LoadedModel(net, ModelInfo(path="models/tiny.safetensors", format="safetensors", sha256="0" * 64, arch="tiny"))
    config = ScanConfig(
        eps=(0.01, 0.05),
        attacks=parse_attack_list("fgsm,pgd:steps=3"),
        device="cpu",
        batch_size=32,
        checks=("clean", "attacks", "margins"),
        keep_examples=4,
    )
    return run_scan(loaded, data, config, command_line="robaudit scan models/tiny.safetensors")


@pytest.fixture(scope="module")
def result() -> ScanResult:
    return tiny_result()


@pytest.fixture(scope="module")
def html(result) -> str:
    return render_html(result)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        self.tags.append((tag, d))
        if "id" in d:
            self.ids.append(d["id"])


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def test_self_contained(html):
    p = _parse(html)
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(imgs) >= 3 + 1 + 1 + 3 * 4, "per-class, curve, 3 histograms, 3 images per gallery sample"
    for attrs in imgs:
        assert attrs["src"].startswith("data:image/png;base64,"), attrs.get("alt")
        png = Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1])))
        png.load()
        assert png.format == "PNG" and png.size[0] > 0
    for tag, attrs in p.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed")
        for name in ("src", "href"):
            if name not in attrs:
                continue
            value = attrs[name] or ""
            assert not value.startswith(("http:", "https:", "//")), (tag, value)
            if name == "href":
                assert value.startswith("#"), value  # only in-page anchors
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html
    ids = p.ids
    assert len(ids) == len(set(ids)), "duplicate element ids"
    for tag, attrs in p.tags:
        if tag == "a":
            assert attrs["href"][1:] in ids, f"dangling in-page link {attrs['href']}"


def test_report_content(result, html):
    assert "Verdict" in html and "Provenance" in html
    assert html.count("<figure>") == len(result.section("attacks").examples) > 0
    for ex in result.section("attacks").examples:
        assert f"sample #{ex.index}" in html
    clean = result.section("clean")
    assert f"{100 * clean.accuracy:.1f}%" in html
    for key in result.section("attacks").ensemble:
        assert f"ε={key}" in html
    assert "class-3" in html  # class names next to indices


def test_rerender_from_json_is_byte_identical(result, html, tmp_path):
    path = tmp_path / "results.json"
    result.write_json(path)
    assert render_html(ScanResult.read_json(path)) == html
    out = tmp_path / "report.html"
    res = runner.invoke(app, ["report", str(path), "-o", str(out), "--csv", str(tmp_path / "csv")])
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == html
    assert (tmp_path / "csv" / "samples.csv").exists() and (tmp_path / "csv" / "robust_accuracy.csv").exists()


def test_everything_from_user_or_checkpoint_is_escaped(result):
    names = (EVIL, 'say "hi"', "fish & chips", "$5 bill", "it's", *[f"c{i}" for i in range(5, 10)])
    prov = dataclasses.replace(
        result.provenance,
        class_names=names,
        checkpoint=f'/models/{EVIL}&"x".pt',
        arch=EVIL,
        dataset=f"imagefolder:{EVIL}",
        data_source=f"/data/{EVIL}",
        command_line=f"robaudit scan '{EVIL}' --dataset \"a&b\"",
    )
    evil = dataclasses.replace(
        result,
        provenance=prov,
        flags=(Flag(f"odd{EVIL}", f"message {EVIL} & more"),),
        model_warnings=(f"weights {EVIL}",),
        sections={**result.sections, f"plugin{EVIL}": {EVIL: EVIL, "ok": 'a "b" & c'}},
    )
    html = render_html(evil)
    assert EVIL not in html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'say "hi"' not in html and "say &#34;hi&#34;" in html
    assert "fish & chips" not in html and "fish &amp; chips" in html
    assert "$5 bill" in html  # shown as text; in the per-class plot it was escaped for mathtext
    assert 'a "b" & c' not in html
    assert 'id="flag-odd-script-alert-1-script"' in html  # anchors are slugs


def test_sections_that_did_not_run_are_absent(result):
    only_clean = dataclasses.replace(result, sections={"clean": result.section("clean")})
    html = render_html(only_clean)
    assert 'id="section-clean"' in html
    for name in ("attacks", "margins"):
        assert f'id="section-{name}"' not in html
    # (the flag explanations at the top mention "worst case" in prose; the attack table's row is gone)
    assert "Robust accuracy under attack" not in html and "<td>worst case</td>" not in html
    assert "robust accuracy, worst case" not in html and "NOT AUTOATTACK-GRADE" not in html
    assert "Margins, true-class" not in html


def test_unknown_section_gets_generic_table(result):
    plugin = {"score": 0.25, "values": list(range(100)), "nested": {"a": 1, "b": [1, 2]}}
    html = render_html(dataclasses.replace(result, sections={"clean": result.section("clean"), "myplugin": plugin}))
    assert 'id="section-myplugin"' in html
    assert "nested.a" in html and "100 values" in html and "0.25" in html


def test_csv_tables(result, tmp_path):
    paths = write_csv(result, tmp_path)
    samples = pd.read_csv(paths[0])
    att = result.section("attacks")
    assert len(samples) == result.provenance.n
    assert list(samples.columns[:7]) == ["index", "label", "prediction", "correct", "margin", "true_class_probability", "loss"]
    for run in att.runs:
        col = f"robust.{run.attack}.{run.norm}@{'0.01' if run.eps == 0.01 else '0.05'}"
        assert samples[col].tolist() == list(run.robust)
    assert samples["correct"].tolist() == list(result.section("clean").correct)
    per_eps = pd.read_csv(paths[1])
    assert len(per_eps) == len(att.runs) + len(att.eps)
    assert set(per_eps.columns) >= {
        "attack",
        "norm",
        "eps",
        "robust_accuracy",
        "success_rate",
        "mean_perturbation",
        "passes",
        "seconds",
    }
    ens = per_eps[per_eps.attack == "ensemble"]
    assert ens.robust_accuracy.tolist() == [att.ensemble[k] for k in ("0.01", "0.05")]
    assert samples_table(result).shape == samples.shape and robust_table(result).shape == per_eps.shape


def test_no_timestamps_or_software_tags(html):
    assert not re.search(r"20\d\d-\d\d-\d\d", html)
    for m in re.finditer(r'src="data:image/png;base64,([^"]+)"', html):
        raw = base64.b64decode(m.group(1))
        assert b"Software" not in raw and b"tIME" not in raw


def test_margins_train_gap_shown_when_present(result):
    margins = dataclasses.replace(result.section("margins"), train_n=10, train_median=1.5, train_mean_loss=0.5, loss_gap=0.25)
    html = render_html(dataclasses.replace(result, sections={"clean": result.section("clean"), "margins": margins}))
    assert "first 10 training samples" in html and "<strong>0.25</strong> nats" in html
    assert "training samples" not in render_html(dataclasses.replace(result, sections={"margins": result.section("margins")}))


# --- intervals, verdict, flags, bibliography, plots that say something ---------------------------------
def test_every_accuracy_carries_n_and_its_interval(result, html, tmp_path):
    from robaudit.stats import clopper_pearson

    intervals = result.intervals()
    clean = result.section("clean")
    k = sum(clean.correct)
    assert (intervals["clean.accuracy"].k, intervals["clean.accuracy"].n) == (k, 24)
    lo, hi = clopper_pearson(k, 24)
    assert f"95% CI {100 * lo:.1f}–{100 * hi:.1f}% · {k}/24" in html
    for name, p in intervals.items():  # the attack table shows each robust accuracy's interval
        if name.startswith("robust_acc."):
            assert f"95% CI {100 * p.lower:.1f}–{100 * p.upper:.1f}% · {p.k}/{p.n}" in html, name
    data = result.to_dict()["intervals"]
    assert data["method"] == "clopper-pearson" and data["level"] == 0.95
    assert set(data["metrics"]) == {m for m in result.metrics() if m.startswith(("clean.", "robust_acc."))}
    assert data["metrics"]["clean.accuracy"] == {"k": k, "n": 24, "value": k / 24, "lower": lo, "upper": hi}
    per_class = data["per_class"]["clean.accuracy"]
    assert sum(p["n"] for p in per_class if p) == 24 and sum(p["k"] for p in per_class if p) == k
    table = robust_table(result)
    assert {"metric", "k", "n", "ci95_lower", "ci95_upper"} <= set(table.columns)
    row = table[table.attack == "ensemble"].iloc[-1]
    assert row["ci95_lower"] == pytest.approx(intervals[row["metric"]].lower) and row["n"] == 24


def test_verdict_names_the_attacks_and_whether_they_are_autoattack_grade(html):
    from robaudit.attacks import ATTACKS
    from robaudit.report.verdict import recipe

    assert "NOT AUTOATTACK-GRADE" in html and "Worst case over fgsm + pgd[steps=3]" in html

    def run(name, **params):
        return {"attack": name, "params": {**ATTACKS.get(name)().params(), **params}}

    full = [run("apgd-ce"), run("apgd-t"), run("fab-t"), run("square")]
    assert recipe({"runs": full, "preset": "standard"}).autoattack
    more = [run("apgd-ce", n_iter=200, n_restarts=2), *full[1:], run("fgsm")]
    assert recipe({"runs": more}).autoattack  # larger budgets and extra attacks keep it AutoAttack-grade
    weak = recipe({"runs": [run("apgd-ce", n_iter=10), *full[1:]]})
    assert not weak.autoattack and weak.missing == ("apgd-ce",) and "not AutoAttack-grade" in weak.sentence()
    assert recipe({"runs": full[:3]}).missing == ("square",)


def test_every_internal_link_resolves_and_the_bibliography_lists_what_is_cited(result):
    flagged = dataclasses.replace(result, flags=(Flag("blackbox-beats-whitebox", "a sample survived"),))
    page = render_html(flagged)
    parsed = _parse(page)
    ids = set(parsed.ids)
    targets = {d["href"][1:] for tag, d in parsed.tags if tag == "a" and d.get("href", "").startswith("#")}
    assert targets and targets <= ids, targets - ids
    cited = {t for t in targets if t.startswith("ref-")}
    listed = {i for i in ids if i.startswith("ref-")}
    assert cited == listed and "ref-clopper1934" in cited and "ref-goodfellow2015" in cited  # fgsm links its paper
    # the raised flag is explained in the report itself, from the packaged flags.md
    assert "Raised if" in page and "survived every white-box" in page
    assert page.count('id="flag-blackbox-beats-whitebox"') == 1


def test_flags_doc_ships_with_the_package_and_covers_every_flag():
    import pathlib

    from robaudit.report.flag_docs import flag_explanations, flags_markdown

    root = pathlib.Path(__file__).resolve().parent.parent
    codes = set()
    for path in (root / "robaudit").rglob("*.py"):
        codes |= set(re.findall(r'Flag\(\s*"([a-z0-9-]+)"', path.read_text(encoding="utf-8")))
    assert codes and codes <= set(flag_explanations()), codes - set(flag_explanations())
    assert (root / "docs" / "flags.md").read_text(encoding="utf-8") == flags_markdown()


def test_histogram_bins_never_one_tall_bar():
    import numpy as np

    from robaudit.report.plots import histogram_bins

    rng = np.random.default_rng(0)
    loss = np.concatenate([rng.exponential(1e-4, 90), rng.exponential(2.0, 10), [0.0]])  # confident model's CE
    b = histogram_bins([loss])
    assert b.scale == "symlog" and np.histogram(loss, b.edges)[0].max() < 0.5 * loss.size
    pct = rng.uniform(0, 3, 50)  # percentages in [0, 3] on a natural range [0, 100]
    b = histogram_bins([pct], 25, (0.0, 100.0))
    assert b.edges[-1] <= 3.0 + 1e-9 and np.histogram(pct, b.edges)[0].max() < 0.5 * pct.size
    wide = rng.uniform(0, 100, 50)
    assert histogram_bins([wide], 25, (0.0, 100.0)).edges[-1] == 100.0
    b = histogram_bins([np.full(7, 0.25)])
    assert b.constant == 0.25
    margins = rng.normal(2, 3, 200)
    assert histogram_bins([margins]).scale == "linear"
