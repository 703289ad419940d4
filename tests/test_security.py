"""The trust model (docs/security.md): an untrusted file never runs code.

Every hostile input is built here with a payload that only creates a marker file. robaudit must
refuse it with exit 3 and one line of output (no Python warning, no log record, no traceback: what
a user would see on stderr), and the marker must never appear. The control tests show each payload
is live: torch's own loader, or importing the named file, runs it. Legitimate files of every
format still scan.

No ``from __future__ import annotations`` here: torch.jit.script reads the annotations below.
"""

import json
import logging
import os
import pickle
import subprocess
import sys
import sysconfig
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import robaudit
from robaudit.cli.main import app
from robaudit.errors import CheckpointError, UnsafeCheckpointError
from robaudit.models import build_architecture, load_model, save_model
from robaudit.models._trust import metadata_architecture

runner = CliRunner()
SHAPE = (1, 28, 28)
CNN_KWARGS = {"width": 4, "hidden": 16}


# --- payloads ----------------------------------------------------------------------------------


class Touch:
    """Unpickling this creates ``target``: what a malicious pickle does (builtins.open, mode "w")."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


class ScriptedForward(nn.Module):
    """A working classifier whose TorchScript ``forward`` writes ``path`` (from_file(shared=True) +
    fill_) on batches larger than ``min_batch``: 0 = at the first call (robaudit's fit check, i.e.
    while loading), 3 = only during the scan (the fit check uses batches of 3 and 2)."""

    def __init__(self, path: str, min_batch: int):
        super().__init__()
        self.path = path
        self.min_batch = min_batch
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if x.shape[0] > self.min_batch:
            written = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
            written.fill_(1)
            out = out + written.sum() * 0
        return out


class ScriptedSetstate(nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by torch.jit.load) writes ``path``."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.w = torch.zeros(784, 10)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.path, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.path = state[0]
        self.training = state[2]
        written = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        written.fill_(1)
        self.w = state[1] + written.sum() * 0

    def forward(self, x):
        return x.flatten(1) @ self.w


class ExportBase(nn.Module):
    """An ordinary classifier plus an ``empty`` + ``fill_`` pair that the tampered archive turns into
    ``from_file(MARKER, shared=True)`` + ``fill_``."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        scratch = torch.empty(4, dtype=torch.uint8)
        scratch.fill_(1)
        return self.fc(x.flatten(1)) + scratch.sum() * 0


EVIL_ARCH = """
open({marker!r}, "w").close()  # runs at import
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(784, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""


# --- builders ----------------------------------------------------------------------------------


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_architecture("small-cnn", num_classes=10, in_channels=1, kwargs=CNN_KWARGS).eval()


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit/export deprecation notes while building
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def export_base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "base.pt2"
    program = torch.export.export(
        ExportBase().eval(), (torch.rand(2, *SHAPE),), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}
    )
    torch.export.save(program, str(path))
    return path


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a zip archive, passing each member through ``change(tail, data) -> data``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            tail = item.filename.split("/", 1)[1]
            zout.writestr(item, change(tail, zin.read(item)))
    return dst


def _edit_program(change):
    """A member changer that edits the serialized program (models/model.json) with ``change(dict)``."""

    def edit(tail, data):
        if tail != "models/model.json":
            return data
        program = json.loads(data)
        change(program)
        return json.dumps(program).encode()

    return edit


def pt2_sample_inputs(base: Path, dst: Path, marker: Path) -> Path:
    """sample_inputs replaced by a protocol-0 pickle (no header a scanner would look for)."""
    evil = pickle.dumps(Touch(marker), protocol=0)
    return _rewrite(base, dst, lambda tail, data: evil if tail == "data/sample_inputs/model.pt" else data)


def pt2_pickled_weight(base: Path, dst: Path, marker: Path) -> Path:
    """A weight entry switched to the pickle path (use_pickle: true), its pickle's PROTO header stripped."""
    config_name = "data/weights/model_weights_config.json"
    with zipfile.ZipFile(base) as z:
        root = z.namelist()[0].split("/", 1)[0]
        config = json.loads(z.read(f"{root}/{config_name}"))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    weight_file = f"data/weights/{first['path_name']}"
    evil = pickle.dumps(Touch(marker), protocol=2)[2:]

    def change(tail, data):
        if tail == config_name:
            return json.dumps(config).encode()
        return evil if tail == weight_file else data

    return _rewrite(base, dst, change)


