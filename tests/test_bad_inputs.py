"""Bad input, every command: one line on stderr, the exit code of docs/exit-codes.md, no traceback, nothing half-written.

Rows of issue 12: radii outside the pixel cube, output paths that can't be written, malformed
result JSON and harden checkpoints, and user strings with Rich markup or emoji codes in them
(printed as text, never interpreted). Exit codes: 2 usage, 3 bad input file, never 4 for an input
robaudit can diagnose.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.config import ScanConfig, check_radii
from robaudit.errors import CheckpointError, InputError, UsageError, WriteError
from robaudit.outputs import atomic_target, atomic_write, check_outputs
from robaudit.results import ScanResult

runner = CliRunner()
MODEL = str(DEMO_MODEL)
# a quick scan of the embedded model: 16 embedded test images, FGSM only
QUICK = ["--dataset", "demo", "--n", "16", "--checks", "clean,attacks,margins", "--attacks", "fgsm", "--device", "cpu", "-q"]


def invoke(*args: str | os.PathLike):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(res, code: int, *fragments: str) -> str:
    """The command exited ``code`` with exactly one 'error:' line on stderr holding every fragment."""
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders): what a failed command must leave alone."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def result_json(tmp_path_factory) -> Path:
    """A real result of the embedded model (clean, attacks, margins on 16 images)."""
    path = tmp_path_factory.mktemp("result") / "r.json"
    res = invoke("scan", MODEL, *QUICK, "--json", path)
    assert res.exit_code == 0, res.output
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, result_json) -> Path:
    """A current folder holding a file ``afile``, a folder ``adir`` and a copy of the result."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "adir").mkdir()
    (tmp_path / "r.json").write_bytes(result_json.read_bytes())
    return tmp_path


# --- radii ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--eps", "2"], "2/255"),  # the row: the whole cube; the hint names the 0-255 reading
        (["--eps", "8"], "8/255"),
        (["--eps", "0.1,1.5"], "1.5 is larger than 1"),
        (["--eps", "0:2:5"], "in --eps 0:2:5"),  # a sweep that ends outside the cube names the sweep
        (["--norm", "l2", "--eps", "28.5"], "√d = 28"),  # 1×28×28: the cube's diameter is 28
        (["--eps", "-0.1"], ">= 0"),
        (["--eps", "nan"], ">= 0"),
        (["--eps", "inf"], ">= 0"),
        (["--eps", "0:0.3:5000"], "at most 1000"),
    ],
)
def test_radius_outside_the_pixel_cube_is_a_usage_error_before_any_work(workdir, args, fragment):
    before = tree(workdir)
    res = invoke("scan", MODEL, *QUICK, *args, "--json", "out.json", "--html", "out.html")
    one_error_line(res, 2, fragment)
    assert tree(workdir) == before


def test_radius_bounds_are_the_cube():
    check_radii((0.0, 0.5, 1.0), "linf")  # ε = 0 (clean accuracy) and ε = 1 (the whole cube) mean something
    check_radii((28.0,), "l2", (1, 28, 28))  # √784 = 28 exactly: the diameter is allowed
    with pytest.raises(UsageError, match="larger than 1"):
        check_radii((1.01,), "linf")
    with pytest.raises(UsageError, match="√d"):
        check_radii((28.01,), "l2", (1, 28, 28))
    check_radii((40.0,), "l2")  # the ℓ2 bound needs the data's dimension: checked by radii()
    with pytest.raises(UsageError, match="√d = 55.4"):
        ScanConfig.parse(norm="l2", eps="40,60").radii((3, 32, 32))
    with pytest.raises(UsageError, match="larger than 1"):
        ScanConfig(eps=(2.0,))  # built directly (demo, harden's scans, API users) the check holds too


def test_api_and_demo_and_harden_check_radii(workdir, tiny_cnn):
    import robaudit

    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 9])  # 10 classes, as the model
    with pytest.raises(UsageError, match="larger than 1"):
        robaudit.scan(tiny_cnn, (x, y), eps="2", checks="clean,attacks", attacks="fgsm", device="cpu")
    with pytest.raises(UsageError, match="√d = 28"):
        robaudit.scan(tiny_cnn, (x, y), eps=[40.0], norm="l2", checks="clean,attacks", attacks="fgsm", device="cpu")
    before = tree(workdir)
    one_error_line(invoke("demo", "--eps", "2", "--out", "demo-out"), 2, "larger than 1")
    one_error_line(invoke("harden", MODEL, "--dataset", "demo", "--eps", "2", "--out", "h.safetensors"), 2, "larger than 1")
    assert tree(workdir) == before


