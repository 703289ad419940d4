"""Models as users have them (issue 14): torchvision and timm published weights from the local cache,
ONNX files, --arch with self-describing formats, normalization and image size from the model.

Every file is written by the test: torchvision weights into a temporary TORCH_HOME under the name
torchvision expects, timm weights into a temporary Hugging Face cache, ONNX exports of small CNNs.
No network.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import robaudit
from robaudit.cli.main import app
from robaudit.errors import CheckpointError, UsageError
from robaudit.models import build_architecture, load_model, model_sources, parse_arch, save_model
from robaudit.models._formats import sha256_file

runner = CliRunner()
SHAPE = (1, 28, 28)
CNN_KWARGS = {"width": 4, "hidden": 16}


def cli(*args) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def one_line_error(code_and_output, code: int) -> str:
    exit_code, output = code_and_output
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert exit_code == code, output
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


# --- torchvision: published weights from TORCH_HOME ----------------------------------------------

TV_MODEL, TV_WEIGHTS = "squeezenet1_1", "IMAGENET1K_V1"  # 1.2 M parameters, the smallest torchvision classifier


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def tv_cached(torch_home) -> dict:
    """A squeezenet1_1 state dict written where torchvision caches SqueezeNet1_1_Weights.IMAGENET1K_V1."""
    import torchvision

    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    path = torch_home / "hub" / "checkpoints" / os.path.basename(weights.url)
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(weights=None).eval()
    torch.save(net.state_dict(), path)
    return {"net": net, "path": path, "weights": weights}


def test_torchvision_weights_not_cached_name_the_expected_file(torch_home):
    line = one_line_error(cli("scan", "--arch", f"torchvision:{TV_MODEL}", "--weights", TV_WEIGHTS, "-d", "demo"), 3)
    expected = torch_home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    assert str(expected) in line and "--download" in line and "https://download.pytorch.org/models/" in line


def test_torchvision_weights_load_with_their_transforms(tv_cached):
    loaded = load_model(arch=f"torchvision:{TV_MODEL}", weights=TV_WEIGHTS)
    info, t = loaded.info, tv_cached["weights"].transforms()
    assert info.weights == "torchvision:SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert info.arch == f"torchvision:{TV_MODEL}" and info.format == "pickle"
    assert (info.path, info.sha256) == (str(tv_cached["path"]), sha256_file(tv_cached["path"]))
    pre = info.preprocessing
    assert (pre.crop_size, pre.resize_size, pre.interpolation) == (t.crop_size[0], t.resize_size[0], "bilinear")
    assert info.mean == pre.mean == tuple(t.mean) and info.std == tuple(t.std)
    assert info.class_names == tuple(tv_cached["weights"].meta["categories"]) and info.num_classes == 1000
    # the test's file is not the published one: its sha256 does not start with the hash in the file name
    assert any("b8a52dc0" in w and "not the published" in w for w in info.warnings)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(t.mean).view(1, 3, 1, 1), torch.tensor(t.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), tv_cached["net"]((x - mean) / std), atol=1e-5)


def test_torchvision_weights_in_the_arch_spec_and_default(tv_cached):
    a = load_model(arch=f"torchvision:{TV_MODEL}:{TV_WEIGHTS}").info
    b = load_model(arch=f"torchvision:{TV_MODEL}", weights="DEFAULT").info
    assert a.weights == b.weights and a.sha256 == b.sha256
    with pytest.raises(UsageError, match="names the weights IMAGENET1K_V1 but --weights says DEFAULT"):
        load_model(arch=f"torchvision:{TV_MODEL}:{TV_WEIGHTS}", weights="DEFAULT")
    with pytest.raises(UsageError, match="no weights 'IMAGENET1K_V3'.*published: IMAGENET1K_V1"):
        load_model(arch=f"torchvision:{TV_MODEL}", weights="IMAGENET1K_V3")


def test_torchvision_weights_are_read_weights_only(tv_cached, tmp_path):
    """A cache file that needs arbitrary globals is refused, whatever --trust-checkpoint says:
    published weights are data (torchvision's own loader would unpickle it with weights_only=False)."""
    marker = tmp_path / "marker"

    class Touch:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weights": Touch()}, tv_cached["path"])
    for flags in ([], ["--trust-checkpoint"]):
        line = one_line_error(cli("scan", "--arch", f"torchvision:{TV_MODEL}:{TV_WEIGHTS}", "-d", "demo", "-q", *flags), 3)
        assert "arbitrary Python objects" in line
    assert not marker.exists()


def test_mean_std_conflicting_with_the_weights_is_a_usage_error(tv_cached):
    line = one_line_error(
        cli(
            "scan",
            "--arch",
            f"torchvision:{TV_MODEL}:{TV_WEIGHTS}",
            "-d",
            "demo",
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.5,0.5,0.5",
        ),
        2,
    )
    assert "--mean 0.5,0.5,0.5 conflicts with 0.485,0.456,0.406" in line and "transforms()" in line
    # the same values are fine
    info = load_model(arch=f"torchvision:{TV_MODEL}:{TV_WEIGHTS}", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).info
    assert info.mean == (0.485, 0.456, 0.406)


def _image_folder(root: Path, classes: dict[str, list[tuple[int, int]]]) -> Path:
    rng = np.random.default_rng(0)
    for name, sizes in classes.items():
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_torchvision_scan_of_an_image_folder_follows_the_weights(tv_cached, tmp_path):
    """Images of several sizes, no --image-size: the folder is read at the weights' crop size (224),
    its class folders named after ImageNet categories are mapped to the model's 1000 outputs, and
    the provenance records the weights and the file's sha256."""
    folder = _image_folder(tmp_path / "photos", {"goldfish": [(300, 260), (240, 320)], "tench": [(256, 256)]})
    out = tmp_path / "r.json"
    code, output = cli(
        "scan",
        "--arch",
        f"torchvision:{TV_MODEL}",
        "--weights",
        TV_WEIGHTS,
        "-d",
        f"imagefolder:{folder}",
        "--checks",
        "clean,attacks",
        "--attacks",
        "fgsm",
        "--eps",
        "2/255",
        "--json",
        out,
        "-q",
    )
    assert code == 0, output
    r = json.loads(out.read_text())
    prov = r["provenance"]
    assert prov["input_shape"] == [3, 224, 224]
    assert prov["weights"] == "torchvision:SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert prov["checkpoint_sha256"] == sha256_file(tv_cached["path"])
    assert prov["normalization_mean"] == [0.485, 0.456, 0.406]
    assert len(prov["class_names"]) == 1000 and prov["class_names"][1] == "goldfish"
    assert sorted(set(r["sections"]["clean"]["labels"])) == [0, 1]  # tench = 0, goldfish = 1 in ImageNet's order
    assert (
        one_line_error(
            cli(
                "scan", "--arch", f"torchvision:{TV_MODEL}:{TV_WEIGHTS}", "-d", f"imagefolder:{folder}", "--image-size", "128"
            ),
            2,
        ).count("conflicts with the 224-pixel input")
        == 1
    )


def test_folder_classes_that_are_not_the_weights_classes_say_so(tv_cached, tmp_path):
    folder = _image_folder(tmp_path / "photos", {"cats": [(32, 32)], "dogs": [(32, 32)]})
    line = one_line_error(
        cli(
            "scan",
            "--arch",
            f"torchvision:{TV_MODEL}:{TV_WEIGHTS}",
            "-d",
            f"imagefolder:{folder}",
            "--image-size",
            "224",
            "-q",
        ),
        3,
    )
    assert "1000 classes" in line and "cats" in line


# --- timm: published weights from the Hugging Face cache ------------------------------------------


@pytest.fixture
def timm_mod():
    return pytest.importorskip("timm")


def _hf_cache(root: Path, repo: str, files: dict[str, dict]) -> Path:
    """A Hugging Face hub cache holding ``files`` (name -> state dict) of ``repo`` at one snapshot."""
    from safetensors.torch import save_file

    folder = root / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, sd in files.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, snapshot / name)
    return snapshot