def pt2_from_file(base: Path, dst: Path, marker: Path) -> Path:
    """The graph's ``empty`` node becomes aten.from_file(MARKER, shared=True); ``fill_`` then writes it."""

    def change(program):
        for node in program["graph_module"]["graph"]["nodes"]:
            if node["target"] == "torch.ops.aten.empty.memory_format":
                node["target"] = "torch.ops.aten.from_file.default"
                node["inputs"] = [
                    {"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
                    {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                    {"name": "size", "arg": {"as_int": 4}, "kind": 1},
                    {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2},
                ]

    return _rewrite(base, dst, _edit_program(change))


def pt2_guards(base: Path, dst: Path, marker: Path) -> Path:
    """guards_code: Python that ExportedProgram.module() compiles with exec and runs on every call."""

    def change(program):
        program["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]

    return _rewrite(base, dst, _edit_program(change))


def pt2_shape_expression(base: Path, dst: Path, marker: Path) -> Path:
    """A dynamic dimension's expr_str, which torch.export.load hands to sympy.sympify (eval)."""

    def change(program):
        for value in program["graph_module"]["graph"]["tensor_values"].values():
            for size in value["sizes"]:
                if "as_expr" in size:
                    expr = size["as_expr"]["expr_str"]
                    size["as_expr"]["expr_str"] = f"open({str(marker)!r}, 'w') and {expr}"

    return _rewrite(base, dst, _edit_program(change))


PT2_TAMPERS = {
    "sample-inputs-pickle": pt2_sample_inputs,
    "weight-pickle-no-header": pt2_pickled_weight,
    "graph-from-file": pt2_from_file,
    "guards-code": pt2_guards,
    "shape-expression": pt2_shape_expression,
}


def torchscript_forward(dst: Path, marker: Path, min_batch: int) -> Path:
    _quiet(torch.jit.save, _quiet(torch.jit.script, ScriptedForward(str(marker), min_batch)), str(dst))
    return dst


def torchscript_setstate(dst: Path, marker: Path) -> Path:
    _quiet(torch.jit.save, _quiet(torch.jit.script, ScriptedSetstate(str(marker))), str(dst))
    return dst


def metadata_arch_file(folder: Path, marker: Path) -> Path:
    path = folder / "evil.py"
    path.write_text(EVIL_ARCH.format(marker=str(marker)))
    return path


def safetensors_naming(dst: Path, arch: str) -> Path:
    """A robaudit safetensors file whose metadata names ``arch`` (what save_model writes)."""
    save_model(dst, tiny_cnn(), arch=arch, arch_kwargs=CNN_KWARGS, num_classes=10, input_shape=SHAPE)
    return dst


def pickle_naming(dst: Path, arch: str) -> Path:
    """A weights-only torch.save dict with a top-level 'robaudit.arch' entry next to the weights."""
    torch.save({"state_dict": tiny_cnn().state_dict(), "robaudit.arch": arch}, dst)
    return dst


# --- running -------------------------------------------------------------------------------------


def refused(args: list, marker: Path, caplog, code: int = 3) -> str:
    """Run the CLI, assert exit ``code``, one line, no warning/log record/traceback, no marker; return the line."""
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = runner.invoke(app, [*map(str, args), "-q"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == code, res.output
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output
    assert not caught, [str(w.message) for w in caught]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not marker.exists(), "the payload ran"
    return lines[0]


def scan(path, *extra) -> list:
    return ["scan", str(path), "--dataset", "demo", "--n", "16", "--checks", "clean", *map(str, extra)]


# --- TorchScript: code, refused without --trust-checkpoint ----------------------------------------


TORCHSCRIPT_CASES = {
    "forward-on-load, named weights.pt": ("weights.pt", lambda d, m: torchscript_forward(d, m, min_batch=0)),
    "forward-during-scan, named model.pth": ("model.pth", lambda d, m: torchscript_forward(d, m, min_batch=3)),
    "__setstate__, named model.safetensors": ("model.safetensors", torchscript_setstate),
}


@pytest.mark.parametrize("case", sorted(TORCHSCRIPT_CASES))
def test_torchscript_is_refused_without_running(tmp_path, caplog, case):
    name, build = TORCHSCRIPT_CASES[case]
    marker = tmp_path / "marker"
    path = build(tmp_path / name, marker)
    assert not marker.exists()
    line = refused(scan(path), marker, caplog)
    assert "TorchScript" in line and "can run code" in line and "--trust-checkpoint" in line
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        robaudit.scan(str(path), "demo", n=8, checks="clean")  # the Python API: same refusal
    assert not marker.exists()


@pytest.mark.parametrize("case", sorted(TORCHSCRIPT_CASES))
def test_control_torchscript_payloads_are_live(tmp_path, case):
    """torch.jit.load + a batch of 4 runs each payload: the refusal above is what stops them."""
    name, build = TORCHSCRIPT_CASES[case]
    marker = tmp_path / "marker"
    net = _quiet(torch.jit.load, str(build(tmp_path / name, marker)))
    net(torch.rand(4, *SHAPE))
    assert marker.exists()


# --- torch.export: code, refused without --trust-checkpoint ---------------------------------------


@pytest.mark.parametrize("tamper", sorted(PT2_TAMPERS))
def test_tampered_export_archive_is_refused_without_running(export_base, tmp_path, caplog, tamper):
    marker = tmp_path / "marker"
    path = PT2_TAMPERS[tamper](export_base, tmp_path / "model.pt2", marker)
    line = refused(scan(path), marker, caplog)
    assert "torch.export program" in line and "can run code" in line and "--trust-checkpoint" in line


@pytest.mark.parametrize("tamper", sorted(PT2_TAMPERS))
def test_control_export_payloads_are_live(export_base, tmp_path, tamper):
    """torch.export.load (+ module() and one call) runs each payload, whatever error follows."""
    marker = tmp_path / "marker"
    path = PT2_TAMPERS[tamper](export_base, tmp_path / "model.pt2", marker)
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # torch logs the tracebacks of its fallbacks
    try:
        program = _quiet(torch.export.load, str(path))
        program.module()(torch.rand(3, *SHAPE))
    except Exception:  # noqa: BLE001 - some tampered archives fail after their payload ran
        pass
    finally:
        logging.disable(previous)
    assert marker.exists()


# --- metadata never names code ---------------------------------------------------------------------


def _arch_specs(tmp_path: Path, marker: Path) -> dict:
    """Each way a file can name a Python file, relative to the working directory tmp_path/work."""
    evil = metadata_arch_file(tmp_path, marker)
    return {
        "relative": "../evil.py:Net",
        "traversal": f"../../{tmp_path.name}/evil.py:Net",
        "absolute": f"{evil}:Net",
        "plain-name": "evil.py:Net",
    }


@pytest.mark.parametrize("fmt", ["safetensors", "pickle"])
@pytest.mark.parametrize("spec_kind", ["relative", "traversal", "absolute", "plain-name"])
def test_metadata_naming_a_python_file_is_refused(tmp_path, monkeypatch, caplog, fmt, spec_kind):
    marker = tmp_path / "marker"
    spec = _arch_specs(tmp_path, marker)[spec_kind]
    work = tmp_path / "work"
    work.mkdir()
    if spec_kind == "plain-name":
        metadata_arch_file(work, marker)
    monkeypatch.chdir(work)
    build = safetensors_naming if fmt == "safetensors" else pickle_naming
    path = build(tmp_path / f"model.{'safetensors' if fmt == 'safetensors' else 'pt'}", spec)
    line = refused(scan(path), marker, caplog)
    assert "never imports code named inside a checkpoint" in line and "--arch" in line and spec in line
    with pytest.raises(CheckpointError, match="never imports code"):
        robaudit.scan(str(path), "demo", n=8, checks="clean")
    assert not marker.exists()


def test_metadata_naming_the_standard_library_is_refused(tmp_path, caplog):
    """``this.py`` prints the Zen of Python when imported: a second output line would show it."""
    spec = f"{Path(sysconfig.get_paths()['stdlib']) / 'this.py'}:Net"
    path = safetensors_naming(tmp_path / "model.safetensors", spec)
    before = set(sys.modules)
    refused(scan(path), tmp_path / "marker", caplog)
    assert not [m for m in set(sys.modules) - before if m.startswith("robaudit_user_arch_")]


def test_control_metadata_file_is_live(tmp_path):
    """What robaudit did with the metadata before: build_architecture imports the named file."""
    marker = tmp_path / "marker"
    evil = metadata_arch_file(tmp_path, marker)
    build_architecture(f"{evil}:Net", num_classes=10, in_channels=1)
    assert marker.exists()


def test_an_arch_the_user_types_overrides_the_metadata(tmp_path, monkeypatch):
    """A file whose metadata names a Python file loads when the user names that file on the command line."""
    user_file = tmp_path / "net.py"
    user_file.write_text(EVIL_ARCH.split("\n", 2)[2])  # without the payload line: the user's own code
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.safetensors"
    net = build_architecture("net.py:Net", num_classes=10, in_channels=1)
    save_model(path, net, arch="net.py:Net", num_classes=10, input_shape=SHAPE)
    assert runner.invoke(app, scan(path, "-q")).exit_code == 3
    res = runner.invoke(app, scan(path, "--arch", "net.py:Net", "-q"))
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("name", ["small-cnn", "SMALL-CNN", "yu-convnet", "torchvision:resnet18"])
def test_metadata_registry_names_are_accepted(name):
    assert metadata_architecture(name, Path("m.safetensors")) == name


@pytest.mark.parametrize(
    "name",
    [
        "evil.py:Net",
        "../../evil.py:Net",
        "/abs/evil.py:Net",
        "C:\\models\\evil.py:Net",
        "pkg/net:Net",
        "net.py",
        "torchvision:../x.py:Net",
        "torchvision:a:b",
        "sub/small-cnn",
        "..",
        "small-cnn\n",
        " small-cnn",
        "",
        "mod:attr",
    ],
)
def test_metadata_paths_and_non_names_are_refused(name):
    with pytest.raises(CheckpointError, match="never imports code"):
        metadata_architecture(name, Path("m.safetensors"))


def test_metadata_unknown_registry_name_is_an_input_error():
    with pytest.raises(CheckpointError, match="not installed here.*small-cnn"):
        metadata_architecture("no-such-net", Path("m.safetensors"))


def test_metadata_arch_kwargs_must_be_a_json_object(tmp_path, caplog):
    path = tmp_path / "model.safetensors"
    save_model(path, tiny_cnn(), arch="small-cnn", num_classes=10, input_shape=SHAPE, extra_metadata={"x": "y"})
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["robaudit.arch_kwargs"] = '["width", 4]'
    save_file(tensors, str(path), metadata=meta)
    line = refused(scan(path), tmp_path / "marker", caplog)
    assert "robaudit.arch_kwargs" in line


# --- pickles: data only ----------------------------------------------------------------------------


def _raw_pickle(dst: Path, marker: Path, protocol: int) -> Path:
    dst.write_bytes(pickle.dumps({"state_dict": Touch(marker)}, protocol=protocol))
    return dst


def _sparse_out_of_range(dst: Path, marker: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that invariant checks are off: that is the point
        bad = torch.sparse_coo_tensor(torch.tensor([[0, 5000]]), torch.tensor([1.0, 2.0]), (3,), check_invariants=False)
    torch.save({"fc2.bias": bad}, dst)
    return dst


PICKLE_CASES = {
    "protocol-2 raw pickle": lambda d, m: _raw_pickle(d, m, 2),
    "protocol-5 raw pickle": lambda d, m: _raw_pickle(d, m, 5),
    "sparse tensor, out-of-range index": _sparse_out_of_range,
    "zip torch.save, nested": lambda d, m: torch.save({"model": {"w": Touch(m)}}, d) or d,
    "legacy torch.save": lambda d, m: torch.save({"w": Touch(m)}, d, _use_new_zipfile_serialization=False) or d,
}


@pytest.mark.parametrize("case", sorted(PICKLE_CASES))
def test_hostile_pickles_are_one_line(tmp_path, caplog, case):
    marker = tmp_path / "marker"
    path = PICKLE_CASES[case](tmp_path / "model.pt", marker)
    line = refused(scan(path, "--arch", "small-cnn"), marker, caplog)
    assert "could run code" in line or "corrupt" in line


def test_pickles_are_refused_on_a_torch_with_the_weights_only_bypass(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    torch.save(tiny_cnn().state_dict(), path)
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(CheckpointError, match="CVE-2025-32434"):
        load_model(path, arch="small-cnn", arch_kwargs=CNN_KWARGS)


@pytest.mark.slow
def test_refusals_are_one_line_on_a_real_stderr(tmp_path):
    """Outside pytest's warning capture: a subprocess's stdout + stderr hold exactly one line."""
    marker = tmp_path / "marker"
    cases = [
        [_raw_pickle(tmp_path / "p5.pt", marker, 5), "--arch", "small-cnn"],
        [_sparse_out_of_range(tmp_path / "sparse.pt", marker), "--arch", "small-cnn"],
        [torchscript_forward(tmp_path / "weights.pt", marker, min_batch=0)],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "robaudit", *scan(*args), "-q"], capture_output=True, text=True, env=env, timeout=300
        )
        out = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        assert proc.returncode == 3 and len(out) == 1, (args, proc.stdout, proc.stderr)
    assert not marker.exists()


# --- the other loading paths: datasets, harden, resume ----------------------------------------------


def test_hostile_dataset_tensor_file(tmp_path, caplog):
    marker = tmp_path / "marker"
    data = tmp_path / "data.pt"
    torch.save({"x": Touch(marker), "y": torch.zeros(4, dtype=torch.long)}, data)
    model = safetensors_naming(tmp_path / "model.safetensors", "small-cnn")
    assert "could run code" in refused(["scan", model, "--dataset", data], marker, caplog)


def test_hostile_cifar_pickle(tmp_path, caplog):
    from data_fixtures import write_cifar10

    write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": Touch(marker), b"labels": [0]}, protocol=2)
    )
    model = tmp_path / "model.safetensors"
    save_model(
        model,
        build_architecture("small-cnn", num_classes=10, in_channels=3),
        arch="small-cnn",
        num_classes=10,
        input_shape=(3, 32, 32),
    )
    assert "could run code" in refused(["scan", model, "--dataset", "cifar10", "--data-dir", tmp_path], marker, caplog)


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(
        path,
        x=rng.integers(0, 256, (32, 28, 28), dtype=np.uint8),
        y=np.arange(32) % 10,
        class_names=np.array([f"c{i}" for i in range(10)]),
    )
    return path


def _harden(parent, data, out, *extra) -> list:
    return [
        "harden",
        parent,
        "--dataset",
        data,
        "--out",
        out,
        "--method",
        "ce-grad",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--eval-n",
        "8",
        "--device",
        "cpu",
        "--no-scan",
        *extra,
    ]


def test_harden_refuses_a_parent_naming_a_python_file(tmp_path, tiny_npz, caplog):
    marker = tmp_path / "marker"
    parent = safetensors_naming(tmp_path / "parent.safetensors", f"{metadata_arch_file(tmp_path, marker)}:Net")
    out = tmp_path / "out.safetensors"
    line = refused(_harden(parent, tiny_npz, out), marker, caplog)
    assert "never imports code" in line and not out.exists()


def test_harden_refuses_a_torchscript_parent(tmp_path, tiny_npz, caplog):
    marker = tmp_path / "marker"
    parent = torchscript_setstate(tmp_path / "parent.pt", marker)
    assert "torchscript" in refused(_harden(parent, tiny_npz, tmp_path / "out.safetensors"), marker, caplog)


def test_harden_resume_refuses_a_hostile_checkpoint(tmp_path, tiny_npz, caplog):
    marker = tmp_path / "marker"
    parent = safetensors_naming(tmp_path / "parent.safetensors", "small-cnn")
    out = tmp_path / "out.safetensors"
    torch.save({"format": "robaudit.harden/1", "model": Touch(marker)}, tmp_path / "out.safetensors.ckpt")
    line = refused(_harden(parent, tiny_npz, out, "--resume"), marker, caplog)
    assert "out.safetensors.ckpt" in line


def test_harden_with_a_typed_arch_file(tmp_path, tiny_npz):
    """The hardened file's metadata names the typed file.py:Class; the after-scan and the printed
    scan command pass it again instead of reading it back from the metadata."""
    user_file = tmp_path / "net.py"
    user_file.write_text(EVIL_ARCH.split("\n", 2)[2])  # without the payload line: the user's own code
    spec = f"{user_file}:Net"
    parent = tmp_path / "parent.pt"
    torch.save(build_architecture(spec, num_classes=10, in_channels=1).state_dict(), parent)
    out = tmp_path / "out.safetensors"
    args = [a for a in _harden(parent, tiny_npz, out, "--arch", spec) if a != "--no-scan"]
    res = runner.invoke(app, [*map(str, args)])
    assert res.exit_code == 0, res.output
    assert "before → after" in res.output and f"--arch {spec}" in res.output.replace("\n", "")
    assert runner.invoke(app, scan(out, "-q")).exit_code == 3
    assert runner.invoke(app, scan(out, "--arch", spec, "-q")).exit_code == 0


# --- legitimate files still scan ------------------------------------------------------------------


@pytest.fixture(scope="module")
def legit(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("legit")
    net = tiny_cnn()
    x = torch.rand(2, *SHAPE)
    save_model(d / "model.safetensors", net, arch="small-cnn", arch_kwargs=CNN_KWARGS, num_classes=10, input_shape=SHAPE)
    torch.save(
        {"state_dict": net.state_dict(), "robaudit.arch": "small-cnn", "robaudit.arch_kwargs": json.dumps(CNN_KWARGS)},
        d / "model.pt",
    )
    program = torch.export.export(net, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    torch.export.save(program, str(d / "model.pt2"))
    _quiet(torch.jit.save, _quiet(torch.jit.trace, net, x), str(d / "model.ts"))
    return {"net": net, "dir": d}


@pytest.mark.parametrize(
    "name, flags, fmt",
    [
        ("model.safetensors", [], "safetensors"),
        ("model.pt", [], "pickle"),
        ("model.pt2", ["--trust-checkpoint"], "torch-export"),
        ("model.ts", ["--trust-checkpoint"], "torchscript"),
    ],
)
def test_legitimate_formats_scan(legit, tmp_path, name, flags, fmt):
    out = tmp_path / "r.json"
    res = runner.invoke(app, scan(legit["dir"] / name, *flags, "--json", out, "-q"))
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["provenance"]["checkpoint_format"] == fmt
    assert 0.0 <= result["sections"]["clean"]["accuracy"] <= 1.0


def test_identical_outputs_with_trust(legit):
    """With --trust-checkpoint the code formats compute what the safetensors weights compute."""
    x = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = load_model(legit["dir"] / "model.safetensors").model(x)
        for name in ("model.pt2", "model.ts"):
            assert torch.allclose(load_model(legit["dir"] / name, trust_checkpoint=True).model(x), ref, atol=1e-6)


@pytest.mark.parametrize("name", ["model.pt2", "model.ts"])
def test_legitimate_code_formats_need_the_flag(legit, tmp_path, caplog, name):
    line = refused(scan(legit["dir"] / name), tmp_path / "marker", caplog)
    assert "--trust-checkpoint" in line


# --- ONNX: data, converted only after robaudit's checks (robaudit/models/_onnx.py) ----------------


@pytest.fixture(scope="module")
def onnx_base(tmp_path_factory) -> dict:
    """small-cnn exported to ONNX (dynamic batch), and the same graph with its weights in an external file."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnx2torch")
    d = tmp_path_factory.mktemp("onnx")
    net = tiny_cnn()
    path = d / "model.onnx"
    _quiet(
        torch.onnx.export,
        net,
        (torch.zeros(1, *SHAPE),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
    )
    return {"onnx": onnx, "net": net, "path": path, "proto": onnx.load(str(path))}


def _exec_name(first: str, marker: Path) -> str:
    """A node name that closes onnx2torch's ``getattr(self, "NAME")`` in torch.fx's generated forward
    and calls exec: opening ``marker`` when the converted model runs (no dots: onnx2torch turns them into /)."""
    code = "+".join(f"chr({ord(c)})" for c in f"open({str(marker)!r}, 'w')")
    return f'{first}"), exec({code}), getattr(self, "{first}'


def onnx_node_name_payload(base: dict, dst: Path, marker: Path) -> Path:
    proto = base["onnx"].ModelProto()
    proto.CopyFrom(base["proto"])
    proto.graph.node[0].name = "first"
    proto.graph.node[1].name = _exec_name("first", marker)
    base["onnx"].save(proto, str(dst))
    return dst


def test_onnx_node_name_code_never_runs(onnx_base, tmp_path):
    """robaudit renames every node before converting: the hostile name is inert and the model scans."""
    marker = tmp_path / "marker"
    path = onnx_node_name_payload(onnx_base, tmp_path / "named.onnx", marker)
    res = runner.invoke(app, scan(path, "--checks", "clean,attacks", "--attacks", "fgsm", "-q"))
    assert res.exit_code == 0, res.output
    assert not marker.exists(), "the payload ran"
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(load_model(path).model(x), onnx_base["net"](x), atol=1e-5)
    assert not marker.exists()


def test_control_onnx_node_name_payload_is_live(onnx_base, tmp_path):
    """onnx2torch on its own writes the node name into the code torch.fx execs: calling the model runs it."""
    import onnx2torch

    marker = tmp_path / "marker"
    path = onnx_node_name_payload(onnx_base, tmp_path / "named.onnx", marker)
    converted = onnx2torch.convert(onnx_base["onnx"].load(str(path)))
    with pytest.raises(Exception):  # noqa: B017 - the tuple the payload leaves behind breaks the next layer
        converted(torch.rand(4, *SHAPE))
    assert marker.exists()


def _external(base: dict, folder: Path, location: str, data_file: Path | None = None, **entries) -> Path:
    """The model with every initializer in one external file (written as ``folder/weights.data``), its
    location then rewritten to ``location`` (and other external_data entries set)."""
    onnx = base["onnx"]
    folder.mkdir(parents=True, exist_ok=True)
    proto = onnx.ModelProto()
    proto.CopyFrom(base["proto"])
    onnx.save_model(
        proto,
        str(folder / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.data",
        size_threshold=0,
    )
    if data_file is not None:
        data_file.parent.mkdir(parents=True, exist_ok=True)
        data_file.write_bytes((folder / "weights.data").read_bytes())
    proto = onnx.load(str(folder / "ext.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
            elif entry.key in entries:
                entry.value = str(entries[entry.key])
    onnx.save(proto, str(folder / "ext.onnx"))
    return folder / "ext.onnx"


def test_onnx_external_data_inside_the_folder_loads(onnx_base, tmp_path, monkeypatch):
    path = _external(onnx_base, tmp_path / "m", "weights.data")
    monkeypatch.chdir(tmp_path)  # resolved against the model's folder, not the working directory
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(load_model(path).model(x), onnx_base["net"](x), atol=1e-5)


ONNX_EXTERNAL_CASES = {
    "parent-traversal": lambda t: ("../secret.data", t / "secret.data", "leaves the model's folder (..)"),
    "deep-traversal": lambda t: ("sub/../../secret.data", t / "secret.data", "leaves the model's folder (..)"),
    "absolute": lambda t: (str(t / "secret.data"), t / "secret.data", "is an absolute path"),
    "missing": lambda t: ("nowhere.data", None, "does not exist next to the model"),
    "folder": lambda t: ("sub", None, "is not a regular file"),
}


@pytest.mark.parametrize("case", sorted(ONNX_EXTERNAL_CASES))
def test_onnx_external_data_outside_the_folder_is_refused(onnx_base, tmp_path, caplog, case):
    location, data_file, why = ONNX_EXTERNAL_CASES[case](tmp_path)
    path = _external(onnx_base, tmp_path / "m", location, data_file)
    (tmp_path / "m" / "sub").mkdir(exist_ok=True)
    line = refused(scan(path), tmp_path / "marker", caplog)
    assert "external file" in line and why in line and str(tmp_path / "m") in line


def test_onnx_external_data_symlink_out_of_the_folder_is_refused(onnx_base, tmp_path, caplog):
    secret = tmp_path / "secret.data"
    path = _external(onnx_base, tmp_path / "m", "link.data", secret)
    (tmp_path / "m" / "link.data").symlink_to(secret)
    line = refused(scan(path), tmp_path / "marker", caplog)
    assert "through a symlink" in line


def test_onnx_external_data_out_of_bounds_is_refused(onnx_base, tmp_path, caplog):
    path = _external(onnx_base, tmp_path / "m", "weights.data", offset=10**9)
    line = refused(scan(path), tmp_path / "marker", caplog)
    assert "asks for bytes" in line


def test_onnx_model_local_functions_are_refused(onnx_base, tmp_path, caplog):
    onnx = onnx_base["onnx"]
    from onnx import helper

    proto = onnx.ModelProto()
    proto.CopyFrom(onnx_base["proto"])
    proto.functions.append(
        helper.make_function(
            "evil.domain", "Payload", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])], [helper.make_opsetid("", 17)]
        )
    )
    onnx.save(proto, str(tmp_path / "f.onnx"))
    line = refused(scan(tmp_path / "f.onnx"), tmp_path / "marker", caplog)
    assert "evil.domain:Payload" in line and "own ONNX functions" in line
