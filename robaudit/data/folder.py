"""``imagefolder:PATH``: a folder of class subfolders, read lazily through torchvision's ImageFolder.

Layout ``PATH/<class>/<image>`` or ``PATH/<split>/<class>/<image>``. Classes are the subfolder
names sorted (index = position, as torchvision does), or come from ``--class-map FILE`` when the
folder holds a subset of the model's classes (e.g. WordNet IDs → ImageNet indices). Files are
listed in torchvision's order (folders sorted by path, names sorted); only the list and the labels
are held in memory, each image is decoded when a batch needs it.

Symbolic links are followed (datasets are often assembled from links), but a directory link that
leads back to one of its own ancestors is a loop: the walk stops with one line naming it
(exit 3), where ``os.walk(followlinks=True)`` (torchvision's walk) would never end.

Pixels: 1 channel when every probed image (up to :data:`PROBE` spread over the folder) is
greyscale, else RGB; each image is converted to that mode. Without ``image_size`` every image must
have the probed images' size; with it, the short side is resized to ``resize`` (default
``image_size``; bilinear, PIL) and a centred ``image_size`` square is cropped (torchvision's
Resize + CenterCrop).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import DatasetError, DatasetNotFoundError, UsageError
from ._common import SPLITS
from .spec import DataRequest, DataSpec

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "read_class_map", "walk_images"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
PROBE = 32  # images whose mode and size decide the channels and check the size


def _split_root(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    others = [s for s in SPLITS if (root / s).is_dir()]
    if others:
        raise DatasetNotFoundError(f"{root} has no {split}/ subfolder (it has {', '.join(o + '/' for o in others)})")
    return root


def walk_images(top: Path) -> list[Path]:
    """Image files under ``top``, following symbolic links, in torchvision's order (directories
    sorted by path, files by name; names starting with '.' skipped). DatasetError on a directory
    link loop, a broken link to an image or an unreadable directory."""
    found: list[tuple[str, list[Path]]] = []

    def visit(d: Path, ancestors: frozenset) -> None:
        try:
            st = d.stat()
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                raise DatasetError(
                    f"symbolic link loop in the image folder: {d} leads back to {os.path.realpath(d)}, one of its "
                    f"own parents; remove the link (robaudit follows links, but not in circles)"
                )
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            raise DatasetError(f"{d} can't be listed ({type(exc).__name__}: {exc.strerror or exc})") from None
        files, subdirs = [], []
        for e in entries:
            if e.name.startswith("."):
                continue
            path = d / e.name
            if e.is_dir(follow_symlinks=True):
                subdirs.append(path)
            elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                if not e.is_file(follow_symlinks=True):
                    raise DatasetError(f"{path} is a broken link or not a file; remove it or fix its target")
                files.append(path)
        found.append((str(d), files))
        for sub in subdirs:
            visit(sub, ancestors | {key})

    visit(top, frozenset())
    return [f for _, files in sorted(found, key=lambda item: item[0]) for f in files]


def read_class_map(path: str | os.PathLike) -> tuple[dict[str, int], tuple[str, ...]]:
    """``--class-map FILE`` → ({folder name: model class index}, class names by index).

    Accepted: a JSON object ``{"n01440764": 0, ...}``, a JSON list of folder names (position =
    index), or a text file with one class per line, ``FOLDER [readable name]`` (line order =
    index, e.g. ImageNet's LOC_synset_mapping.txt; blank lines and lines starting with # skipped).
    Class names are the readable names where given, else the folder names (``str(i)`` for an index
    no folder maps to)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetNotFoundError(f"class map {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"class map {path} can't be read ({type(exc).__name__}: {exc})") from None
    readable: dict[int, str] = {}
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"class map {path} is not valid JSON ({exc})") from None
        if isinstance(obj, list) and all(isinstance(v, str) for v in obj):
            mapping = {name: i for i, name in enumerate(obj)}
        elif isinstance(obj, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in obj.values()):
            mapping = {str(k): int(v) for k, v in obj.items()}
        else:
            raise DatasetError(f"class map {path}: expected a JSON object {{folder: index}} or a list of folder names")
    else:
        mapping = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            folder, _, name = line.partition(" ")
            readable[len(mapping)] = name.strip() or folder
            if folder in mapping:
                raise DatasetError(f"class map {path}: folder {folder!r} is listed twice")
            mapping[folder] = len(mapping)
    if not mapping:
        raise DatasetError(f"class map {path} maps no class")
    if min(mapping.values()) < 0:
        raise DatasetError(f"class map {path}: class indices must be >= 0")
    k = max(mapping.values()) + 1
    names = [str(i) for i in range(k)]
    for folder, i in sorted(mapping.items(), key=lambda kv: kv[1], reverse=True):
        names[i] = folder
    for i, name in readable.items():
        names[i] = name
    return mapping, tuple(names)


def _open(path: str, mode: str | None = None) -> Any:
    from PIL import Image

    try:
        im = Image.open(path)
        if mode is not None:
            im = im.convert(mode)
        return im
    except Exception as exc:  # not an image, truncated, decompression bomb, ...
        raise DatasetError(f"{path} can't be read as an image ({type(exc).__name__}: {exc})") from None


def _folder_dataset_class():
    """torchvision's ImageFolder with robaudit's walk, class map and per-item errors (imported
    on first use: torchvision is heavy)."""
    from torchvision.datasets import ImageFolder

    class FolderImages(ImageFolder):
        """Item p: image p as float32 [C, H, W] in [0,1] (the label is in DataSpec.y)."""

        def __init__(self, root: Path, class_to_idx: dict[str, int], transform):
            self._class_to_idx = class_to_idx
            self.mode: str | None = None  # set by the probe, before the first item is read
            self.sample_shape: tuple[int, int, int] | None = None
            super().__init__(str(root), transform=transform, loader=self._load)

        def find_classes(self, directory):
            return sorted(self._class_to_idx), dict(self._class_to_idx)

        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return [(str(p), class_to_idx[cls]) for cls in sorted(class_to_idx)
                    for p in walk_images(Path(directory) / cls)]

        def _load(self, path: str):
            return _open(path, self.mode)

        def __getitem__(self, p: int) -> torch.Tensor:
            path, _ = self.samples[p]
            img = self.transform(self.loader(path))
            if tuple(img.shape) != tuple(self.sample_shape):
                raise DatasetError(
                    f"{path} is {img.shape[2]}x{img.shape[1]} but the folder's images are "
                    f"{self.sample_shape[2]}x{self.sample_shape[1]}; pass --image-size N"
                )
            return img

    return FolderImages


def _to_unit(img) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img).to(torch.float32).div_(255.0)