@pytest.fixture
def timm_cached(timm_mod, tmp_path, monkeypatch) -> dict:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    torch.manual_seed(0)
    net = timm_mod.create_model("test_resnet", pretrained=False).eval()  # 0.37 M parameters, timm's test model
    snapshot = _hf_cache(cache, "timm/test_resnet.r160_in1k", {"model.safetensors": net.state_dict()})
    return {"net": net, "file": snapshot / "model.safetensors", "cache": cache}


def test_timm_not_cached_names_the_repository(timm_mod, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    line = one_line_error(cli("scan", "--arch", "timm:test_resnet.r160_in1k", "-d", "demo"), 3)
    assert "timm/test_resnet.r160_in1k" in line and "model.safetensors" in line and str(tmp_path / "empty") in line


def test_timm_published_weights_with_their_config(timm_cached):
    for kwargs in ({"arch": "timm:test_resnet.r160_in1k"}, {"arch": "timm:test_resnet", "weights": "r160_in1k"}):
        loaded = load_model(**kwargs)
        info = loaded.info
        assert info.weights == "timm:test_resnet.r160_in1k" and info.arch == "timm:test_resnet"
        assert (info.path, info.format) == (str(timm_cached["file"]), "safetensors")
        pre = info.preprocessing
        assert (pre.crop_size, pre.resize_size, pre.interpolation) == (160, 168, "bilinear")  # ⌊160 / 0.95⌋
        assert info.mean == (0.5, 0.5, 0.5) == info.std
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), timm_cached["net"]((x - 0.5) / 0.5), atol=1e-5)


