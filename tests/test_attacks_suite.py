"""The suite through the engine: presets, cascade vs independent, ensemble invariants, real data end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from robaudit.attacks import ATTACKS
from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.config import ScanConfig, parse_attack_list
from robaudit.data import DataRequest, load_dataset
from robaudit.engine import run_scan
from robaudit.models import load_model

ALL = (
    "fgsm",
    "bim",
    "pgd",
    "cw-pgd",
    "least-likely",
    "cw-l2",
    "deepfool",
    "apgd-ce",
    "apgd-dlr",
    "apgd-t",
    "fab-t",
    "square",
    "spsa",
)


def test_every_attack_is_registered_with_a_documented_default():
    for name in ALL:
        cls = ATTACKS.get(name)
        assert cls.__doc__ and len(cls.__doc__) > 40, name
        cls()  # the defaults construct


@pytest.fixture(scope="module")
def demo():
    return load_model(str(DEMO_MODEL)), load_dataset("demo", DataRequest(n=48))


def _run(demo, attacks, mode, eps=(0.05, 0.1)):
    loaded, data = demo
    cfg = ScanConfig(eps=eps, attacks=parse_attack_list(attacks), ensemble=mode, checks=("clean", "attacks"), device="cpu")
    return run_scan(loaded, data, cfg, command_line="t")


def test_cascade_and_independent_agree_on_the_worst_case_bound(demo):
    attacks = "fgsm,pgd:steps=10,square:n_queries=200"
    ind = _run(demo, attacks, "independent").section("attacks")
    cas = _run(demo, attacks, "cascade").section("attacks")
    clean = demo[1].n
    for sec in (ind, cas):
        for eps_key, acc in sec.ensemble.items():
            members = [r for r in sec.runs if f"{r.eps:g}" == eps_key]
            assert acc <= min(r.robust_accuracy for r in members) + 1e-12
    # cascade attacks fewer samples with every later attack, never more
    for r_ind, r_cas in zip(ind.runs, cas.runs):
        assert r_cas.n_attacked <= r_ind.n_attacked <= clean
    later = [r for r in cas.runs if r.attack != "fgsm"]
    assert all(
        not any(a and not b for a, b in zip(r.attacked, prev.robust))
        for prev, r in zip(cas.runs, cas.runs[1:])
        if prev.eps == r.eps
    )
    assert later


@pytest.mark.slow
def test_standard_preset_end_to_end_on_real_fashion_mnist(fashion_available, tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        app,
        [
            "scan",
            str(DEMO_MODEL),
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(fashion_available),
            "--n",
            "40",
            "--attacks",
            "standard",
            "--eps",
            "0.05",
            "--checks",
            "clean,attacks",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    sec = json.loads(out.read_text())["sections"]["attacks"]
    assert sec["mode"] == "cascade"
    assert [r["attack"] for r in sec["runs"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    pgd = json.loads(out.read_text())
    assert sec["ensemble"]["0.05"] <= pgd["sections"]["clean"]["accuracy"]
    # AutoAttack-grade: no weaker than PGD-20 on the same samples
    res2 = CliRunner().invoke(
        app,
        [
            "scan",
            str(DEMO_MODEL),
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(fashion_available),
            "--n",
            "40",
            "--attacks",
            "pgd",
            "--eps",
            "0.05",
            "--checks",
            "clean,attacks",
            "--json",
            str(tmp_path / "p.json"),
            "--quiet",
        ],
    )
    assert res2.exit_code == 0
    pgd_acc = json.loads((tmp_path / "p.json").read_text())["sections"]["attacks"]["ensemble"]["0.05"]
    assert sec["ensemble"]["0.05"] <= pgd_acc


def test_paper_preset_uses_yu_et_al_eps_columns(demo, tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        app,
        [
            "scan",
            str(DEMO_MODEL),
            "--dataset",
            "demo",
            "--n",
            "16",
            "--attacks",
            "paper",
            "--checks",
            "clean,attacks",
            "--json",
            str(out),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    sec = json.loads(out.read_text())["sections"]["attacks"]
    assert sec["eps"] == [0.1, 0.2, 0.3]
    assert {r["attack"] for r in sec["runs"]} == {"fgsm", "bim", "cw-pgd"}