# --- output paths ----------------------------------------------------------------------------------


def _npz(path: Path) -> Path:
    from robaudit.data import DataRequest, load_dataset

    data = load_dataset("demo", DataRequest(n=64))
    np.savez(path, x=data.x.numpy(), y=data.y.numpy())
    return path


OUTPUT_CASES = [
    # (command line, fragment of the one error line)
    (["scan", MODEL, *QUICK, "--json", "afile/r.json"], "afile is a file, not a folder"),  # the rows
    (["scan", MODEL, *QUICK, "--json", "adir/"], "adir/ is a folder"),
    (["scan", MODEL, *QUICK, "--json", "adir"], "adir is a folder"),
    (["scan", MODEL, *QUICK, "--json", "newdir/"], "newdir/ names a folder"),
    (["scan", MODEL, *QUICK, "--json", "afile/deeper/r.json"], "afile is a file"),
    (["scan", MODEL, *QUICK, "--html", "adir"], "--html adir is a folder"),
    (["scan", MODEL, *QUICK, "--csv", "afile"], "--csv afile exists and is not a folder"),
    (["scan", MODEL, *QUICK, "--csv", "afile/tables"], "afile is a file"),
    (["scan", MODEL, *QUICK, "--require", "clean.accuracy >= 0.1", "--junit", "adir"], "--junit adir is a folder"),
    (["scan", MODEL, *QUICK, "--json", "same.json", "--html", "same.json"], "--json and --html would both write"),
    (["scan", MODEL, *QUICK, "--json", "t/samples.csv", "--csv", "t"], "would both write"),
    (["scan", MODEL, *QUICK, "--json", MODEL], "would overwrite the input CHECKPOINT"),
    (["scan", MODEL, *QUICK, "--json", ""], "--json needs a file path"),
    (["scan", MODEL, *QUICK, "--json", "x" * 300 + ".json"], "longer than 255 bytes"),
    (["report", "r.json", "-o", "adir"], "--output adir is a folder"),
    (["report", "r.json", "-o", "r.json"], "would overwrite the input RESULTS"),
    (["report", "r.json", "--csv", "afile"], "--csv afile exists and is not a folder"),
    (["report", "r.json", "--require", "clean.accuracy >= 0.1", "--junit", "afile/j.xml"], "afile is a file"),
    (["compare", "r.json", "r.json", "-o", "adir/"], "--output adir/ is a folder"),
    (["compare", "r.json", "r.json", "-o", "r.json"], "would overwrite the input BEFORE"),
    (["gate", "r.json", "--require", "clean.accuracy >= 0.1", "--junit", "adir"], "--junit adir is a folder"),
    (["gate", "r.json", "--require", "clean.accuracy >= 0.1", "--junit", "r.json"], "would overwrite the input RESULTS"),
    (["harden", MODEL, "--dataset", "demo", "--out", "adir"], "--out adir is a folder"),
    (["harden", MODEL, "--dataset", "demo", "--out", "afile/h.safetensors"], "afile is a file"),
    (["harden", MODEL, "--dataset", "demo", "--out", MODEL], "would overwrite the input CHECKPOINT"),
    (["harden", MODEL, "--dataset", "demo", "--out", "h.safetensors", "--json", "adir"], "--json adir is a folder"),
    (["harden", MODEL, "--dataset", "demo", "--out", "h.safetensors", "--json", "h.safetensors"], "would both write"),
    (["demo", "--out", "afile"], "--out afile exists and is not a folder"),
]


@pytest.mark.parametrize("args, fragment", OUTPUT_CASES, ids=[" ".join(a[:1] + a[-2:])[:60] for a, _ in OUTPUT_CASES])
def test_unwritable_output_is_a_usage_error_before_any_work(workdir, args, fragment):
    before = tree(workdir)
    one_error_line(invoke(*args), 2, fragment)
    assert tree(workdir) == before  # nothing created, nothing overwritten, no temporary file