def test_timm_weights_file(timm_cached, tmp_path):
    """--weights FILE (or the CHECKPOINT argument): your own weights of a timm architecture; the
    architecture's pretrained_cfg fills in mean/std only when you give none."""
    own = load_model(arch="timm:test_resnet", weights=str(timm_cached["file"]))
    assert own.info.weights is None and own.info.mean == (0.5, 0.5, 0.5)
    given = load_model(timm_cached["file"], arch="timm:test_resnet", mean=(0.4,) * 3, std=(0.2,) * 3)
    assert given.info.mean == (0.4,) * 3
    with pytest.raises(UsageError, match="both a checkpoint"):
        load_model(timm_cached["file"], arch="timm:test_resnet", weights=str(timm_cached["file"]))


def test_timm_saved_by_robaudit_loads_without_flags(timm_cached, tmp_path):
    path = tmp_path / "t.safetensors"
    save_model(
        path,
        timm_cached["net"],
        arch="timm:test_resnet",
        num_classes=1000,
        input_shape=(3, 160, 160),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    info = load_model(path).info
    assert (info.arch, info.num_classes, info.preprocessing.crop_size) == ("timm:test_resnet", 1000, 160)


@pytest.mark.parametrize("key", ["pretrained", "checkpoint_path", "pretrained_cfg_overlay", "cache_dir"])
def test_timm_kwargs_that_load_weights_are_refused(timm_cached, key):
    """timm's own loaders (pretrained=True, checkpoint_path=...) would bypass robaudit's: refused."""
    with pytest.raises(UsageError, match=f"must not set {key}"):
        load_model(arch="timm:test_resnet", weights=str(timm_cached["file"]), arch_kwargs={key: "x"})


def test_timm_metadata_kwargs_that_load_weights_are_refused(timm_cached, tmp_path):
    path = tmp_path / "t.safetensors"
    save_model(
        path,
        timm_cached["net"],
        arch="timm:test_resnet",
        arch_kwargs={"checkpoint_path": "/etc/passwd"},
        num_classes=1000,
        input_shape=(3, 160, 160),
    )
    with pytest.raises(UsageError, match="must not set checkpoint_path"):
        load_model(path)


def test_timm_unknown_names(timm_mod):
    with pytest.raises(UsageError, match="unknown timm model 'test_resnett'; did you mean test_resnet"):
        build_architecture("timm:test_resnett", num_classes=10, in_channels=3)
    with pytest.raises(UsageError, match="no pretrained tag 'r999'"):
        load_model(arch="timm:test_resnet.r999")


# --- a cached file that is not the weights: an input error, whatever the source (issue 21) ---------


class _Touch:
    """A pickle payload: opening the marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x)


def _write_bad(kind: str, path: Path, marker: Path) -> None:
    """Write something that is not the published weights where the cache keeps them."""
    if kind == "TorchScript archive (the issue's row)":
        torch.jit.save(torch.jit.script(_Tiny()), str(path))
    elif kind == "torch.export archive":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.save(torch.export.export(_Tiny(), (torch.zeros(1, 2),)), str(path))
    elif kind == "pickle that runs code":
        torch.save({"weights": _Touch(marker)}, path)
    elif kind == "pickled list, not a state dict":
        torch.save([torch.zeros(3)], path)
    elif kind == "state dict of another model":
        torch.save(_Tiny().state_dict(), path)
    elif kind == "truncated pickle":
        torch.save(_Tiny().state_dict(), path)
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "zip that is not PyTorch":
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("hello.txt", "hi")
    elif kind == "empty file":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"<html>404 Not Found</html>" * 10)
    elif kind == "safetensors cut short":
        from safetensors.torch import save_file

        save_file(_Tiny().state_dict(), str(path))
        path.write_bytes(path.read_bytes()[:-4])
    else:  # pragma: no cover
        raise AssertionError(kind)


BAD_CACHE_FILES = [
    "TorchScript archive (the issue's row)",
    "torch.export archive",
    "pickle that runs code",
    "pickled list, not a state dict",
    "state dict of another model",
    "truncated pickle",
    "zip that is not PyTorch",
    "empty file",
    "garbage",
    "safetensors cut short",
]


@pytest.fixture(params=["torchvision", "timm"])
def published(request, tmp_path, monkeypatch) -> dict:
    """Every source of published weights: where its cache keeps the file robaudit reads, and the --arch naming it."""
    if request.param == "torchvision":
        import torchvision

        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
        weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
        path = tmp_path / "torch-home" / "hub" / "checkpoints" / os.path.basename(weights.url)
        path.parent.mkdir(parents=True)
        return {"path": path, "arch": f"torchvision:{TV_MODEL}:{TV_WEIGHTS}"}
    pytest.importorskip("timm")
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snapshot = _hf_cache(cache, "timm/test_resnet.r160_in1k", {"model.safetensors": {"w": torch.zeros(1)}})
    return {"path": snapshot / "model.safetensors", "arch": "timm:test_resnet.r160_in1k"}


@pytest.mark.parametrize("kind", BAD_CACHE_FILES)
def test_a_cached_file_that_is_not_the_weights_is_an_input_error_naming_it(published, kind, tmp_path):
    """Exit 3 and one line naming the cached file and the remedy (delete it, --download), with or
    without --trust-checkpoint (published weights are data); never exit 2 with advice about --arch,
    never --trust-checkpoint as the way out, and no code runs."""
    marker = tmp_path / "marker"
    _write_bad(kind, published["path"], marker)
    folder = tmp_path / "photos"
    for name in ("tench", "goldfish"):  # ImageNet's first two classes, RGB: what these weights would scan
        (folder / name).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / name / "0.png")
    for flags in ([], ["--trust-checkpoint"]):
        line = one_line_error(
            cli(
                "scan",
                "--arch",
                published["arch"],
                "-d",
                f"imagefolder:{folder}",
                "--checks",
                "clean",
                "--attacks",
                "fgsm",
                "-q",
                *flags,
            ),
            3,
        )
        assert str(published["path"]) in line and "the cached file of" in line, line
        assert "not the published weights" in line and "delete" in line and "--download" in line, line
        assert "pass --trust-checkpoint" not in line and "drop --arch" not in line, line
    assert not marker.exists()


# --- ONNX -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory) -> dict:
    """small-cnn (width 4) and its ONNX export with a dynamic batch axis (TorchScript-based exporter:
    torch 2.14's default dynamo exporter needs onnxscript, which robaudit does not depend on)."""
    pytest.importorskip("onnx2torch")
    d = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    net = build_architecture("small-cnn", num_classes=10, in_channels=1, kwargs=CNN_KWARGS).eval()
    _train_briefly(net)
    path = d / "model.onnx"
    export_onnx(net, path)
    return {"net": net, "path": path}


def export_onnx(net: nn.Module, path: Path, shape=SHAPE, dynamic: bool = True) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, *shape),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None,
        )
    return path


