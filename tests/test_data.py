"""Data loading: torchvision's on-disk formats (synthetic files), user files, the demo sample."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import write_cifar10, write_cifar100, write_idx, write_mnist_like, write_svhn

import robaudit.data._common as common
from robaudit.data import DATASETS, DataRequest, DataSpec, dataset_search_paths, load_dataset
from robaudit.errors import DatasetError, DatasetNotFoundError, UsageError

FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real data by accident and no network: empty HOME, cwd and ROBAUDIT_DATA; no Debian dir."""
    for d in ("home", "cwd"):
        (tmp_path / d).mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.delenv("ROBAUDIT_DATA", raising=False)
    monkeypatch.setattr(common, "DEBIAN_ROOT", str(tmp_path / "no-debian"))

    def no_network(*args, **kwargs):
        raise AssertionError("a data test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def _pixels(spec: DataSpec) -> np.ndarray:
    """Back to uint8, checking the [0,1] scale on the way."""
    assert spec.x.dtype == torch.float32 and 0.0 <= float(spec.x.min()) and float(spec.x.max()) <= 1.0
    return (spec.x * 255).round().to(torch.uint8).numpy()


# --- MNIST / Fashion-MNIST ---------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_torchvision_layout(tmp_path, name, folder, gz):
    written = write_mnist_like(tmp_path / "root" / folder / "raw", gz)
    for split in ("test", "train"):
        spec = load_dataset(name, DataRequest(split=split, data_dir=str(tmp_path / "root")))
        x, y = written[split]
        assert spec.x.shape == (len(x), 1, 28, 28) and spec.y.dtype == torch.int64
        np.testing.assert_array_equal(_pixels(spec)[:, 0], x)
        np.testing.assert_array_equal(spec.y.numpy(), y)
        assert (spec.name, spec.split) == (name, split)
        stem = "t10k" if split == "test" else "train"
        assert spec.source.endswith(f"{stem}-images-idx3-ubyte" + (".gz" if gz else ""))
    assert spec.class_names == (FASHION_NAMES if name == "fashion-mnist" else tuple("0123456789"))
    assert spec.mean == ((0.2860,) if name == "fashion-mnist" else (0.1307,))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_debian_flat_layout_and_first_n(tmp_path, monkeypatch, gz):
    debian = tmp_path / "debian"
    written = write_mnist_like(debian / "fashion-mnist", gz)
    monkeypatch.setattr(common, "DEBIAN_ROOT", str(debian))
    x, y = written["test"]
    spec = load_dataset("fashion-mnist", DataRequest(n=3))
    np.testing.assert_array_equal(_pixels(spec)[:, 0], x[:3])
    np.testing.assert_array_equal(spec.y.numpy(), y[:3])
    assert load_dataset("fashion-mnist", DataRequest(n=1000)).n == len(x)  # n > N: the whole split
    # --data-dir pointing straight at the flat folder, or at a folder named for the dataset
    assert load_dataset("fashion-mnist", DataRequest(data_dir=str(debian / "fashion-mnist"))).n == len(x)
    monkeypatch.setenv("ROBAUDIT_DATA", str(debian))
    monkeypatch.setattr(common, "DEBIAN_ROOT", str(tmp_path / "no-debian"))
    assert load_dataset("fashion-mnist").n == len(x)


def test_flat_idx_in_a_generic_root_is_not_taken_for_either_mnist(tmp_path, monkeypatch):
    # MNIST and Fashion-MNIST share file names: flat files in ./data could be either.
    write_mnist_like(tmp_path / "cwd" / "data", gz=True)
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist")


def test_idx_truncated_and_corrupt(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist_like(folder, gz=False)
    images = folder / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte is truncated") as err:
        load_dataset("mnist", DataRequest(data_dir=str(tmp_path)))
    assert "\n" not in str(err.value)
    assert load_dataset("mnist", DataRequest(data_dir=str(tmp_path), n=2)).n == 2  # the first 2 are intact
    images.unlink()
    gz = write_idx(images, np.zeros((3, 28, 28), np.uint8), gz=True)
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", DataRequest(data_dir=str(tmp_path)))
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="labels"):
        load_dataset("mnist", DataRequest(data_dir=str(tmp_path)))


# --- CIFAR ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_pickles(tmp_path, protocol):
    written = write_cifar10(tmp_path, per_batch=4, protocol=protocol)
    spec = load_dataset("cifar10", DataRequest(data_dir=str(tmp_path)))
    data, labels = written["test"]
    assert spec.x.shape == (4, 3, 32, 32) and spec.class_names == tuple(written["names"])
    np.testing.assert_array_equal(_pixels(spec), data.reshape(-1, 3, 32, 32))
    # plane order: the first 1024 values are the red channel, row-major
    np.testing.assert_array_equal(_pixels(spec)[1, 0, 0, :], data[1, :32])
    assert spec.y.tolist() == labels and spec.mean == (0.4914, 0.4822, 0.4465)
    # train = data_batch_1..5 in order; n=6 spans two batches; data_dir may be the batches folder
    train = load_dataset("cifar10", DataRequest(split="train", n=6, data_dir=str(tmp_path / "cifar-10-batches-py")))
    all_x = np.concatenate([d for d, _ in written["train"]]).reshape(-1, 3, 32, 32)
    all_y = sum((lab for _, lab in written["train"]), [])
    np.testing.assert_array_equal(_pixels(train), all_x[:6])
    assert train.y.tolist() == all_y[:6]
    assert load_dataset("cifar10", DataRequest(split="train", data_dir=str(tmp_path))).n == 20


def test_cifar100_fine_labels(tmp_path, monkeypatch):
    written = write_cifar100(tmp_path / "cache")
    monkeypatch.setenv("ROBAUDIT_DATA", str(tmp_path / "cache"))
    for split in ("test", "train"):
        spec = load_dataset("CIFAR-100", DataRequest(split=split))
        data, fine = written[split]
        np.testing.assert_array_equal(_pixels(spec), data.reshape(-1, 3, 32, 32))
        assert spec.y.tolist() == fine and spec.num_classes == 100
    assert spec.class_names[:2] == ("class00", "class01") and spec.std == (0.2673, 0.2564, 0.2762)


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_cifar_pickle_is_refused(tmp_path):
    write_cifar10(tmp_path)
    target = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": _Evil(target), b"labels": [0]}))
    with pytest.raises(DatasetError, match=r"refused.*io\.open, which could run code"):
        load_dataset("cifar10", DataRequest(data_dir=str(tmp_path)))
    assert not target.exists()
    batch.write_bytes(batch.read_bytes()[:10])
    with pytest.raises(DatasetError, match="test_batch is truncated or corrupt"):
        load_dataset("cifar10", DataRequest(data_dir=str(tmp_path)))


# --- SVHN -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["", "svhn"])
def test_svhn_mat(tmp_path, sub):
    x, y = write_svhn(tmp_path / sub, n=6)
    spec = load_dataset("svhn", DataRequest(data_dir=str(tmp_path), n=5))
    assert spec.x.shape == (5, 3, 32, 32) and spec.class_names == tuple("0123456789")
    np.testing.assert_array_equal(_pixels(spec), x.transpose(3, 2, 0, 1)[:5])
    assert spec.y.tolist() == [0, 1, 2, 3, 0]  # 10 means digit 0


# --- not found, download, request validation, names -------------------------------------------


def test_missing_dataset_lists_paths_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBAUDIT_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", DataRequest(data_dir=str(tmp_path / "mine")))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("fashion-mnist (test split) not found; looked in: ")
    paths = [str(p) for p in dataset_search_paths("fashion-mnist", str(tmp_path / "mine"))]
    assert ", ".join(paths) in msg and "--download" in msg and "--data-dir" in msg
    assert paths[:3] == [str(tmp_path / "mine"), str(tmp_path / "env"), str(tmp_path / "cwd" / "data")]
    assert paths[-1] == str(tmp_path / "no-debian" / "fashion-mnist")
    assert str(tmp_path / "home" / ".cache" / "torchvision") in paths
    assert not (tmp_path / "home" / ".cache" / "robaudit").exists()


def test_download_uses_torchvision_then_our_reader(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeFashion:  # stands in for torchvision.datasets.FashionMNIST(root, train=, download=True)
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_mnist_like(Path(root) / "FashionMNIST" / "raw", gz=True)

    monkeypatch.setattr(tvd, "FashionMNIST", FakeFashion)
    spec = load_dataset("fashion-mnist", DataRequest(download=True, n=4))
    root = tmp_path / "home" / ".cache" / "robaudit" / "data"
    assert calls == [(str(root), False, True)] and spec.n == 4
    assert spec.source.startswith(str(root))
    load_dataset("fashion-mnist", DataRequest(download=True))  # already there: no second download
    assert len(calls) == 1

    class Offline:
        def __init__(self, *args, **kwargs):
            raise OSError("<urlopen error [Errno -3] Temporary failure\nin name resolution>")

    monkeypatch.setattr(tvd, "MNIST", Offline)
    with pytest.raises(DatasetError, match="downloading mnist into .*mine failed") as err:
        load_dataset("mnist", DataRequest(download=True, data_dir=str(tmp_path / "mine")))
    assert "\n" not in str(err.value)


def test_request_validation_and_names(tmp_path):
    with pytest.raises(UsageError, match="at least 1"):
        load_dataset("demo", DataRequest(n=0))
    with pytest.raises(UsageError, match="valid splits: test, train"):
        load_dataset("demo", DataRequest(split="val"))
    with pytest.raises(UsageError, match="did you mean 'cifar10'"):
        load_dataset("cifar11")
    with pytest.raises(UsageError, match="imagefolder:"):
        load_dataset(str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="missing.npz"):
        load_dataset(str(tmp_path / "missing.npz"))
    write_mnist_like(tmp_path / "FashionMNIST" / "raw", gz=True)
    ref = load_dataset("fashion-mnist", DataRequest(data_dir=str(tmp_path)))
    for alias in ("fashion_mnist", "fmnist", "Fashion-MNIST", "FASHION_MNIST"):
        spec = load_dataset(alias, DataRequest(data_dir=str(tmp_path)))
        assert spec.name == "fashion-mnist" and torch.equal(spec.x, ref.x)
    assert {"cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "demo"} <= set(DATASETS.names())


def test_plugin_result_is_sliced_to_n(monkeypatch):
    from robaudit.registry import Entry

    def plugin(request):
        x, y = torch.zeros(10, 1, 2, 2), torch.zeros(10, dtype=torch.int64)
        return DataSpec("toy", request.split, x, y, ("a",), "toy")

    DATASETS.names()  # load built-ins first
    monkeypatch.setitem(DATASETS._entries, "toy", Entry("toy", plugin, "toy-plugin", "1"))
    assert load_dataset("toy", DataRequest(n=3)).n == 3


# --- image folders ----------------------------------------------------------------------------


def _save(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_imagefolder_rgb_order_and_first_n(tmp_path):
    g = np.random.default_rng(0)
    imgs = {f"{c}/{f}": g.integers(0, 256, (6, 5, 3), dtype=np.uint8) for c in ("dog", "cat") for f in ("b.png", "a.bmp")}
    for rel, arr in imgs.items():
        _save(tmp_path / "set" / rel, arr)
    (tmp_path / "set" / "cat" / "notes.txt").write_text("not an image")
    spec = load_dataset(f"imagefolder:{tmp_path / 'set'}")
    assert spec.class_names == ("cat", "dog") and spec.y.tolist() == [0, 0, 1, 1]
    assert spec.x.shape == (4, 3, 6, 5)
    order = ["cat/a.bmp", "cat/b.png", "dog/a.bmp", "dog/b.png"]
    np.testing.assert_array_equal(_pixels(spec), np.stack([imgs[k] for k in order]).transpose(0, 3, 1, 2))
    first3 = load_dataset(f"imagefolder:{tmp_path / 'set'}", DataRequest(n=3, sample="first"))
    assert first3.y.tolist() == [0, 0, 1] and torch.equal(first3.x, spec.x[:3])


def test_imagefolder_grayscale_mixed_and_split(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    _save(tmp_path / "g" / "test" / "zero" / "a.png", gray)
    _save(tmp_path / "g" / "test" / "one" / "a.png", gray[::-1].copy())
    _save(tmp_path / "g" / "train" / "zero" / "a.png", gray)
    spec = load_dataset(f"imagefolder:{tmp_path / 'g'}")
    assert spec.x.shape == (2, 1, 8, 8) and spec.class_names == ("one", "zero")
    np.testing.assert_array_equal(_pixels(spec)[1, 0], gray)
    assert load_dataset(f"imagefolder:{tmp_path / 'g'}", DataRequest(split="train")).n == 1
    _save(tmp_path / "g" / "test" / "one" / "b.png", np.zeros((8, 8, 3), np.uint8))
    assert load_dataset(f"imagefolder:{tmp_path / 'g'}").x.shape == (3, 3, 8, 8)  # any colour → RGB
    _save(tmp_path / "only-train" / "train" / "c" / "a.png", gray)
    with pytest.raises(DatasetNotFoundError, match="no test/ subfolder"):
        load_dataset(f"imagefolder:{tmp_path / 'only-train'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    with pytest.raises(DatasetNotFoundError):
        load_dataset(f"imagefolder:{tmp_path / 'absent'}")


def test_imagefolder_sizes_and_resize(tmp_path):
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, Resize

    g = np.random.default_rng(1)
    a, b = g.integers(0, 256, (32, 32, 3), dtype=np.uint8), g.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    _save(tmp_path / "s" / "k" / "a.png", a)
    _save(tmp_path / "s" / "k" / "b.png", b)
    sizes = r"different sizes \(e\.g\. k/a\.png 32x32, k/b\.png 64x48\); pass --image-size N"
    with pytest.raises(DatasetError, match=sizes):
        load_dataset(f"imagefolder:{tmp_path / 's'}")
    spec = load_dataset(f"imagefolder:{tmp_path / 's'}", DataRequest(image_size=24))
    assert spec.x.shape == (2, 3, 24, 24)
    reference = Compose([Resize(24), CenterCrop(24)])
    for i, arr in enumerate((a, b)):
        np.testing.assert_array_equal(_pixels(spec)[i].transpose(1, 2, 0), np.asarray(reference(Image.fromarray(arr))))


# --- tensor files -----------------------------------------------------------------------------


def _sample(n=5, hwc=False, seed=0):
    g = np.random.default_rng(seed)
    x = g.integers(0, 256, (n, 3, 4, 6), dtype=np.uint8)
    return (x.transpose(0, 2, 3, 1).copy() if hwc else x), g.integers(0, 3, n).astype(np.int64), x


def test_npz_uint8_nchw_and_nhwc_float(tmp_path):
    x, y, ref = _sample()
    np.savez(tmp_path / "a.npz", x=x, y=y, class_names=np.array(["a", "b", "c", "d"]))
    spec = load_dataset(str(tmp_path / "a.npz"), DataRequest(n=4))
    np.testing.assert_array_equal(_pixels(spec), ref[:4])
    assert spec.y.tolist() == y[:4].tolist() and spec.class_names == ("a", "b", "c", "d")
    xh, _, _ = _sample(hwc=True)
    np.savez(tmp_path / "b.npz", x=xh.astype(np.float64) / 255, y=y.astype(np.int32))
    spec = load_dataset(str(tmp_path / "b.npz"))
    assert spec.x.dtype == torch.float32 and spec.x.shape == (5, 3, 4, 6)
    np.testing.assert_array_equal(_pixels(spec), ref)
    assert spec.class_names == tuple(str(i) for i in range(int(y.max()) + 1))
    np.savez(tmp_path / "c.npz", x=ref[:, 0], y=y)  # [N,H,W] → one channel
    assert load_dataset(str(tmp_path / "c.npz")).x.shape == (5, 1, 4, 6)


def test_tensor_file_errors(tmp_path):
    x, y, _ = _sample()
    np.savez(tmp_path / "norm.npz", x=(x / 255.0 - 0.5) / 0.25, y=y)
    with pytest.raises(DatasetError, match=r"range from -2 to 2.*\[0,1\].*normalization belongs inside the model"):
        load_dataset(str(tmp_path / "norm.npz"))
    np.savez(tmp_path / "nolabels.npz", x=x)
    with pytest.raises(DatasetError, match="no 'y'"):
        load_dataset(str(tmp_path / "nolabels.npz"))
    np.savez(tmp_path / "floaty.npz", x=x, y=y.astype(np.float32))
    with pytest.raises(DatasetError, match="integer labels"):
        load_dataset(str(tmp_path / "floaty.npz"))
    np.savez(tmp_path / "short.npz", x=x, y=y[:2])
    with pytest.raises(DatasetError, match="one label per image"):
        load_dataset(str(tmp_path / "short.npz"))
    np.savez(tmp_path / "names.npz", x=x, y=y, class_names=np.array(["a", None], dtype=object))
    with pytest.raises(DatasetError, match="object array"):
        load_dataset(str(tmp_path / "names.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="junk.npz can't be read"):
        load_dataset(str(tmp_path / "junk.npz"))


def test_safetensors_with_class_names(tmp_path):
    import json

    from safetensors.torch import save_file

    xh, y, ref = _sample(hwc=True)
    save_file(
        {"x": torch.from_numpy(xh), "y": torch.from_numpy(y)},
        str(tmp_path / "s.safetensors"),
        metadata={"class_names": json.dumps(["r", "g", "b"])},
    )
    spec = load_dataset(str(tmp_path / "s.safetensors"))
    np.testing.assert_array_equal(_pixels(spec), ref)
    assert spec.class_names == ("r", "g", "b") and spec.y.tolist() == y.tolist()
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
    with pytest.raises(DatasetError, match="bad.safetensors can't be read"):
        load_dataset(str(tmp_path / "bad.safetensors"))


def test_torch_file_and_malicious_pt(tmp_path):
    x, y, ref = _sample()
    torch.save(
        {"x": torch.from_numpy(x).float() / 255, "y": torch.from_numpy(y), "class_names": ["p", "q", "r"]}, tmp_path / "d.pt"
    )
    spec = load_dataset(str(tmp_path / "d.pt"), DataRequest(n=2))
    np.testing.assert_array_equal(_pixels(spec), ref[:2])
    assert spec.class_names == ("p", "q", "r") and spec.name.endswith("d.pt")
    target = tmp_path / "pwned"
    torch.save({"x": _Evil(target), "y": torch.from_numpy(y)}, tmp_path / "evil.pth")
    with pytest.raises(DatasetError, match="refused.*could run code"):
        load_dataset(str(tmp_path / "evil.pth"))
    assert not target.exists()


# --- the embedded demo and the real Fashion-MNIST ---------------------------------------------


def test_demo_dataset(tmp_path):
    spec = load_dataset("demo")
    assert spec.x.shape == (1000, 1, 28, 28) and spec.y.shape == (1000,) and spec.y.dtype == torch.int64
    assert (spec.name, spec.split, spec.class_names) == ("fashion-mnist", "test", FASHION_NAMES)
    assert "embedded" in spec.source and spec.mean == (0.2860,)
    assert torch.equal(load_dataset("demo", DataRequest(n=10)).x, spec.x[:10])
    with pytest.raises(UsageError, match="only a test split"):
        load_dataset("demo", DataRequest(split="train"))


def test_demo_matches_real_fashion_mnist(fashion_available, monkeypatch):
    monkeypatch.setattr(common, "DEBIAN_ROOT", str(fashion_available.parent))
    demo = load_dataset("demo")
    real = load_dataset("fashion-mnist", DataRequest(n=1000))
    assert torch.equal(demo.x, real.x) and torch.equal(demo.y, real.y)


def test_real_fashion_mnist_test_split(fashion_available, monkeypatch):
    monkeypatch.setattr(common, "DEBIAN_ROOT", str(fashion_available.parent))
    full = load_dataset("fashion-mnist")
    assert full.x.shape == (10000, 1, 28, 28) and full.source.startswith(str(fashion_available))
    assert torch.bincount(full.y).tolist() == [1000] * 10
    first = load_dataset("fashion-mnist", DataRequest(n=50))
    assert torch.equal(first.x, full.x[:50]) and torch.equal(first.y, full.y[:50])
