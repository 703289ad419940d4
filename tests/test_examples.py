"""Every script in examples/ runs end to end on tiny settings (subprocess, as a user would run it).

Each uses real Fashion-MNIST when Debian's copy is installed and robaudit's embedded sample
otherwise, so none needs the network. Marked slow: 5-15 s each on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"
pytestmark = pytest.mark.slow


def _run(args, tmp_path, env=None, ok=(0,)):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=full_env)
    assert out.returncode in ok, out.stdout[-2000:] + out.stderr[-2000:]
    return out


def test_train_and_scan(tmp_path):
    _run(
        [
            sys.executable,
            str(EX / "train_and_scan.py"),
            "--steps",
            "20",
            "--train-n",
            "512",
            "--test-n",
            "32",
            "--attacks",
            "fgsm",
            "--out",
            "run",
        ],
        tmp_path,
    )
    result = json.loads((tmp_path / "run/results.json").read_text())
    m = result["sections"]
    assert result["provenance"]["dataset"] == "fashion-mnist" and result["provenance"]["arch"] == "small-cnn"
    assert m["attacks"]["runs"][0]["robust_accuracy"] <= m["clean"]["accuracy"]
    assert (tmp_path / "run/report.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "run/model.safetensors").stat().st_size > 10_000


def test_harden_and_compare(tmp_path):
    out = _run(
        [sys.executable, str(EX / "harden_and_compare.py"), "--train-n", "128", "--eval-n", "24", "--out", "cure"], tmp_path
    )
    assert "clean.accuracy" in out.stdout and "robust_acc.pgd" in out.stdout
    before = json.loads((tmp_path / "cure/before.json").read_text())
    after = json.loads((tmp_path / "cure/after.json").read_text())
    assert before["provenance"]["n"] == after["provenance"]["n"] == 24
    assert before["provenance"]["checkpoint_sha256"] != after["provenance"]["checkpoint_sha256"]
    assert "<html" in (tmp_path / "cure/compare.html").read_text().lower()


def test_ci_gate_script_passes_and_fails(tmp_path):
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "N": "24",
        "ATTACKS": "fgsm",
        "CHECKS": "clean,attacks",
        "OUT": "pass",
    }
    _run(["bash", str(EX / "ci_gate.sh")], tmp_path, {**env, "REQUIRE": "clean.accuracy >= 0.5"})
    assert "testcase" in (tmp_path / "pass/junit.xml").read_text()
    out = _run(
        ["bash", str(EX / "ci_gate.sh")],
        tmp_path,
        {**env, "OUT": "fail", "REQUIRE": "clean.accuracy >= 0.5;robust_acc.fgsm.linf@0.1 >= 0.99"},
        ok=(1,),
    )
    assert "FAILED" in out.stderr
    junit = (tmp_path / "fail/junit.xml").read_text()
    assert junit.count("<testcase") == 2 and "<failure" in junit


def test_github_workflow_uses_existing_gate_file_and_flags():
    wf = (EX / "github-actions-robustness.yml").read_text()
    assert "--gate robaudit.toml" in wf and "--junit" in wf and (EX / "robaudit.toml").is_file()


def test_audit_torchvision_imagefolder(tmp_path):
    from PIL import Image

    g = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(g.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    out = _run(
        [
            sys.executable,
            str(EX / "audit_torchvision_imagefolder.py"),
            "imgs",
            "--arch",
            "resnet18",
            "--weights",
            "none",
            "--image-size",
            "32",
            "--eps",
            "2/255",
            "--attacks",
            "fgsm",
            "--out",
            "audit",
        ],
        tmp_path,
    )
    assert "6 images, classes cat, dog, shape (3, 32, 32)" in out.stdout
    result = json.loads((tmp_path / "audit/results.json").read_text())
    assert result["provenance"]["n"] == 6 and result["provenance"]["normalization_mean"] == [0.485, 0.456, 0.406]


def test_training_loop_logging(tmp_path):
    out = _run(
        [
            sys.executable,
            str(EX / "training_loop_logging.py"),
            "--epochs",
            "2",
            "--train-n",
            "256",
            "--eval-n",
            "24",
            "--log",
            "log.csv",
            "--require",
            "clean.accuracy >= 0.0",
        ],
        tmp_path,
    )
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert 0 <= float(r["pgd_acc"]) <= float(r["clean_acc"]) <= 1
    assert "passed" in out.stdout