def _train_briefly(net: nn.Module) -> None:
    """A few Adam steps on the embedded sample so accuracies are far from chance (and can differ)."""
    from robaudit.data import DataRequest, load_dataset

    data = load_dataset("demo", DataRequest(split="test"))
    x, y = data.x[200:], data.y[200:]  # the scan uses the first 200
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    net.eval()


def test_onnx_matches_the_original_module_with_gradients(onnx_pair):
    loaded = load_model(onnx_pair["path"])
    assert loaded.info.format == "onnx" and loaded.info.input_shape == SHAPE and loaded.info.arch is None
    x = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(2), requires_grad=True)
    y = torch.arange(5)
    grads = []
    for model in (loaded.model, onnx_pair["net"]):
        loss = nn.functional.cross_entropy(model(x), y)
        grads.append(torch.autograd.grad(loss, x)[0])
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), onnx_pair["net"](x), atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_onnx_scan_matches_the_original_module(onnx_pair):
    """Clean and PGD-20 accuracy of the converted model equal the original's on 200 samples (same
    seed; the two compute the same function up to float rounding, so a tie could flip at most a sample)."""
    common = dict(eps="0.1", attacks="pgd", checks="clean,attacks", n=200)
    ours = robaudit.scan(str(onnx_pair["path"]), "demo", **common)
    ref = robaudit.scan(onnx_pair["net"], "demo", **common)
    clean_o, clean_r = ours.metrics()["clean.accuracy"], ref.metrics()["clean.accuracy"]
    rob_o, rob_r = (r.section("attacks").ensemble["0.1"] for r in (ours, ref))
    assert clean_r > 0.5 and rob_r < clean_r  # trained, and the attack bites
    assert abs(clean_o - clean_r) <= 1 / 200 and abs(rob_o - rob_r) <= 1 / 200
    assert ours.provenance.checkpoint_format == "onnx"


