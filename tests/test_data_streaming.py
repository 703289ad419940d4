"""Streaming data: lazy image folders, class-stratified --n, class maps, symlink loops, indices in the result."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from robaudit.cli.main import app
from robaudit.data import DataRequest, DataSpec, load_dataset
from robaudit.data.folder import read_class_map
from robaudit.data.sampling import select
from robaudit.errors import DatasetError, UsageError


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _class_sorted_folder(root, sizes=(10, 10, 10), hw=(6, 5), seed=0):
    g = np.random.default_rng(seed)
    imgs = {}
    for c, count in enumerate(sizes):
        for i in range(count):
            rel = f"class{c}/img{i:03d}.png"
            imgs[rel] = g.integers(0, 256, (*hw, 3), dtype=np.uint8)
            _save(root / rel, imgs[rel])
    return imgs


def test_folder_is_read_lazily_in_torchvision_order(tmp_path):
    imgs = _class_sorted_folder(tmp_path / "f", sizes=(3, 2))
    spec = load_dataset(f"imagefolder:{tmp_path / 'f'}")
    assert not isinstance(spec.images, torch.Tensor), "an image folder must not be materialized"
    from torchvision.datasets import ImageFolder

    assert spec.images.__class__.__mro__[1] is ImageFolder
    order = sorted(imgs)
    assert spec.y.tolist() == [0, 0, 0, 1, 1] and spec.input_shape == (3, 6, 5) and spec.sample == "all"
    expected = torch.from_numpy(np.stack([imgs[k] for k in order]).transpose(0, 3, 1, 2)).float() / 255
    # batches read by the DataLoader (in-process and with a worker process) equal the pixels
    for workers in (0, 1):
        got = torch.cat([xb for xb, _ in spec.batches([4, 0, 2], batch_size=2, workers=workers)])
        assert torch.equal(got, expected[[4, 0, 2]])
    assert torch.equal(spec.batch([1, 3]), expected[[1, 3]]) and torch.equal(spec.x, expected)


def test_n_on_a_class_sorted_folder_is_stratified_and_seeded(tmp_path):
    _class_sorted_folder(tmp_path / "f", sizes=(10, 10, 10))
    name = f"imagefolder:{tmp_path / 'f'}"
    a = load_dataset(name, DataRequest(n=6))
    assert a.sample == "stratified" and sorted(a.y.tolist()) == [0, 0, 1, 1, 2, 2]
    assert list(a.indices) == sorted(a.indices), "scanned in dataset order"
    assert load_dataset(name, DataRequest(n=6)).indices == a.indices, "same seed, same subset"
    others = {load_dataset(name, DataRequest(n=6, seed=s)).indices for s in range(1, 6)}
    assert len(others | {a.indices}) > 1, "the seed chooses the subset"
    first = load_dataset(name, DataRequest(n=6, sample="first"))
    assert first.y.tolist() == [0] * 6 and first.indices == tuple(range(6))
    # the chosen images are the ones at those dataset indices
    full = load_dataset(name)
    assert torch.equal(a.batch(slice(None)), full.batch(list(a.indices)))
    with pytest.raises(UsageError, match="--sample"):
        load_dataset(name, DataRequest(n=6, sample="random"))


def test_stratified_quotas_follow_class_sizes():
    y = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    chosen = select(y, 5, "stratified", seed=0)
    # 5·(5,3,2)/10 = (2.5, 1.5, 1): floors (2,1,1), the remaining one to the largest remainder
    # (a tie between classes 0 and 1 goes to the lower index)
    assert torch.bincount(y[chosen], minlength=3).tolist() == [3, 1, 1]
    assert select(y, 10, "stratified", 0) is None and select(y, None, "first", 0) is None
    assert select(y, 4, "first", 0).tolist() == [0, 1, 2, 3]


def test_builtin_datasets_keep_first_n(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 1, 4, 4), dtype=np.uint8)
    y = np.repeat(np.arange(4), 5)
    np.savez(tmp_path / "t.npz", x=x, y=y)
    spec = load_dataset(str(tmp_path / "t.npz"), DataRequest(n=6))
    assert spec.sample == "first" and spec.dataset_indices.tolist() == list(range(6)) and spec.images.dtype == torch.uint8
    strat = load_dataset(str(tmp_path / "t.npz"), DataRequest(n=8, sample="stratified"))
    assert torch.bincount(strat.y, minlength=4).tolist() == [2, 2, 2, 2]
    assert torch.equal(strat.x, torch.from_numpy(x[list(strat.indices)]).float() / 255)
    demo = load_dataset("demo", DataRequest(n=10))
    assert demo.dataset_indices.tolist() == list(range(10)) and demo.images.dtype == torch.uint8


def test_class_map_for_a_subset_of_the_models_classes(tmp_path):
    for wnid in ("n02", "n00"):
        for i in range(2):
            _save(tmp_path / "sub" / wnid / f"{i}.png", np.full((4, 4, 3), 10 * i, np.uint8))
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n00 tench, Tinca tinca\nn01 goldfish\nn02 great white shark\nn03 tiger shark\n")
    spec = load_dataset(f"imagefolder:{tmp_path / 'sub'}", DataRequest(class_map=str(mapping)))
    assert spec.y.tolist() == [0, 0, 2, 2] and spec.num_classes == 4
    assert spec.class_names == ("tench, Tinca tinca", "goldfish", "great white shark", "tiger shark")
    (tmp_path / "m.json").write_text(json.dumps({"n00": 7, "n02": 3}))
    js = load_dataset(f"imagefolder:{tmp_path / 'sub'}", DataRequest(class_map=str(tmp_path / "m.json")))
    assert js.y.tolist() == [7, 7, 3, 3] and js.num_classes == 8 and js.class_names[3] == "n02"
    (tmp_path / "short.json").write_text(json.dumps(["n00"]))
    with pytest.raises(DatasetError, match="not in the class map.*n02"):
        load_dataset(f"imagefolder:{tmp_path / 'sub'}", DataRequest(class_map=str(tmp_path / "short.json")))
    (tmp_path / "bad.json").write_text('{"n00": "zero"}')
    with pytest.raises(DatasetError, match="class map"):
        read_class_map(tmp_path / "bad.json")
    with pytest.raises(UsageError, match="imagefolder"):
        load_dataset("demo", DataRequest(class_map=str(mapping)))


# --class-map: one validator (folder.check_class_map) for every format ------------------------------

CLASS_MAP_FORMATS = {  # format → (write the map of these folders in this order, where the 1st and 3rd entries are)
    "JSON object": (
        lambda folders: (
            json.dumps({f: i for i, f in enumerate(folders)})
            if len(set(folders)) == len(folders)
            else "{" + ", ".join(f'"{f}": {i}' for i, f in enumerate(folders)) + "}"
        ),
        ("entry 1", "entry 3"),
    ),
    "JSON list": (lambda folders: json.dumps(list(folders)), ("position 0", "position 2")),
    "text": (lambda folders: "# synsets\n" + "\n".join(f"{f} name of {f}" for f in folders) + "\n", ("line 2", "line 4")),
}


def _two_class_folder(root):
    for wnid in ("n00", "n01"):
        _save(root / wnid / "0.png", np.zeros((4, 4, 3), np.uint8))
    return f"imagefolder:{root}"


@pytest.mark.parametrize("fmt", list(CLASS_MAP_FORMATS))
def test_class_map_formats_agree(tmp_path, fmt):
    """The same map in each format gives the same labels; the text format's readable names aside."""
    write, _ = CLASS_MAP_FORMATS[fmt]
    (tmp_path / "map").write_text(write(["n00", "x", "n01"]))
    spec = load_dataset(_two_class_folder(tmp_path / "f"), DataRequest(class_map=str(tmp_path / "map")))
    assert spec.y.tolist() == [0, 2] and spec.num_classes == 3


