"""Sharded and distributed scans: --shard K/N parts + merge, and torchrun, equal the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import Conv6Net
from typer.testing import CliRunner

from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.config import ScanConfig
from robaudit.data.spec import DataSpec
from robaudit.distributed import merge_payloads, read_part, run_shard, write_part
from robaudit.engine import Shard, run_scan
from robaudit.errors import UsageError
from robaudit.models.spec import LoadedModel, ModelInfo


def _comparable(result_dict: dict) -> dict:
    """A result without what may differ between executions: timings, passes, command line, execution."""
    d = json.loads(json.dumps(result_dict))
    d.pop("timings")
    d.pop("passes")  # costs, like timings: a Lanczos batch runs as long as its slowest sample
    for name in ("attacks", "certify"):
        for run in d["sections"].get(name, {}).get("runs", []):
            run.pop("seconds")
    d["provenance"].pop("command_line")
    d["provenance"].pop("execution")
    return d


def _setup(n=30):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(n, 1, 6, 6, generator=g)
    net = Conv6Net().eval()
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::4] = (y[::4] + 3) % 10
    data = DataSpec("synthetic", "test", x, y, tuple(str(i) for i in range(10)), "memory")
    loaded = LoadedModel(net, ModelInfo(path="net.safetensors", format="safetensors", sha256="ab" * 32, arch="net"))
    return loaded, data


CFG = dict(
    eps="0.05,0.15",
    attacks="apgd-ce:n_iter=6,apgd-t:n_iter=4:n_target_classes=3,square:n_queries=20",
    ensemble="cascade",
    checks="clean,sanity,attacks,margins,minimal,jacobian,curvature:k=4:n_probes=2,indicator,spectra,"
    "surfaces:n_samples=2:steps=5,landscape:n_samples=20:steps_1d=3:steps_2d=3,certify:radius=true:radius_steps=4",
    compute_block=4,
    device="cpu",
)


@pytest.mark.slow
def test_three_shards_merged_equal_the_single_process_scan(tmp_path):
    loaded, data = _setup()
    single = run_scan(loaded, data, ScanConfig.parse(batch_size=16, **CFG), command_line="t")
    paths = []
    for k in (2, 0, 1):
        payload = run_shard(loaded, data, ScanConfig.parse(batch_size=8, **CFG), Shard(k, 3), command_line="t")
        write_part(tmp_path / f"part{k}.json", payload)
        paths.append(tmp_path / f"part{k}.json")
    merged = merge_payloads([read_part(p) for p in paths], [str(p) for p in paths], "merged from 3 shards")
    assert merged.provenance.execution == "merged from 3 shards"
    a, b = _comparable(single.to_dict()), _comparable(merged.to_dict())
    assert a == b
    # the selections were made over all samples, not per shard
    assert len(b["sections"]["curvature"]["indices"]) == 4 and len(b["sections"]["surfaces"]["samples"]) == 2
    assert b["sections"]["landscape"]["n_samples"] == 20 and b["sections"]["spectra"]["layers"]
    assert b["sections"]["certify"]["runs"] and any(b["sections"]["certify"]["runs"][0]["certified"])


def test_two_shards_of_the_default_checks_via_the_cli(tmp_path):
    model = str(DEMO_MODEL)
    common = [
        model,
        "-d",
        "demo",
        "-n",
        "24",
        "--attacks",
        "fgsm,pgd:steps=3",
        "--checks",
        "clean,attacks,margins,jacobian",
        "--compute-block",
        "8",
        "-q",
    ]
    runner = CliRunner()
    r = runner.invoke(app, ["scan", *common, "--json", str(tmp_path / "single.json"), "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    for k in (0, 1):
        r = runner.invoke(app, ["scan", *common, "--shard", f"{k}/2", "--json", str(tmp_path / f"p{k}.json")])
        assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "merge",
            str(tmp_path / "p1.json"),
            str(tmp_path / "p0.json"),
            "-o",
            str(tmp_path / "m.json"),
            "--html",
            str(tmp_path / "m.html"),
            "--require",
            "clean.accuracy >= 0.5",
        ],
    )
    assert r.exit_code == 0, r.output
    single = json.loads((tmp_path / "single.json").read_text())
    merged = json.loads((tmp_path / "m.json").read_text())
    assert _comparable(single) == _comparable(merged)
    assert (tmp_path / "m.html").stat().st_size > 0
    # a part of another run, a missing shard, twice the same shard, not a part file
    r = runner.invoke(app, ["scan", *common, "--seed", "1", "--shard", "1/2", "--json", str(tmp_path / "p1s.json")])
    assert r.exit_code == 0, r.output
    cases = [
        ([tmp_path / "p0.json", tmp_path / "p1s.json"], 2, "from a different run than", "seed is 1 there, 0 in"),
        ([tmp_path / "p0.json"], 2, "shard(s) 1 of 2 missing", ""),
        ([tmp_path / "p0.json", tmp_path / "p0.json"], 2, "both shard 0/2", ""),
        ([tmp_path / "p0.json", tmp_path / "single.json"], 3, "not a robaudit part file", ""),
    ]
    broken = json.loads((tmp_path / "p0.json").read_text())
    del broken["parts"]["attacks"]
    (tmp_path / "p0_broken.json").write_text(json.dumps(broken))
    cases.append(([tmp_path / "p0_broken.json", tmp_path / "p1.json"], 3, "can't be combined", ""))
    bad_shard = dict(broken, shard="0 of 2")
    (tmp_path / "p0_shard.json").write_text(json.dumps(bad_shard))
    cases.append(([tmp_path / "p0_shard.json", tmp_path / "p1.json"], 3, "is not [K, N]", ""))
    for files, code, text, detail in cases:
        r = runner.invoke(app, ["merge", *map(str, files), "-o", str(tmp_path / "x.json")])
        assert r.exit_code == code, r.output
        assert text in r.output and detail in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) <= 2
    assert not (tmp_path / "x.json").exists()


@pytest.fixture(scope="module")
def two_parts(tmp_path_factory):
    """The two part files of the default checks on 16 demo images, and a previous merged result."""
    d = tmp_path_factory.mktemp("parts")
    for k in (0, 1):
        r = CliRunner().invoke(
            app,
            [
                "scan",
                str(DEMO_MODEL),
                "-d",
                "demo",
                "-n",
                "16",
                "--device",
                "cpu",
                "-q",
                "--shard",
                f"{k}/2",
                "--json",
                str(d / f"p{k}.json"),
            ],
        )
        assert r.exit_code == 0, r.output
    return d


def _mutations(part: dict):
    """(name, edit) for every table column of ``part``: a value of another kind, a value missing, a
    position outside the shard, null in a true/false column; and records the merged result checks:
    a gallery example's sample index and image shape."""
    for check, entry in part["parts"].items():
        for table, columns in entry["tables"].items():
            for column, values in columns.items():

                def at(d, check=check, table=table, column=column):
                    return d["parts"][check]["tables"][table][column]

                yield f"{check}.{table}.{column} short", lambda d, at=at: at(d).pop()
                if column == "positions":
                    yield f"{check}.{table} position of shard 0", lambda d, at=at: at(d).__setitem__(0, 0)
                    yield f"{check}.{table} position past n", lambda d, at=at: at(d).__setitem__(0, 99)
                else:
                    yield f"{check}.{table}.{column} as text", lambda d, at=at: at(d).__setitem__(0, "x")
                if values and isinstance(values[0], bool):
                    yield f"{check}.{table}.{column} null", lambda d, at=at: at(d).__setitem__(0, None)
    yield "clean label of another class", lambda d: d["parts"]["clean"]["tables"]["samples"]["label"].__setitem__(0, 9)
    yield (
        "clean correct flipped",
        lambda d: d["parts"]["clean"]["tables"]["samples"]["correct"].__setitem__(
            0, not d["parts"]["clean"]["tables"]["samples"]["correct"][0]
        ),
    )
    yield "gallery example outside the samples", lambda d: d["parts"]["attacks"]["extra"]["examples"][0].update(position=99)
    yield "gallery example of another shape", lambda d: d["parts"]["attacks"]["extra"]["examples"][0].update(shape=[1, 28])