@pytest.mark.slow
def test_onnx_geometry_checks_run(onnx_pair, tmp_path):
    out = tmp_path / "r.json"
    code, output = cli(
        "scan",
        onnx_pair["path"],
        "-d",
        "demo",
        "-n",
        "12",
        "--eps",
        "0.1",
        "--attacks",
        "fgsm",
        "--checks",
        "clean,attacks,margins,minimal,jacobian,curvature:k=2,indicator,spectra",
        "--json",
        out,
        "-q",
    )
    assert code == 0, output
    sections = json.loads(out.read_text())["sections"]
    assert {"minimal", "jacobian", "curvature", "indicator", "spectra"} <= set(sections)
    assert sections["jacobian"]["margin"]["mean_l1"] > 0


def test_onnx_with_arch_is_a_usage_error(onnx_pair):
    line = one_line_error(cli("scan", onnx_pair["path"], "-d", "demo", "--arch", "small-cnn"), 2)
    assert "ONNX model" in line and "holds its own architecture" in line and "drop --arch small-cnn" in line


def test_onnx_is_recognised_by_content(onnx_pair, tmp_path):
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(onnx_pair["path"].read_bytes())
    assert load_model(renamed).info.format == "onnx"


def test_onnx_unsupported_operator_names_it(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnx2torch")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("Hardmax", ["f"], ["y"]),
            helper.make_node("Mystery", ["y"], ["z"], domain="com.example"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 28, 28])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 784])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "ops.onnx"
    onnx.save(model, str(path))
    line = one_line_error(cli("scan", path, "-d", "demo", "-q"), 3)
    assert "Hardmax (opset 17)" in line and "com.example:Mystery (custom domain)" in line and "cannot convert" in line


def test_onnx_metadata_props_carry_normalization(onnx_pair, tmp_path):
    """robaudit.* keys in an ONNX model's metadata_props are read like safetensors metadata (data)."""
    import onnx

    from robaudit.models.checkpoint import metadata_strings

    model = onnx.load(str(onnx_pair["path"]))
    for key, value in metadata_strings(mean=[0.25], std=[0.5], class_names=[str(i) for i in range(10)]).items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "meta.onnx"
    onnx.save(model, str(path))
    loaded = load_model(path)
    assert (loaded.info.mean, loaded.info.std, loaded.info.class_names[3]) == ((0.25,), (0.5,), "3")
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), onnx_pair["net"]((x - 0.25) / 0.5), atol=1e-5)
    with pytest.raises(UsageError, match="conflicts with 0.25"):
        load_model(path, mean=[0.5], std=[0.5])