def test_harden_resume_file_that_is_a_folder_and_a_dataset_file_as_output(workdir):
    (workdir / "h.safetensors.ckpt").mkdir()
    one_error_line(
        invoke("harden", MODEL, "--dataset", "demo", "--out", "h.safetensors"),
        2,
        "--out (resume file) h.safetensors.ckpt is a folder",
    )
    data = _npz(workdir / "data.npz")
    before = tree(workdir)
    one_error_line(invoke("scan", MODEL, "--dataset", data, "--json", data, "-q"), 2, "would overwrite the input --dataset")
    one_error_line(invoke("harden", MODEL, "--dataset", data, "--out", data), 2, "would overwrite the input --dataset")
    assert tree(workdir) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_output_in_a_read_only_folder(workdir):
    ro = workdir / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        one_error_line(invoke("scan", MODEL, *QUICK, "--json", ro / "r.json"), 2, "no permission to write in")
        one_error_line(invoke("report", "r.json", "--csv", ro / "t"), 2, "no permission")
    finally:
        ro.chmod(stat.S_IRWXU)


def test_atomic_write_leaves_nothing_on_failure_and_keeps_the_umask(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write(target, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_target(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt  # Ctrl-C mid-write
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]  # no temporary file left
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "mode.txt", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "mode.txt").stat().st_mode) == 0o644  # not mkstemp's 0o600
    with pytest.raises(WriteError, match="cannot write .*a part of the path is a file"):
        atomic_write(tmp_path / "sub" / "out.json" / "x", "y")  # a file where a folder should be (exit 3 once
        # the work is done; check_outputs refuses such a path before any work, exit 2)


