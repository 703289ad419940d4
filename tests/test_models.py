"""robaudit.models: architectures, every checkpoint format, safety of pickles, errors that say what to do."""

from __future__ import annotations

import json
import os
import pathlib
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from robaudit.errors import CheckpointError, InputError, UnsafeCheckpointError, UsageError
from robaudit.models import (
    ARCHITECTURES,
    NormalizedModel,
    build_architecture,
    check_fits,
    detect_format,
    load_model,
    parse_arch_kwargs,
    save_model,
)
from robaudit.models.checkpoint import EXTRA_FILE, metadata_strings

SHAPE = (1, 28, 28)
CNN_KWARGS = {"width": 4, "hidden": 16}

USER_ARCH = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """conv-bn-relu, global pool, linear: a user architecture that only takes num_classes."""

    def __init__(self, num_classes=10, width=4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
'''


# --- helpers / fixtures --------------------------------------------------------------------


class Evil:
    """Unpickling this creates a file: what a malicious checkpoint does."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


class EvilSystem:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return build_architecture("small-cnn", num_classes=num_classes, in_channels=1, kwargs=CNN_KWARGS).eval()


def user_net(arch_file: Path) -> nn.Module:
    net = build_architecture(f"{arch_file}:TinyNet", num_classes=10, in_channels=1)
    with torch.no_grad():  # non-trivial running stats so eval-mode BN matters
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def arch_file(workdir) -> Path:
    path = workdir / "user_net.py"
    path.write_text(USER_ARCH)
    return path


@pytest.fixture(scope="module")
def saved(workdir, arch_file, x):
    """Every format, each under a misleading extension. name -> (path, load kwargs, reference net).

    TorchScript and torch.export carry code, so they load with ``trust_checkpoint`` (test_security.py
    shows the refusal without it); a user architecture file is always the caller's ``arch``."""
    cnn, unet = tiny_cnn(), user_net(arch_file)
    sd = cnn.state_dict()
    arch_args = {"arch": "small-cnn", "arch_kwargs": CNN_KWARGS}
    code = {"trust_checkpoint": True}
    out: dict[str, tuple[Path, dict, nn.Module]] = {}

    def put(name: str, net: nn.Module, kwargs: dict) -> Path:
        path = workdir / name
        out[name] = (path, kwargs, net)
        return path

    save_model(put("meta.bin", cnn, {}), cnn, arch="small-cnn", arch_kwargs=CNN_KWARGS, num_classes=10, input_shape=SHAPE)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(put("nometa.pt", cnn, {**arch_args, "input_shape": SHAPE})))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(cnn, (x,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(put("exported.pth", cnn, code)))
    torch.jit.save(torch.jit.script(cnn), str(put("scripted.pt2", cnn, code)))
    torch.jit.save(torch.jit.trace(cnn, x), str(put("traced.safetensors", cnn, code)))
    torch.save(sd, put("plain.safetensors", cnn, arch_args))
    torch.save({"state_dict": sd, "epoch": 3}, put("nested_state_dict.ckpt", cnn, arch_args))
    torch.save({"model": sd, "optimizer": {"lr": 0.1}}, put("nested_model.pt", cnn, arch_args))
    torch.save({"net": sd}, put("nested_net.pt", cnn, arch_args))
    torch.save({f"module.{k}": v for k, v in sd.items()}, put("dataparallel.pt", cnn, arch_args))
    torch.save({f"model.{k}": v for k, v in sd.items()}, put("model_prefix.pt", cnn, arch_args))
    torch.save(sd, put("legacy.ts", cnn, arch_args), _use_new_zipfile_serialization=False)
    user_spec = f"{arch_file}:TinyNet"
    torch.save(unet.state_dict(), put("user_sd.safetensors", unet, {"arch": user_spec}))
    save_model(put("user_meta.pt", unet, {"arch": user_spec}), unet, arch=user_spec, num_classes=10, input_shape=SHAPE)
    torch.jit.save(torch.jit.script(unet), str(put("user_scripted.bin", unet, code)))
    program = torch.export.export(unet, (x,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(put("user_exported.ckpt", unet, code)))
    return out


# --- formats ---------------------------------------------------------------------------------

EXPECTED_FORMAT = {
    "meta.bin": "safetensors",
    "nometa.pt": "safetensors",
    "exported.pth": "torch-export",
    "scripted.pt2": "torchscript",
    "traced.safetensors": "torchscript",
    "plain.safetensors": "pickle",
    "nested_state_dict.ckpt": "pickle",
    "nested_model.pt": "pickle",
    "nested_net.pt": "pickle",
    "dataparallel.pt": "pickle",
    "model_prefix.pt": "pickle",
    "legacy.ts": "pickle",
    "user_sd.safetensors": "pickle",
    "user_meta.pt": "safetensors",
    "user_scripted.bin": "torchscript",
    "user_exported.ckpt": "torch-export",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FORMAT))
def test_every_format_loads_with_identical_outputs(saved, x, name):
    path, kwargs, net = saved[name]
    assert detect_format(path) == EXPECTED_FORMAT[name]
    loaded = load_model(path, **kwargs)
    assert isinstance(loaded.model, NormalizedModel) and not loaded.model.training
    assert loaded.info.format == EXPECTED_FORMAT[name]
    assert loaded.info.warnings == ()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net(x))


def test_state_dict_infers_num_classes_and_channels(saved):
    path, _, _ = saved["plain.safetensors"]
    info = load_model(path, arch="small-cnn", arch_kwargs="width=4,hidden=16").info
    assert info.num_classes == 10 and info.arch == "small-cnn" and info.arch_kwargs == CNN_KWARGS


def test_export_reports_its_input_shape(saved):
    path, _, _ = saved["exported.pth"]
    assert load_model(path, trust_checkpoint=True).info.input_shape == SHAPE


def test_metadata_round_trip(workdir, x):
    net = tiny_cnn()
    path = workdir / "sub" / "roundtrip.safetensors"
    digest = save_model(
        path,
        net,
        arch="small-cnn",
        arch_kwargs=CNN_KWARGS,
        num_classes=10,
        input_shape=SHAPE,
        mean=[0.25],
        std=[0.5],
        class_names=[str(i) for i in range(10)],
        extra_metadata={"trained_by": "test"},
    )
    assert [p.name for p in path.parent.iterdir()] == ["roundtrip.safetensors"]  # no temp file left behind
    loaded = load_model(path)
    info = loaded.info
    assert (info.sha256, info.arch, info.arch_kwargs, info.num_classes) == (digest, "small-cnn", CNN_KWARGS, 10)
    assert (info.input_shape, info.mean, info.std) == (SHAPE, (0.25,), (0.5,))
    assert json.loads(info.metadata["robaudit.class_names"])[3] == "3"
    assert info.metadata["trained_by"] == "test" and "robaudit.version" in info.metadata
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), net((x - 0.25) / 0.5))
    # given mean/std must agree with the metadata's (issue 14): equal is fine, different is a usage error
    assert load_model(path, mean=[0.25], std=[0.5]).info.mean == (0.25,)
    with pytest.raises(UsageError, match="--mean 0 conflicts with 0.25 from the robaudit metadata"):
        load_model(path, mean=[0.0], std=[1.0])
    # a NormalizedModel is unwrapped when saved
    save_model(path, loaded.model, arch="small-cnn", arch_kwargs=CNN_KWARGS, num_classes=10, input_shape=SHAPE)
    assert load_model(path).info.std == (0.5,)


def test_save_model_bytes_depend_only_on_content(workdir):
    """safetensors writes metadata from a hash map; save_model sorts it so equal content hashes equal."""
    net = tiny_cnn()
    kw = dict(
        arch="small-cnn",
        arch_kwargs=CNN_KWARGS,
        num_classes=10,
        input_shape=SHAPE,
        mean=[0.25],
        std=[0.5],
        class_names=[f"c{i}" for i in range(10)],
        extra_metadata={"a": "1", "b": "2", "é": "ü"},
    )
    digests = {save_model(workdir / f"det{i}.safetensors", net, **kw) for i in range(4)}
    assert len(digests) == 1
    loaded = load_model(workdir / "det0.safetensors")
    assert loaded.info.metadata["é"] == "ü" and loaded.info.sha256 in digests


def test_torchscript_metadata_extra_file(workdir):
    path = workdir / "ts_meta.pt"
    meta = metadata_strings(num_classes=10, input_shape=SHAPE, mean=[0.5], std=[0.25])
    torch.jit.save(torch.jit.script(tiny_cnn()), str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})
    info = load_model(path, trust_checkpoint=True).info
    assert (info.num_classes, info.input_shape, info.mean, info.std) == (10, SHAPE, (0.5,), (0.25,))


def test_save_model_handles_tied_weights(workdir):
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net[1].weight = net[0].weight
    path = workdir / "tied.safetensors"
    save_model(path, net, arch="x", num_classes=4, input_shape=(1, 2, 2))
    assert detect_format(path) == "safetensors"


# --- safety ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [Evil, EvilSystem])
@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, zip_format):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_cnn().state_dict(), "x": payload(target)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint") as err:
        load_model(path, arch="small-cnn", arch_kwargs=CNN_KWARGS)
    # zip: every global torch finds in the pickle; legacy: the first one torch's unpickler refused
    named = "system" if payload is EvilSystem else ("pathlib.Path" if zip_format else "getattr")
    names = re.search(r"to load \(([^)]*)\)", str(err.value)).group(1).split(", ")
    assert any(n == named or n.endswith("." + named) for n in names), names
    assert not target.exists()


def test_trusted_full_module_pickle(tmp_path, x):
    net = tiny_cnn()
    path = tmp_path / "full.pt"
    torch.save(net, path)
    with pytest.raises(UnsafeCheckpointError, match="SmallCNN"):
        load_model(path)
    loaded = load_model(path, trust_checkpoint=True)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net(x))


def test_numpy_scalars_next_to_weights_load_safely(tmp_path):
    import numpy as np

    path = tmp_path / "np.pt"
    torch.save({"state_dict": tiny_cnn().state_dict(), "best_acc": np.float64(0.9)}, path)
    assert load_model(path, arch="small-cnn", arch_kwargs=CNN_KWARGS).info.metadata["best_acc"] == "0.9"


# --- errors ----------------------------------------------------------------------------------


def test_truncated_files(saved, tmp_path):
    for name, expected in (("meta.bin", "not a valid safetensors file"), ("plain.safetensors", "truncated or corrupt")):
        data = saved[name][0].read_bytes()
        path = tmp_path / f"cut_{name}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=expected):
            load_model(path, arch="small-cnn", arch_kwargs=CNN_KWARGS)


def test_unknown_and_missing_files(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"hello world, not a model")
    with pytest.raises(CheckpointError, match="supported formats: safetensors"):
        detect_format(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_missing_arch_is_a_usage_error(saved):
    with pytest.raises(UsageError, match=r"no architecture metadata; pass --arch NAME \(built-ins: .*small-cnn"):
        load_model(saved["plain.safetensors"][0])


def test_wrong_architecture_lists_keys(saved):
    with pytest.raises(CheckpointError) as err:
        load_model(saved["plain.safetensors"][0], arch="yu-convnet", num_classes=10, input_shape=SHAPE)
    msg = str(err.value)
    assert "missing keys (features.0.0.weight" in msg and "unexpected keys (conv1.weight" in msg
    assert "wrong --arch" in msg and "\n" not in msg


def test_wrapper_prefix_is_named(tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({f"backbone.{k}": v for k, v in tiny_cnn().state_dict().items()} | {"head.scale": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="prefix 'backbone.'"):
        load_model(path, arch="small-cnn", arch_kwargs=CNN_KWARGS)


def test_wrong_num_classes_names_the_class_count(saved):
    with pytest.raises(CheckpointError, match="the checkpoint has 10 classes; pass --num-classes 10"):
        load_model(saved["plain.safetensors"][0], arch="small-cnn", arch_kwargs=CNN_KWARGS, num_classes=7)


def test_nan_weights_are_a_warning(tmp_path):
    sd = tiny_cnn().state_dict()
    sd["conv1.weight"][0, 0, 0, 0] = float("nan")
    sd["fc2.bias"][0] = float("inf")
    path = tmp_path / "nan.pt"
    torch.save(sd, path)
    (warning,) = load_model(path, arch="small-cnn", arch_kwargs=CNN_KWARGS).info.warnings
    assert warning == "2 of 8 tensors contain NaN/Inf: conv1.weight, fc2.bias"


def test_export_in_train_mode_is_a_warning(arch_file, tmp_path, x):
    net = user_net(arch_file).train()
    path = tmp_path / "train.pt2"
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes={"x": {0: torch.export.Dim("b")}}), str(path))
    loaded = load_model(path, trust_checkpoint=True)
    assert any("training mode" in w for w in loaded.info.warnings)
    loaded.model.train()  # exported graphs reject train()/eval(); the wrapper must not
    loaded.model.eval()


# --- check_fits ------------------------------------------------------------------------------


def test_check_fits(saved):
    loaded = load_model(saved["nometa.pt"][0], arch="small-cnn", arch_kwargs=CNN_KWARGS)  # no input_shape known
    check_fits(loaded, input_shape=SHAPE, num_classes=10, dataset_name="mnist")
    with pytest.raises(InputError, match=r"does not accept inputs of shape \[3, 28, 28\] from dataset cifar"):
        check_fits(loaded, input_shape=(3, 28, 28), num_classes=10, dataset_name="cifar")
    with pytest.raises(InputError, match="model outputs 10 classes but cifar100 has 100"):
        check_fits(loaded, input_shape=SHAPE, num_classes=100, dataset_name="cifar100")
    with_shape = load_model(saved["meta.bin"][0])
    with pytest.raises(InputError, match=r"expects inputs of shape \[1, 28, 28\] but dataset cifar10 has \[3, 32, 32\]"):
        check_fits(with_shape, input_shape=(3, 32, 32), num_classes=10, dataset_name="cifar10")


def test_check_fits_static_batch_export(tmp_path):
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(tiny_cnn(), (torch.rand(1, *SHAPE),)), str(path))
    loaded = load_model(path, trust_checkpoint=True)
    assert any("static batch size of 1" in w for w in loaded.info.warnings)
    fitted = check_fits(loaded, input_shape=SHAPE, num_classes=10, dataset_name="mnist")
    assert fitted.info.fixed_batch == 1 and fitted.model(torch.rand(3, *SHAPE)).shape == (3, 10)
    import dataclasses

    unknown_shape = dataclasses.replace(loaded, info=dataclasses.replace(loaded.info, input_shape=None))
    with pytest.raises(InputError, match="fixed batch size of 1 but fails on 1 input"):
        check_fits(unknown_shape, input_shape=(1, 32, 32), num_classes=10, dataset_name="mnist32")


# --- architectures ---------------------------------------------------------------------------

ARCH_INPUTS = {
    "small-cnn": (1, 28, 28),
    "yu-convnet": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "preact-resnet18": (3, 32, 32),
    "wrn-28-10": (3, 32, 32),
    "mlp": (1, 28, 28),
}


@pytest.mark.parametrize("name", sorted(ARCH_INPUTS))
def test_builtin_architectures(name):
    shape = ARCH_INPUTS[name]
    net = build_architecture(name, num_classes=7, in_channels=shape[0]).eval()
    with torch.no_grad():
        assert net(torch.rand(1, *shape)).shape == (1, 7)
    assert ARCHITECTURES.get(name).__doc__


def test_small_cnn_demo_size_and_input_size():
    net = build_architecture("small-cnn", num_classes=10, in_channels=1, kwargs={"width": 16, "hidden": 128})
    assert sum(p.numel() for p in net.parameters()) < 250_000
    cifar = build_architecture("small-cnn", num_classes=10, in_channels=3, kwargs=CNN_KWARGS, input_size=32)
    assert cifar(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_architectures():
    net = build_architecture("torchvision:resnet18", num_classes=10, in_channels=3)
    assert net.fc.out_features == 10
    with pytest.raises(UsageError, match="did you mean resnet18"):
        build_architecture("torchvision:resnet81", num_classes=10, in_channels=3)


def test_user_file_architecture_errors(arch_file, tmp_path):
    with pytest.raises(UsageError, match="not found"):
        build_architecture(f"{tmp_path}/missing.py:Net", num_classes=10, in_channels=1)
    with pytest.raises(UsageError, match="has no class or function 'Nope' .*TinyNet"):
        build_architecture(f"{arch_file}:Nope", num_classes=10, in_channels=1)
    with pytest.raises(UsageError, match="does not accept depth; its parameters are: num_classes, width"):
        build_architecture(f"{arch_file}:TinyNet", num_classes=10, in_channels=1, kwargs={"depth": 3})
    with pytest.raises(UsageError, match="unknown architecture 'resnet-18'; did you mean 'resnet18'"):
        build_architecture("resnet-18", num_classes=10, in_channels=3)


def test_parse_arch_kwargs():
    assert parse_arch_kwargs('{"width": 16, "act": "relu"}') == {"width": 16, "act": "relu"}
    assert parse_arch_kwargs("width=16, dropout=0.3,bias=true,name=wide,x=none") == {
        "width": 16,
        "dropout": 0.3,
        "bias": True,
        "name": "wide",
        "x": None,
    }
    assert parse_arch_kwargs("") == {}
    for bad in ("[1, 2]", "{bad json", "width", "=3"):
        with pytest.raises(UsageError, match="--arch-kwargs"):
            parse_arch_kwargs(bad)


def test_old_batchnorm_checkpoint_without_counter(arch_file, tmp_path, x):
    net = user_net(arch_file)
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pt"
    torch.save(sd, path)
    loaded = load_model(path, arch=f"{arch_file}:TinyNet")
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net(x))
