"""One JSON reader (robaudit/jsonio.py) for every JSON robaudit reads: depth, size, duplicate keys
and malformed text are one InputError line (exit 3) whichever file or string carries them.

Issue 21: a deeply nested part file made `robaudit merge` exit 4 (RecursionError) while the result
reader already answered exit 3. The class test runs the same abuse through every reader.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import robaudit
from robaudit import jsonio
from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.errors import InputError
from robaudit.jsonio import MAX_DEPTH, parse_json, read_json

PACKAGE = Path(robaudit.__file__).parent
DEEP = "[" * 100_000 + "]" * 100_000  # far past Python's recursion limit
JUST_TOO_DEEP = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)  # parses, then refused by the depth check


def _json_calls(tree: ast.AST) -> list[str]:
    """``json.load``/``json.loads``/``JSONDecoder``/``raw_decode`` however spelled: attribute access on
    any name bound to the json module, and ``from json import ...``."""
    found = []
    modules = {"json"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "json"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "json":
            found += [f"from json import {a.name}" for a in node.names if a.name in ("load", "loads", "JSONDecoder")]
        if isinstance(node, ast.Attribute) and node.attr in ("load", "loads", "JSONDecoder", "raw_decode"):
            if isinstance(node.value, ast.Name) and node.value.id in modules or node.attr in ("JSONDecoder", "raw_decode"):
                found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_no_json_parsing_outside_jsonio():
    """Every module of the package but jsonio.py: no json.load/json.loads/JSONDecoder. A new reader
    must call robaudit.jsonio.parse_json or read_json, or this fails naming it."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "jsonio.py" and path.parent == PACKAGE:
            continue
        calls = _json_calls(ast.parse(path.read_text(encoding="utf-8")))
        if calls:
            offenders[str(path.relative_to(PACKAGE))] = calls
    assert offenders == {}, f"parse JSON with robaudit.jsonio instead: {offenders}"


def test_the_ast_check_sees_every_spelling():
    """The guard above can fail: each way of calling the json parser is found."""
    for source in (
        "import json\njson.loads(s)",
        "import json as j\nj.load(f)",
        "from json import loads\nloads(s)",
        "import json\njson.JSONDecoder().decode(s)",
        "d.raw_decode(s)",
    ):
        assert _json_calls(ast.parse(source)), source
    assert not _json_calls(ast.parse("import json\njson.dumps(x)\nparse_json(s, 'x')"))


@pytest.mark.parametrize(
    "text, fragment",
    [
        (DEEP, f"nested too deeply (more than {MAX_DEPTH} levels)"),
        (JUST_TOO_DEEP, "nested too deeply"),
        ('{"a": 1, "a": 2}', 'the key "a" appears twice in one object'),
        ('{"a": [1, {"b": 0, "b": 0}]}', 'the key "b" appears twice'),
        ("9" * 5000, "digits"),
        ('{"a": [1, 2', "truncated"),
        ("{'a': 1}", "not valid JSON"),
        ("", "it is empty"),
        (b"\xff[]", "not UTF-8"),
    ],
    ids=[
        "deep",
        "one level too deep",
        "duplicate key",
        "nested duplicate",
        "digit limit",
        "truncated",
        "not JSON",
        "empty",
        "not UTF-8",
    ],
)
def test_parse_json_refuses_with_one_line(text, fragment):
    with pytest.raises(InputError) as err:
        parse_json(text, "the thing")
    message = str(err.value)
    assert message.startswith("the thing: ") and fragment in message and "\n" not in message


def test_parse_json_accepts_what_robaudit_writes():
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert jsonio.depth(parse_json(nested, "x")) == MAX_DEPTH
    assert parse_json('{"a": NaN, "b": [1, 2.5, null, true, "s"]}', "x")["b"] == [1, 2.5, None, True, "s"]
    pairs = parse_json('{"a": 1, "a": 2}', "x", keep_pairs=True)
    assert isinstance(pairs, jsonio.Pairs) and list(pairs) == [("a", 1), ("a", 2)]


def test_read_json_refuses_files_that_are_not_json_files(tmp_path, monkeypatch):
    (tmp_path / "big.json").write_text(json.dumps(list(range(2000))))
    monkeypatch.setattr(jsonio, "MAX_FILE_BYTES", 1000)  # read at call time
    with pytest.raises(InputError, match="big.json is larger than 1000 bytes, far more than any part file"):
        read_json(tmp_path / "big.json", "part file")
    with pytest.raises(InputError, match="part file .*missing.json not found"):
        read_json(tmp_path / "missing.json", "part file")
    with pytest.raises(InputError, match="is a folder, not a part file"):
        read_json(tmp_path, "part file")
    if hasattr(os, "mkfifo"):  # a FIFO would block a plain read forever
        os.mkfifo(tmp_path / "fifo.json")
        with pytest.raises(InputError, match="not a regular file"):
            read_json(tmp_path / "fifo.json", "part file")