def test_check_outputs_accepts_what_it_should(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old.json").write_text("{}")
    check_outputs(
        files={"--json": "old.json", "--html": "new/deeper/r.html", "--junit": None},
        folders={"--csv": ("tables", ("samples.csv",))},
        inputs={"CHECKPOINT": "model.pt", "--gate": None},
    )


# --- malformed result JSON: report, gate, compare ---------------------------------------------------


def _mutated(result_json: Path, edit) -> str:
    data = json.loads(result_json.read_text())
    edit(data)
    return json.dumps(data)


def _set(path: tuple, value):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _delete(path: tuple):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


MALFORMED = {
    # name: (file content from the real result, fragment naming what is wrong)
    "top-level list": (lambda r: "[1, 2]", "the top level is a list"),  # the rows
    "sections null": (lambda r: _mutated(r, _set(("sections",), None)), "sections: expected an object"),
    "sections list": (lambda r: _mutated(r, _set(("sections",), [])), "sections: expected an object"),
    "section null": (lambda r: _mutated(r, _set(("sections", "clean"), None)), "sections.clean: expected an object"),
    "no provenance": (lambda r: _mutated(r, _delete(("provenance",))), "missing field 'provenance'"),
    "provenance.n text": (lambda r: _mutated(r, _set(("provenance", "n"), "12")), "provenance.n: expected an integer"),
    "provenance.n negative": (lambda r: _mutated(r, _set(("provenance", "n"), -3)), "provenance.n"),
    "missing required field": (
        lambda r: _mutated(r, _delete(("sections", "clean", "accuracy"))),
        "sections.clean: missing field 'accuracy'",
    ),
    "eps as text": (
        lambda r: _mutated(r, _set(("sections", "attacks", "runs", 0, "eps"), "0.1")),
        "sections.attacks.runs[0].eps: expected a number",
    ),
    "bool as number": (lambda r: _mutated(r, _set(("sections", "clean", "accuracy"), True)), "sections.clean.accuracy"),
    "flags object": (lambda r: _mutated(r, _set(("flags",), {"a": 1})), "flags: expected a list"),
    "flag without code": (lambda r: _mutated(r, _set(("flags",), [{"message": "m"}])), "flags[0]: missing field 'code'"),
    "timings text": (lambda r: _mutated(r, _set(("timings",), "fast")), "timings: expected an object"),
    "schema version text": (lambda r: _mutated(r, _set(("schema_version",), "1")), "schema version '1'"),
    "schema version true": (lambda r: _mutated(r, _set(("schema_version",), True)), "schema version True"),
    "NaN literal": (lambda r: r.read_text().replace('"accuracy": ', '"accuracy": NaN, "x": ', 1), "is not a JSON number"),
    "Infinity": (lambda r: r.read_text().replace('"seed": 0', '"seed": 0, "z": -Infinity', 1), "provenance.z"),
    "1e400": (lambda r: r.read_text().replace('"seed": 0', '"seed": 1e400', 1), "provenance.seed"),
    "huge integer": (lambda r: r.read_text().replace('"seed": 0', '"seed": ' + "9" * 30, 1), "out of range"),
    "integer beyond the digit limit": (
        lambda r: r.read_text().replace('"seed": 0', '"seed": ' + "9" * 5000, 1),
        "not a robaudit JSON result",
    ),
    "per-sample list short": (
        lambda r: _mutated(r, _set(("sections", "margins", "margins"), [0.5])),
        "sections.margins.margins: expected 16 values (one per sample), got 1",
    ),
    "per-class list long": (
        lambda r: _mutated(r, _set(("sections", "clean", "per_class"), [0.5] * 11)),
        "sections.clean.per_class: expected 10 values (one per class), got 11",
    ),
    "robust flags short": (
        lambda r: _mutated(r, _set(("sections", "attacks", "ensemble_robust", "0.1"), [True])),
        "sections.attacks.ensemble_robust.0.1: expected 16 values",
    ),
    "example not base64": (
        lambda r: _mutated(r, _set(("sections", "attacks", "examples", 0, "image"), "x[/b]")),
        "sections.attacks.examples[0].image: not a base64-encoded tensor",
    ),
    "example shape": (
        lambda r: _mutated(r, _set(("sections", "attacks", "examples", 0, "shape"), [1, 28])),
        "sections.attacks.examples[0].shape: [1, 28] is not the inputs' shape",
    ),
    "example truncated": (
        lambda r: _mutated(
            r,
            lambda d: d["sections"]["attacks"]["examples"][0].update(
                image=d["sections"]["attacks"]["examples"][0]["image"][:400]
            ),
        ),
        "sections.attacks.examples[0].image: 300 bytes, but a float32 tensor of shape [1, 28, 28] has 3136",
    ),
    "example shape of another rank": (
        lambda r: _mutated(r, _set(("sections", "attacks", "examples", 0, "shape"), [28, 28])),
        "sections.attacks.examples[0].shape: [28, 28] is not the inputs' shape [1, 28, 28]",
    ),
    "example index": (
        lambda r: _mutated(r, _set(("sections", "attacks", "examples", 0, "index"), 16)),
        "sections.attacks.examples[0].index: sample index 16 is outside the 16 samples",
    ),
    "deep nesting": (lambda r: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "truncated": (lambda r: r.read_text()[: len(r.read_text()) // 2], "truncated"),
    "empty": (lambda r: "", "is empty"),
    "not JSON": (lambda r: "robaudit results\n", "not valid JSON"),
    "not UTF-8": (lambda r: b"\xff\xfe{}", "not UTF-8"),
}


@pytest.fixture(scope="module")
def malformed_files(tmp_path_factory, result_json) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("malformed")
    files = {}
    for i, (name, (make, _)) in enumerate(MALFORMED.items()):
        content = make(result_json)
        path = d / f"bad{i}.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        files[name] = path
    return files


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_result_is_an_input_error_naming_the_field(name, malformed_files, result_json, workdir):
    bad, fragment = malformed_files[name], MALFORMED[name][1]
    before = tree(workdir)
    one_error_line(invoke("report", bad, "-o", "report.html", "--csv", "tables"), 3, str(bad), fragment)
    one_error_line(invoke("gate", bad, "--require", "clean.accuracy >= 0"), 3, fragment)
    one_error_line(invoke("compare", result_json, bad, "-o", "c.html"), 3, fragment)
    assert tree(workdir) == before


def test_declared_invariants_name_the_field():
    """The generic checks sections declare (results.Section): per-sample and per-class lengths,
    aligned groups reaching nested values through '*', counts, finite values, sample indices."""
    from robaudit.results import check_invariants

    @dataclass(frozen=True)
    class Plane:
        grid: tuple[tuple[float, ...], ...]

    @dataclass(frozen=True)
    class Demo:
        values: tuple[float, ...]
        per_class: tuple[float, ...]
        axis: tuple[float, ...]
        count: int
        planes: dict[str, Plane]
        index: int
        optional: tuple[float, ...] = ()
        per_sample_fields: ClassVar = ("values", "optional")
        per_class_fields: ClassVar = ("per_class",)
        aligned_fields: ClassVar = (("axis", "count", "planes.*.grid", "planes.*.grid.*"),)
        finite_fields: ClassVar = ("axis.*",)
        non_negative_fields: ClassVar = ("per_class.*",)
        sample_index_fields: ClassVar = ("index",)

    assert [f.name for f in dataclasses.fields(Demo)][-1] == "optional"  # the declarations are no fields
    good = Demo((1.0, 2.0, 3.0), (0.5, 0.5), (0.0, 1.0), 2, {"a": Plane(((1.0, 2.0), (3.0, 4.0)))}, 2)
    check_invariants(good, "s", n=3, n_classes=2)  # `optional` may stay empty: its default is ()
    bad = {
        "s.values: expected 3 values (one per sample), got 2": dict(values=(1.0, 2.0)),
        "s.optional: expected 3 values (one per sample), got 1": dict(optional=(1.0,)),
        "s.per_class: expected 2 values (one per class), got 3": dict(per_class=(1.0, 1.0, 1.0)),
        "s.count is 3, but there are 2 entries": dict(count=3),
        "s.planes.a.grid[1]: expected 2 values": dict(planes={"a": Plane(((1.0, 2.0), (3.0,)))}),
        "s.axis[1]: expected a finite number, got nan": dict(axis=(0.0, float("nan"))),
        "s.per_class[0]: expected a number >= 0, got -0.5": dict(per_class=(-0.5, 0.5)),
        "s.index: sample index 3 is outside the 3 samples": dict(index=3),
    }
    for message, change in bad.items():
        with pytest.raises(InputError, match=re.escape(message)):
            check_invariants(dataclasses.replace(good, **change), "s", n=3, n_classes=2)


def test_result_file_that_is_missing_a_folder_or_not_a_file(workdir):
    one_error_line(invoke("report", "missing.json"), 3, "not found")
    one_error_line(invoke("gate", "adir", "--require", "clean.accuracy >= 0"), 3, "is a folder")
    if Path("/dev/null").exists():
        one_error_line(invoke("compare", "/dev/null", "r.json"), 3, "not a regular file")


def _leaf_paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaf_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:2]):
            yield from _leaf_paths(v, path + (i,))


def test_every_field_mutated_reads_as_an_input_error_or_a_result_the_renderers_take(result_json):
    """Each field of a real result deleted, nulled, retyped, emptied, made huge or negative: the reader
    raises InputError, or the result it returns goes through metrics, gates, compare, the terminal
    summary and the CSV tables without an exception (the HTML report is covered by
    test_html_report_takes_nulls)."""
    from robaudit.compare import compare_results
    from robaudit.gating import evaluate_gates, parse_requires
    from robaudit.report.tables import robust_table, samples_table
    from robaudit.report.terminal import print_summary

    base = json.loads(result_json.read_text())
    original = ScanResult.from_dict(copy.deepcopy(base))
    mutations = {
        "delete": None,
        "null": lambda v: None,
        "text": lambda v: "x[/b]",
        "bool": lambda v: True,
        "huge": lambda v: 1e308,
        "negative": lambda v: -3,
        "big int": lambda v: 10**15,
        "empty list": lambda v: [],
        "empty object": lambda v: {},
        "one item": lambda v: v[:1] if isinstance(v, list) else [v],
    }
    read = rejected = 0
    for path in list(_leaf_paths(base))[1:]:
        for _name, mutate in mutations.items():
            data = copy.deepcopy(base)
            parent = data
            for key in path[:-1]:
                parent = parent[key]
            if mutate is None:
                parent.pop(path[-1])
            else:
                parent[path[-1]] = mutate(parent[path[-1]])
            try:
                result = ScanResult.from_dict(data)
            except InputError:
                rejected += 1
                continue
            read += 1
            metrics = result.metrics()
            print_summary(result, Console(file=io.StringIO(), width=120, markup=False, emoji=False))
            samples_table(result), robust_table(result)
            compare_results(original, result, force=True)
            if "clean.accuracy" in metrics:
                evaluate_gates(result, parse_requires(["clean.accuracy >= 0.5"]))
    assert read > 100 and rejected > 100  # both kinds of mutation were exercised


def test_html_report_takes_nulls(result_json, tmp_path):
    """null (a non-finite number) in every float field and every per-class value still renders."""
    data = json.loads(result_json.read_text())
    for sec in data["sections"].values():
        for key, value in list(sec.items()):
            if isinstance(value, float):
                sec[key] = None
            elif key.startswith("per_class") and isinstance(value, list):
                sec[key] = [None] * len(value)
    bad = tmp_path / "nulls.json"
    bad.write_text(json.dumps(data))
    res = invoke("report", bad, "-o", tmp_path / "nulls.html")
    assert res.exit_code == 0, res.output
    assert "<html" in (tmp_path / "nulls.html").read_text().lower()


# --- harden --resume from a malformed checkpoint -----------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A real <out>.ckpt: harden (ce-grad, 64 embedded images, batch 32) stopped after one step."""
    from robaudit.harden import HardenInterrupted, harden

    d = tmp_path_factory.mktemp("harden")
    data = _npz(d / "data.npz")
    out = d / "h.safetensors"

    def stop(epoch, step):
        raise KeyboardInterrupt

    with pytest.raises(HardenInterrupted):
        harden(
            MODEL, str(data), out, method="ce-grad", epochs=2, batch_size=32, eval_n=16, device="cpu", scan=False, on_step=stop
        )
    ckpt = d / "h.safetensors.ckpt"
    assert ckpt.is_file()
    args = [
        "harden",
        MODEL,
        "--method",
        "ce-grad",
        "--dataset",
        data,
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--eval-n",
        "16",
        "--device",
        "cpu",
        "--no-scan",
        "--resume",
        "-q",
    ]
    return torch.load(ckpt, weights_only=True), args


def _without(key):
    return lambda s: s.pop(key)


def _put(*path, value):
    def edit(s):
        node = s
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _shape_of_first_weight(s):
    name = next(iter(s["model"]))
    s["model"][name] = torch.zeros(3, 3)


def _optimizer_slot(s):
    slots = next(iter(s["optimizer"]["state"].values()))
    slots["exp_avg"] = torch.zeros(7)


CKPT_EDITS = {
    "missing model": (_without("model"), "missing model"),  # the row: fields missing, named
    "missing rng and history": (lambda s: (s.pop("rng"), s.pop("history")), "missing rng (the random states), history"),
    "epoch as text": (_put("epoch", value="1"), "epoch (completed epochs) is str, expected int"),
    "negative step": (_put("step", value=-1), "step is negative"),
    "step past the epoch": (_put("step", value=99), "at epoch 0, step 99"),
    "rng without torch": (lambda s: s["rng"].pop("torch"), "rng is missing torch"),
    "rng state of floats": (_put("rng", "torch", value=torch.zeros(5)), "rng.torch is not a random-generator state"),
    "rng state too short": (_put("rng", "torch", value=torch.zeros(5, dtype=torch.uint8)), "does not fit this run"),
    "weights of another shape": (_shape_of_first_weight, "does not fit this run"),
    "optimizer slot of another shape": (_optimizer_slot, "does not fit this run"),
    "scheduler emptied": (_put("scheduler", value={}), "scheduler lacks or mistypes"),
    "running sums missing": (_put("running", value={"loss": 1.0}), "running lacks or mistypes"),
    "history rows": (_put("history", value=[{"epoch": 0}]), "history[0] lacks the numbers"),
    "fingerprint not JSON": (_put("fingerprint", value="{"), "malformed settings fingerprint"),
    "fingerprint a list": (_put("fingerprint", value="[1]"), "malformed settings fingerprint"),
    "fingerprint nested deeply": (_put("fingerprint", value="[" * 100_000 + "]" * 100_000), "malformed settings fingerprint"),
    "model of other things": (_put("model", value={"w": "x"}), "model holds something other than named tensors"),
    "not a dict": (lambda s: None, "not a robaudit harden checkpoint"),
}


@pytest.mark.parametrize("name", list(CKPT_EDITS))
def test_resume_from_a_malformed_checkpoint_is_an_input_error_naming_it(interrupted, tmp_path, name):
    state, args = interrupted
    edit, fragment = CKPT_EDITS[name]
    state = copy.deepcopy(state)
    if name == "not a dict":
        state = [1, 2]
    else:
        edit(state)
    torch.save(state, tmp_path / "h.safetensors.ckpt")
    one_error_line(invoke(*args, "--out", tmp_path / "h.safetensors"), 3, fragment)
    assert not (tmp_path / "h.safetensors").exists()


def test_resume_from_a_truncated_or_foreign_file(interrupted, tmp_path):
    state, args = interrupted
    torch.save(state, tmp_path / "full.ckpt")
    (tmp_path / "h.safetensors.ckpt").write_bytes((tmp_path / "full.ckpt").read_bytes()[:500])
    one_error_line(invoke(*args, "--out", tmp_path / "h.safetensors"), 3, "not a readable robaudit harden checkpoint")
    (tmp_path / "h.safetensors.ckpt").write_text("hello")
    one_error_line(invoke(*args, "--out", tmp_path / "h.safetensors"), 3, "not a readable robaudit harden checkpoint")


def test_check_fields_accepts_the_real_checkpoint(interrupted, tmp_path):
    from robaudit.harden.checkpointing import load_state

    state, _ = interrupted
    torch.save(state, tmp_path / "ok.ckpt")
    assert load_state(tmp_path / "ok.ckpt")["epoch"] == 0
    state = dict(state, epoch=True)
    torch.save(state, tmp_path / "bool.ckpt")
    with pytest.raises(CheckpointError, match="epoch"):
        load_state(tmp_path / "bool.ckpt")


# --- user strings are text, never Rich markup ------------------------------------------------------

MARKUP = "[/bad]"  # a closing tag with no opening one: Rich raises MarkupError on it


def _no_markup_damage(res, *literals: str):
    assert "MarkupError" not in res.output and "internal error" not in res.output, res.output
    for literal in literals:
        assert literal in res.output, (literal, res.output)


def test_markup_in_paths_and_names_is_printed_as_text_by_every_command(workdir, monkeypatch):
    """The issue's rows (--arch 'nets[/bad]/net.py:Net', --json 'out[/bad].json') and the same kind of
    string through scan, report, compare, gate, harden, demo, list and plugins; emoji codes too."""
    monkeypatch.setenv("COLUMNS", "250")  # no wrapping of long paths inside table cells
    nets = workdir / f"nets{MARKUP}"
    nets.mkdir(parents=True)
    (nets / "net.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(784, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n"
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_net_markup", nets / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    torch.save(module.Net().state_dict(), workdir / "w[red].pt")
    arch = f"nets{MARKUP}/net.py:Net"
    json_out, html_out = f"out{MARKUP}.json", "x:smile:.html"
    res = invoke(
        "scan",
        "w[red].pt",
        "--arch",
        arch,
        "--dataset",
        "demo",
        "--n",
        "16",
        "--checks",
        "clean,attacks",
        "--attacks",
        "fgsm,pgd:steps=2",
        "--device",
        "cpu",
        "--json",
        json_out,
        "--html",
        html_out,
    )
    assert res.exit_code == 0, res.output
    _no_markup_damage(res, arch, "w[red].pt", json_out, html_out, "pgd[steps=2]")
    assert "😄" not in res.output and Path(json_out).is_file() and Path(html_out).is_file()

    res = invoke(
        "report",
        json_out,
        "-o",
        f"rep{MARKUP}.html",
        "--csv",
        f"tab{MARKUP}",
        "--require",
        "clean.accuracy >= 0",
        "--junit",
        f"j{MARKUP}.xml",
    )
    assert res.exit_code == 0, res.output
    _no_markup_damage(res, f"rep{MARKUP}.html", f"tab{MARKUP}/samples.csv")
    res = invoke("compare", json_out, "r.json", "-o", f"c{MARKUP}.html", "--force")
    assert res.exit_code == 0, res.output
    _no_markup_damage(res, json_out, f"c{MARKUP}.html")
    res = invoke("gate", json_out, "--require", "clean.accuracy >= 2", "--junit", f"g{MARKUP}.xml")
    assert res.exit_code == 1
    _no_markup_damage(res, "clean.accuracy >= 2")

    (workdir / "data[").mkdir()
    data = _npz(workdir / f"data{MARKUP}.npz")
    res = invoke(
        "harden",
        MODEL,
        "--method",
        "ce-grad",
        "--dataset",
        data,
        "--train-n",
        "32",
        "--eval-n",
        "16",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-scan",
        "--out",
        f"h{MARKUP}.safetensors",
    )
    assert res.exit_code == 0, res.output
    _no_markup_damage(res, f"h{MARKUP}.safetensors", f"data{MARKUP}.npz")

    res = invoke("demo", "--n", "16", "--eps", "0.1", "--device", "cpu", "--out", f"demo{MARKUP}")
    assert res.exit_code == 0, res.output
    _no_markup_damage(res, f"demo{MARKUP}/results.json")

    # errors that quote a user string: one line, the string as typed, never exit 4
    one_error_line(invoke("scan", f"missing{MARKUP}.pt", "--dataset", "demo"), 3, f"missing{MARKUP}.pt")
    one_error_line(invoke("report", f"none{MARKUP}:smile:.json"), 3, f"none{MARKUP}:smile:.json")
    one_error_line(invoke("scan", MODEL, "--dataset", "demo", "--attacks", f"pgdd{MARKUP}"), 2, f"pgdd{MARKUP}")
    line = one_error_line(invoke("report", "bad\nname\x1b[2J.json"), 3)
    assert "bad\\nname\\x1b[2J.json" in line  # control characters escaped: still one line, no terminal codes


def test_plugins_and_list_print_plugin_strings_as_text(monkeypatch):
    from importlib import metadata
    from types import SimpleNamespace

    from robaudit.registry import Registry

    class EP:
        def __init__(self, name, group, value, dist):
            self.name, self.group, self.value = name, group, value
            self.dist = SimpleNamespace(name=dist, version="1[/x]")

        def load(self):
            raise ImportError(f"cannot import {MARKUP}")

    eps = [EP(f"evil{MARKUP}", "robaudit.attacks", "mod_x:Y[/z]", f"dist{MARKUP}")]
    monkeypatch.setattr(metadata, "entry_points", lambda group=None, **kw: [e for e in eps if e.group == group])
    monkeypatch.setenv("COLUMNS", "250")
    res = invoke("plugins")
    assert res.exit_code == 0, res.output
    _no_markup_damage(res, f"evil{MARKUP}", "mod_x:Y[/z]", f"dist{MARKUP}", "1[/x]")
    res = invoke("plugins", "--check")
    assert res.exit_code == 1
    _no_markup_damage(res, f"evil{MARKUP}", "import failed: ModuleNotFoundError")

    fake = Registry("attack", "robaudit.attacks")
    monkeypatch.setattr("robaudit.cli.listing._registries", lambda: {"attacks": fake})
    fake.load_all()
    res = invoke("list", "attacks")
    assert res.exit_code == 0, res.output
    _no_markup_damage(res, f"evil{MARKUP}", f"cannot import {MARKUP}")


def test_no_markup_tags_left_in_print_calls():
    """Consoles print text (robaudit.console): a '[bold]…[/bold]' left in a string would now print
    literally, so styles must be Text spans or style=; this sweep keeps it that way."""
    tag = re.compile(r"[\"'][^\"'\n]*\[/?(bold|dim|red|green|yellow|italic|underline|blue|cyan|magenta)( [a-z ]+)?\]")
    root = Path(__file__).resolve().parent.parent / "robaudit"
    offenders = [
        f"{p.relative_to(root)}:{i}"
        for p in root.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if tag.search(line)
    ]
    assert offenders == []