def test_merge_checks_every_record_before_writing_anything(two_parts, tmp_path):
    """Issue 21: merge exited 3 *after* writing merged.json. Every per-sample inconsistency a part can
    carry is now found before any output: exit 3, one line naming it, the previous files untouched,
    no temporary file. (Changed values that stay consistent, e.g. another margin, can't be told
    from real ones without the model; they are what the part says.)"""
    import copy

    good = json.loads((two_parts / "p1.json").read_text())
    outputs = {"merged.json": "old result", "report.html": "old report"}
    for name, text in outputs.items():
        (tmp_path / name).write_text(text)
    mutations = list(_mutations(good))
    assert len(mutations) > 60
    for name, edit in mutations:
        bad = copy.deepcopy(good)
        edit(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        r = CliRunner().invoke(
            app,
            [
                "merge",
                str(two_parts / "p0.json"),
                str(tmp_path / "bad.json"),
                "-o",
                str(tmp_path / "merged.json"),
                "--html",
                str(tmp_path / "report.html"),
                "--csv",
                str(tmp_path / "tables"),
            ],
        )
        assert r.exit_code == 3, (name, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, (name, r.output)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "merged.json", "report.html"], name
        assert all((tmp_path / f).read_text() == t for f, t in outputs.items()), name
    r = CliRunner().invoke(
        app, ["merge", str(two_parts / "p0.json"), str(two_parts / "p1.json"), "-o", str(tmp_path / "merged.json"), "-q"]
    )
    assert r.exit_code == 0 and json.loads((tmp_path / "merged.json").read_text())["provenance"]["n"] == 16


def test_shard_usage_errors_come_before_any_work(tmp_path):
    runner = CliRunner()
    base = ["scan", str(DEMO_MODEL), "-d", "demo"]
    for extra, text in (
        (["--shard", "2/2", "--json", "p.json"], "--shard must be K/N"),
        (["--shard", "0/2"], "--shard needs --json"),
        (["--shard", "0/2", "--json", "p.json", "--html", "r.html"], "--html"),
        (["--compute-block", "300"], "--compute-block must be between"),
    ):
        r = runner.invoke(app, base + extra)
        assert r.exit_code == 2 and text in r.output, r.output


def test_a_check_with_only_run_is_refused_in_a_shard(monkeypatch):
    from robaudit.checks.base import CHECKS, Check

    class OnlyRun(Check):
        name = "only-run"

        def run(self, ctx):  # pragma: no cover - never called
            raise AssertionError

    CHECKS._ensure_indexed()
    monkeypatch.setattr(CHECKS, "_entries", dict(CHECKS._entries))
    CHECKS.register("only-run", distribution="test")(OnlyRun)
    loaded, data = _setup(8)
    with pytest.raises(UsageError, match="only-run implement only run"):
        run_shard(loaded, data, ScanConfig.parse(checks="clean,only-run", device="cpu"), Shard(0, 2))


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo): rank 0 writes one result equal to a single process's."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [
        "scan",
        str(DEMO_MODEL),
        "-d",
        "demo",
        "-n",
        "30",
        "--attacks",
        "fgsm,pgd:steps=3",
        "--checks",
        "clean,sanity,attacks,margins,jacobian,spectra,certify:method=ibp",
        "--compute-block",
        "8",
        "--device",
        "cpu",
    ]
    single = subprocess.run(
        [sys.executable, "-m", "robaudit", *args, "-q", "--json", str(tmp_path / "one.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr
    dist = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "robaudit",
            *args,
            "--json",
            str(tmp_path / "two.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert dist.stdout.count("result written to") == 1, "only rank 0 prints"
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert two["provenance"]["execution"] == "torchrun: 2 processes (gloo)"
    assert _comparable(one) == _comparable(two)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "two.json"], "nothing else written"


@pytest.mark.slow
def test_torchrun_an_error_on_one_rank_is_one_line_from_rank_0(tmp_path):
    """A sample only rank 1 reads is unreadable: rank 0 reports rank 1's error, every rank exits 3,
    nothing is written."""
    import numpy as np
    from PIL import Image

    from robaudit.models import save_model
    from robaudit.models.nets.small_cnn import SmallCNN

    for i in range(40):  # 40 images: the probe reads 32 of them, not position 7
        path = tmp_path / "f" / ("a" if i < 20 else "b") / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 5 * i, np.uint8)).save(path)
    (tmp_path / "f" / "a" / "07.png").write_bytes(b"not a png")  # position 7: rank 1 of 2
    torch.manual_seed(0)
    save_model(
        tmp_path / "m.safetensors",
        SmallCNN(2, 1, width=4, hidden=8, input_size=8),
        arch="small-cnn",
        arch_kwargs={"width": 4, "hidden": 8, "input_size": 8},
        num_classes=2,
        input_shape=(1, 8, 8),
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "robaudit",
            "scan",
            "m.safetensors",
            "-d",
            "imagefolder:f",
            "--attacks",
            "fgsm",
            "--checks",
            "clean",
            "--workers",
            "0",
            "--json",
            "r.json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert ours == [
        "error: rank 1: f/a/07.png can't be read as an image (UnidentifiedImageError: cannot identify image file 'f/a/07.png')"
    ]
    assert "exitcode: 3" in proc.stderr and proc.returncode != 0
    assert not (tmp_path / "r.json").exists()