# --- the class test: every reader, the same abuse ------------------------------------------------------


def _safetensors_model(path: Path, **metadata: str) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(DEMO_MODEL), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    save_file(tensors, str(path), metadata={**meta, **metadata})
    return path


def _part_file(tmp_path: Path) -> Path:
    res = CliRunner().invoke(
        app,
        [
            "scan",
            str(DEMO_MODEL),
            "-d",
            "demo",
            "-n",
            "8",
            "--checks",
            "clean",
            "--attacks",
            "fgsm",
            "--device",
            "cpu",
            "-q",
            "--shard",
            "0/1",
            "--json",
            str(tmp_path / "p.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    return tmp_path / "p.json"


def _onnx_model(path: Path, **metadata: str) -> Path:
    pytest.importorskip("onnx2torch")
    import warnings

    import onnx

    from robaudit.models import build_architecture

    net = build_architecture("small-cnn", num_classes=10, in_channels=1, kwargs={"width": 2, "hidden": 8, "input_size": 28})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
        )
    model = onnx.load(str(path))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _demo_tensor_file(path: Path, class_names: str) -> Path:
    from safetensors.torch import save_file

    save_file(
        {"x": torch.zeros(4, 1, 28, 28, dtype=torch.uint8), "y": torch.zeros(4, dtype=torch.long)},
        str(path),
        metadata={"class_names": class_names},
    )
    return path


SCAN = ["--checks", "clean", "--attacks", "fgsm", "--device", "cpu", "-q"]


def _merge_part(tmp, payload):
    part = _part_file(tmp)
    part.write_text(payload(part.read_text()))
    return ["merge", str(part), "-o", str(tmp / "merged.json")]


READERS = {
    # reader: (command given a tmp folder and the abusive JSON text, expected exit code)
    "merge: a part file (the issue's row)": (lambda t, j: _merge_part(t, lambda _: j), 3),
    "merge: a part with a duplicate key": (
        lambda t, j: _merge_part(
            t, lambda text: text.replace('{"robaudit_part": 1', '{"robaudit_part": 1, "robaudit_part": 1', 1)
        ),
        3,
    ),
    "report: a result file": (lambda t, j: ["report", str(_write(t / "r.json", j)), "-o", str(t / "r.html")], 3),
    "gate: a result file": (lambda t, j: ["gate", str(_write(t / "r.json", j)), "--require", "clean.accuracy >= 0"], 3),
    "scan: a class map": (
        lambda t, j: [
            "scan",
            str(DEMO_MODEL),
            "-d",
            f"imagefolder:{_folder(t)}",
            "--class-map",
            str(_write(t / "m.json", j)),
            *SCAN,
        ],
        3,
    ),
    "scan: safetensors metadata robaudit.mean": (
        lambda t, j: ["scan", str(_safetensors_model(t / "m.safetensors", **{"robaudit.mean": j})), "-d", "demo", *SCAN],
        3,
    ),
    "scan: safetensors metadata robaudit.class_names": (
        lambda t, j: [
            "scan",
            str(_safetensors_model(t / "m.safetensors", **{"robaudit.class_names": j})),
            "-d",
            "demo",
            *SCAN,
        ],
        3,
    ),
    "scan: ONNX metadata_props robaudit.std": (
        lambda t, j: ["scan", str(_onnx_model(t / "m.onnx", **{"robaudit.std": j})), "-d", "demo", *SCAN],
        3,
    ),
    "scan: a tensor file's class_names metadata": (
        lambda t, j: ["scan", str(DEMO_MODEL), "-d", str(_demo_tensor_file(t / "d.safetensors", j)), *SCAN],
        3,
    ),
    "scan: --arch-kwargs (typed, so a usage error)": (
        lambda t, j: ["scan", "--arch", "small-cnn", "--arch-kwargs", '{"a": ' + j + "}", "-d", "demo", *SCAN],
        2,
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _folder(tmp: Path) -> Path:
    from PIL import Image

    for k in ("a", "b"):
        (tmp / "f" / k).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp / "f" / k / "0.png")
    return tmp / "f"


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("abuse", ["deep", "one level too deep"])
def test_every_json_reader_turns_depth_abuse_into_one_line(reader, abuse, tmp_path):
    make, code = READERS[reader]
    text = DEEP if abuse == "deep" else JUST_TOO_DEEP
    args = make(tmp_path, text)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    assert "nested too deeply" in lines[0] or "appears twice" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a failed command writes nothing"