def test_onnx_static_batch_is_noted(tmp_path, onnx_pair):
    path = export_onnx(onnx_pair["net"], tmp_path / "static.onnx", dynamic=False)
    info = load_model(path).info
    assert any("static batch size of 1" in w for w in info.warnings)


def test_onnx_damaged_file_is_one_line(onnx_pair, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_pair["path"].read_bytes()[:300])
    line = one_line_error(cli("scan", cut, "-d", "demo", "-q"), 3)
    assert "not a valid ONNX model" in line


def test_onnx_without_the_extra_says_how_to_install(onnx_pair, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnx2torch"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    line = one_line_error(cli("scan", onnx_pair["path"], "-d", "demo", "-q"), 2)
    assert "pip install 'robaudit[onnx]'" in line


# --- --arch with self-describing formats, usage errors ---------------------------------------------


def test_arch_with_torchscript_or_a_pickled_module_is_a_usage_error(tmp_path):
    torch.manual_seed(0)
    net = build_architecture("small-cnn", num_classes=10, in_channels=1, kwargs=CNN_KWARGS).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, torch.rand(2, *SHAPE)), str(tmp_path / "model.ts"))
    torch.save(net, tmp_path / "module.pt")
    ts = one_line_error(
        cli("scan", tmp_path / "model.ts", "-d", "demo", "--trust-checkpoint", "--arch", "torchvision:resnet18"), 2
    )
    assert "TorchScript archive" in ts and "drop --arch torchvision:resnet18" in ts
    pickled = one_line_error(
        cli("scan", tmp_path / "module.pt", "-d", "demo", "--trust-checkpoint", "--arch-kwargs", "width=4"), 2
    )
    assert "pickled complete model" in pickled and "drop --arch-kwargs" in pickled


def test_no_model_and_weights_without_a_library_arch(tmp_path):
    assert "no model" in one_line_error(cli("scan", "-d", "demo"), 2)
    assert "only torchvision: and timm:" in one_line_error(
        cli("scan", "-d", "demo", "--arch", "small-cnn", "--weights", "IMAGENET1K_V1"), 2
    )
    assert "needs --arch" in one_line_error(cli("scan", "-d", "demo", "--weights", "IMAGENET1K_V1"), 2)


def test_parse_arch():
    assert parse_arch("torchvision:resnet50:IMAGENET1K_V2").spec == "torchvision:resnet50"
    assert parse_arch("timm:resnet18.a1_in1k").weights == "a1_in1k"
    assert parse_arch("small-cnn").family == ""
    with pytest.raises(UsageError, match="model name is missing"):
        parse_arch("timm:")


def test_model_sources_listing():
    names = [s.name for s in model_sources()]
    assert names == ["safetensors", "state dict", "torchvision", "timm", "onnx", "torchscript", "torch.export", "python file"]
    code, output = cli("list", "architectures", "-v")
    assert code == 0, output
    for name in names:
        assert f"  {name}  (" in output
    assert "example: robaudit scan --arch torchvision:resnet50 --weights IMAGENET1K_V2" in output


def test_image_size_conflicts_with_metadata(tmp_path):
    torch.manual_seed(0)
    net = build_architecture("small-cnn", num_classes=10, in_channels=1, kwargs=CNN_KWARGS).eval()
    path = tmp_path / "m.safetensors"
    save_model(path, net, arch="small-cnn", arch_kwargs=CNN_KWARGS, num_classes=10, input_shape=SHAPE)
    line = one_line_error(cli("scan", path, "-d", "demo", "--image-size", "32"), 2)
    assert "--image-size 32 conflicts with the 28-pixel input from the robaudit metadata in m.safetensors" in line


def test_checkpoint_error_type_for_missing_cache(torch_home):
    with pytest.raises(CheckpointError, match="is not in the torch hub cache"):
        load_model(arch=f"torchvision:{TV_MODEL}", weights=TV_WEIGHTS)