def _transform(image_size: int | None, resize: int | None):
    from torchvision.transforms import CenterCrop, Compose, Resize

    steps = []
    if image_size is not None:
        steps += [Resize(resize or image_size), CenterCrop(image_size)]
    return Compose([*steps, _to_unit])


def _classes(root: Path, class_map: str | None) -> tuple[dict[str, int], tuple[str, ...]]:
    try:
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=True) and not e.name.startswith("."))
    except OSError as exc:
        raise DatasetError(f"{root} can't be listed ({type(exc).__name__}: {exc.strerror or exc})") from None
    if class_map is None:
        return {f: i for i, f in enumerate(folders)}, tuple(folders)
    mapping, names = read_class_map(class_map)
    unknown = [f for f in folders if f not in mapping]
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DatasetError(f"{len(unknown)} class folder(s) of {root} are not in the class map {class_map}: {shown}")
    return {f: mapping[f] for f in folders}, names


def load_image_folder(path: str | os.PathLike, request: DataRequest, name: str | None = None) -> DataSpec:
    """``PATH/<class>/<image>`` (or ``PATH/<split>/<class>/<image>``) → a lazy DataSpec (all
    samples; ``load_dataset`` chooses the ``--n`` subset)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} not found")
    if request.resize is not None and request.image_size is None:
        raise UsageError("--resize needs --image-size (the centre crop taken after resizing)")
    if request.resize is not None and request.resize < request.image_size:
        raise UsageError(f"--resize {request.resize} is smaller than --image-size {request.image_size}")
    root = _split_root(root, request.split)
    class_to_idx, class_names = _classes(root, request.class_map)
    images = _folder_dataset_class()(root, class_to_idx, _transform(request.image_size, request.resize))
    files = images.samples
    if not files:
        raise DatasetNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class subfolders of {root}; "
            f"expected {root}/<class>/<image>"
        )
    probe = sorted({int(i) for i in torch.linspace(0, len(files) - 1, min(PROBE, len(files))).round().tolist()})
    headers = []
    for i in probe:
        with _open(files[i][0]) as im:
            headers.append((im.mode, im.size))
    mode = "L" if all(m in _GRAY_MODES for m, _ in headers) else "RGB"
    channels = 1 if mode == "L" else 3
    if request.image_size is None:
        w, h = headers[0][1]
        odd = next((j for j, (_, s) in enumerate(headers) if s != (w, h)), None)
        if odd is not None:
            a, b = Path(files[probe[0]][0]), Path(files[probe[odd]][0])
            raise DatasetError(
                f"images in {root} have different sizes (e.g. {a.relative_to(root)} {w}x{h}, "
                f"{b.relative_to(root)} {headers[odd][1][0]}x{headers[odd][1][1]}); pass --image-size N"
            )
        shape = (channels, h, w)
    else:
        shape = (channels, request.image_size, request.image_size)
    images.mode, images.sample_shape = mode, shape
    labels = torch.tensor([c for _, c in images.samples], dtype=torch.long)
    return DataSpec(
        name=name or f"imagefolder:{path}",
        split=request.split,
        images=images,
        y=labels,
        class_names=class_names,
        source=str(root),
        extra={"class_map": str(request.class_map)} if request.class_map else {},
    )