@pytest.mark.parametrize("fmt", list(CLASS_MAP_FORMATS))
def test_a_folder_listed_twice_is_refused_in_every_format(tmp_path, fmt):
    """Issue 21: a JSON list naming a folder twice silently gave one folder's images another index;
    the text format refused it. Every format now refuses, naming the folder and both places."""
    write, (first, third) = CLASS_MAP_FORMATS[fmt]
    (tmp_path / "map").write_text(write(["n00", "n01", "n00"]))
    with pytest.raises(DatasetError) as err:
        load_dataset(_two_class_folder(tmp_path / "f"), DataRequest(class_map=str(tmp_path / "map")))
    assert f"folder 'n00' is listed twice ({first} and {third}); keep one" in str(err.value)
    from robaudit.cli.demo import DEMO_MODEL

    res = CliRunner().invoke(
        app, ["scan", str(DEMO_MODEL), "-d", _two_class_folder(tmp_path / "f"), "--class-map", str(tmp_path / "map"), "-q"]
    )
    assert res.exit_code == 3 and res.stderr.count("\n") == 1 and "listed twice" in res.stderr, res.output


def test_two_folders_mapped_to_one_class_are_refused(tmp_path):
    """Issue 21: {a: 1, b: 1} lost one folder's name and left class 0 an empty "0". Only the JSON
    object can say it (a list and a text file give each folder its own position); the validator
    every format goes through refuses it, naming both folders."""
    from robaudit.data.folder import ClassMapEntry, check_class_map

    (tmp_path / "map.json").write_text(json.dumps({"n00": 1, "n01": 1}))
    with pytest.raises(DatasetError, match=r"folders 'n00' \(entry 1\) and 'n01' \(entry 2\) both map to class 1"):
        load_dataset(_two_class_folder(tmp_path / "f"), DataRequest(class_map=str(tmp_path / "map.json")))
    with pytest.raises(DatasetError, match="both map to class 4"):
        check_class_map([ClassMapEntry("a", 4, "a", "line 1"), ClassMapEntry("b", 4, "b", "line 2")], "m")
    for bad, fragment in (
        (ClassMapEntry("a/b", 0, "x", "line 1"), "not a folder name"),
        (ClassMapEntry("..", 0, "x", "line 1"), "not a folder name"),
        (ClassMapEntry("a", -1, "x", "entry 1"), "must be >= 0"),
    ):
        with pytest.raises(DatasetError, match=fragment):
            check_class_map([bad], "m")
    with pytest.raises(DatasetError, match="maps no class"):
        check_class_map([], "m")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ('{"n00": 0, "n01": ', "truncated"),
        (b"\xff\xfe[]", "not UTF-8"),
        ('{"n00": 1e999999}', "expected a JSON object"),
    ],
    ids=["deep", "truncated", "not UTF-8", "float index"],
)
def test_a_malformed_class_map_is_one_input_error(tmp_path, content, fragment):
    path = tmp_path / "map.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DatasetError, match=fragment) as err:
        read_class_map(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_resize_then_centre_crop_is_torchvisions(tmp_path):
    from torchvision.transforms import CenterCrop, Compose, Resize

    arr = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    _save(tmp_path / "r" / "k" / "a.png", arr)
    spec = load_dataset(f"imagefolder:{tmp_path / 'r'}", DataRequest(image_size=8, resize=12))
    ref = np.asarray(Compose([Resize(12), CenterCrop(8)])(Image.fromarray(arr)))
    assert spec.input_shape == (3, 8, 8)
    np.testing.assert_array_equal((spec.x[0] * 255).round().byte().numpy().transpose(1, 2, 0), ref)
    with pytest.raises(UsageError, match="--resize needs --image-size"):
        load_dataset(f"imagefolder:{tmp_path / 'r'}", DataRequest(resize=12))


def test_a_size_the_probe_missed_fails_at_read_time_with_one_line(tmp_path, monkeypatch):
    import robaudit.data.folder as folder

    monkeypatch.setattr(folder, "PROBE", 1)
    _save(tmp_path / "s" / "k" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _save(tmp_path / "s" / "k" / "b.png", np.zeros((9, 8, 3), np.uint8))
    spec = load_dataset(f"imagefolder:{tmp_path / 's'}")
    for workers in (0, 1):
        with pytest.raises(DatasetError) as err:
            list(spec.batches([0, 1], batch_size=2, workers=workers))
        assert "b.png is 8x9 but the folder's images are 8x8; pass --image-size N" in str(err.value)
        assert "\n" not in str(err.value)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_symlink_loop_is_an_input_error_not_a_hang(tmp_path):
    _save(tmp_path / "loop" / "cat" / "a.png", np.zeros((4, 4, 3), np.uint8))
    os.symlink(tmp_path / "loop", tmp_path / "loop" / "cat" / "up")  # cat/up → its grandparent
    t0 = time.perf_counter()
    with pytest.raises(DatasetError, match="symbolic link loop"):
        load_dataset(f"imagefolder:{tmp_path / 'loop'}")
    assert time.perf_counter() - t0 < 10
    demo_model = Path(__file__).resolve().parents[1] / "robaudit/models/assets/demo_fashion_mnist_small_cnn.safetensors"
    result = CliRunner().invoke(app, ["scan", str(demo_model), "--dataset", f"imagefolder:{tmp_path / 'loop'}"])
    assert result.exit_code == 3, result.output
    assert "symbolic link loop" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_links_to_files_and_folders_are_followed(tmp_path):
    _save(tmp_path / "store" / "x.png", np.full((4, 4, 3), 200, np.uint8))
    _save(tmp_path / "store" / "more" / "y.png", np.full((4, 4, 3), 100, np.uint8))
    (tmp_path / "ds" / "a").mkdir(parents=True)
    os.symlink(tmp_path / "store" / "x.png", tmp_path / "ds" / "a" / "x.png")
    os.symlink(tmp_path / "store" / "more", tmp_path / "ds" / "b")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "ds" / "a" / "gone.png")
    with pytest.raises(DatasetError, match="gone.png is a broken link"):
        load_dataset(f"imagefolder:{tmp_path / 'ds'}")
    (tmp_path / "ds" / "a" / "gone.png").unlink()
    spec = load_dataset(f"imagefolder:{tmp_path / 'ds'}")
    assert spec.y.tolist() == [0, 1] and spec.class_names == ("a", "b")
    assert spec.x[:, 0, 0, 0].tolist() == pytest.approx([200 / 255, 100 / 255])


def test_dataspec_keeps_the_x_interface():
    x, y = torch.rand(5, 1, 3, 3), torch.tensor([0, 1, 0, 1, 0])
    spec = DataSpec("t", "test", x, y, ("a", "b"), "memory")
    assert spec.x is x and spec.n == 5 and spec.input_shape == (1, 3, 3)
    from dataclasses import replace

    sub = replace(spec, x=x[:2], y=y[:2])
    assert sub.n == 2 and torch.equal(sub.x, x[:2])
    part = spec.subset([3, 1])
    assert part.indices == (3, 1) and torch.equal(part.x, x[[3, 1]])


def test_result_records_the_sample_and_its_indices(tmp_path):
    import robaudit

    _class_sorted_folder(tmp_path / "f", sizes=(4, 4), hw=(8, 8))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    r = robaudit.scan(net, f"imagefolder:{tmp_path / 'f'}", n=4, attacks="fgsm", checks="clean", eps=[0.1], device="cpu")
    prov = r.provenance
    assert prov.sample == "stratified" and len(prov.indices) == 4 and prov.n == 4
    assert sorted(r.section("clean").labels) == [0, 0, 1, 1]
    assert json.loads(r.to_json())["provenance"]["indices"] == list(prov.indices)


def test_compare_refuses_results_on_different_samples(tmp_path):
    import robaudit
    from robaudit.compare import comparability_problems

    _class_sorted_folder(tmp_path / "f", sizes=(6, 6), hw=(8, 8))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    kw = dict(n=4, attacks="fgsm", checks="clean", eps=[0.1], device="cpu")
    runs = {seed: robaudit.scan(net, f"imagefolder:{tmp_path / 'f'}", seed=seed, **kw) for seed in range(4)}
    assert comparability_problems(runs[0], robaudit.scan(net, f"imagefolder:{tmp_path / 'f'}", seed=0, **kw)) == []
    other = next(r for r in runs.values() if r.provenance.indices != runs[0].provenance.indices)
    problems = comparability_problems(runs[0], other)
    assert any("scanned samples (provenance.indices) are different" in p for p in problems)
