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
greyscale, else RGB; each image is decoded to that many channels in [0,1] by
:func:`robaudit.data.images.decode_image` (every Pillow mode, 16-bit images by their real range,
alpha dropped), which shares its grey-or-colour judgement (:func:`~robaudit.data.images.image_layout`)
with the probe. Without ``image_size`` every image must have the probed images' size; with it, the
short side is resized to ``resize`` (default ``image_size``; bilinear, PIL) and a centred
``image_size`` square is cropped (torchvision's Resize + CenterCrop).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import DatasetError, DatasetNotFoundError, InputError, UsageError
from ._common import SPLITS
from .images import decode_image, image_layout, open_image, resize_crop, to_tensor
from .spec import DataRequest, DataSpec

__all__ = ["IMAGE_EXTENSIONS", "ClassMapEntry", "check_class_map", "load_image_folder", "read_class_map", "walk_images"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
PROBE = 32  # images whose layout (grey or colour) and size decide the channels and check the size


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


MAX_CLASS_MAP_BYTES = 64 << 20  # ImageNet-21k's 21,843 synsets take < 1 MB


def read_class_map(path: str | os.PathLike) -> tuple[dict[str, int], tuple[str, ...]]:
    """``--class-map FILE`` → ({folder name: model class index}, class names by index).

    Accepted: a JSON object ``{"n01440764": 0, ...}``, a JSON list of folder names (position =
    index), or a text file with one class per line, ``FOLDER [readable name]`` (line order =
    index, e.g. ImageNet's LOC_synset_mapping.txt; blank lines and lines starting with # skipped).
    Every format is parsed into the same entries and checked by :func:`check_class_map`. Class
    names are the readable names where given, else the folder names (``str(i)`` for an index no
    folder maps to)."""
    from ..jsonio import Pairs, parse_json, read_bytes

    path = Path(path).expanduser()
    try:
        raw = read_bytes(path, "class map", max_bytes=MAX_CLASS_MAP_BYTES)
    except InputError as exc:
        raise (DatasetNotFoundError if not path.exists() else DatasetError)(str(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"class map {path} is not UTF-8 text (byte {exc.start})") from None
    if text.lstrip().startswith(("{", "[")):
        try:
            obj = parse_json(text, f"class map {path}", keep_pairs=True)
        except InputError as exc:
            raise DatasetError(str(exc)) from None
        if isinstance(obj, Pairs) and all(isinstance(v, int) and not isinstance(v, bool) for _, v in obj):
            entries = [ClassMapEntry(k, int(v), k, f"entry {i + 1}") for i, (k, v) in enumerate(obj)]
        elif isinstance(obj, list) and not isinstance(obj, Pairs) and all(isinstance(v, str) for v in obj):
            entries = [ClassMapEntry(name, i, name, f"position {i}") for i, name in enumerate(obj)]
        else:
            raise DatasetError(f"class map {path}: expected a JSON object {{folder: index}} or a list of folder names")
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            folder, _, name = line.partition(" ")
            entries.append(ClassMapEntry(folder, len(entries), name.strip() or folder, f"line {number}"))
    return check_class_map(entries, f"class map {path}")


class ClassMapEntry(NamedTuple):
    """One class of a class map: its folder, the model's class index, the readable name, and where
    in the file it was given (``line 3``, ``position 2``, ``key "n01"``) for error messages."""

    folder: str
    index: int  # type: ignore[assignment]  # the class index; shadows tuple.index, which nothing calls on an entry
    name: str
    where: str


def check_class_map(entries: list[ClassMapEntry], source: str) -> tuple[dict[str, int], tuple[str, ...]]:
    """The one validator of every class-map format: DatasetError (exit 3) naming the entries when a
    folder is listed twice, two folders map to one class index, an index is negative or a folder
    name is empty or holds a path separator. Returns ({folder: index}, names by index)."""
    if not entries:
        raise DatasetError(f"{source} maps no class")
    by_folder: dict[str, ClassMapEntry] = {}
    by_index: dict[int, ClassMapEntry] = {}
    for e in entries:
        if not e.folder or "/" in e.folder or "\\" in e.folder or e.folder in (".", ".."):
            raise DatasetError(f"{source}: {e.where} names the folder {e.folder!r}, which is not a folder name")
        if e.index < 0:
            raise DatasetError(f"{source}: {e.where} maps {e.folder!r} to class {e.index}; class indices must be >= 0")
        if e.folder in by_folder:
            raise DatasetError(
                f"{source}: folder {e.folder!r} is listed twice ({by_folder[e.folder].where} and {e.where}); keep one"
            )
        if e.index in by_index:
            other = by_index[e.index]
            raise DatasetError(
                f"{source}: folders {other.folder!r} ({other.where}) and {e.folder!r} ({e.where}) both "
                f"map to class {e.index}; map each folder to its own class (merge the folders' images "
                f"into one folder if they are one class)"
            )
        by_folder[e.folder], by_index[e.index] = e, e
    names = [str(i) for i in range(max(by_index) + 1)]
    for e in entries:
        names[e.index] = e.name
    return {e.folder: e.index for e in entries}, tuple(names)


def _folder_dataset_class():
    """torchvision's ImageFolder with robaudit's walk, class map and per-item errors (imported
    on first use: torchvision is heavy)."""
    from torchvision.datasets import ImageFolder

    class FolderImages(ImageFolder):
        """Item p: image p as float32 [C, H, W] in [0,1] (the label is in DataSpec.y)."""

        def __init__(self, root: Path, class_to_idx: dict[str, int], transform):
            self._class_to_idx = class_to_idx
            self.channels: int | None = None  # set by the probe, before the first item is read
            self.sample_shape: tuple[int, int, int] | None = None
            super().__init__(str(root), transform=transform, loader=self._load)

        def find_classes(self, directory):
            return sorted(self._class_to_idx), dict(self._class_to_idx)

        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return [(str(p), class_to_idx[cls]) for cls in sorted(class_to_idx) for p in walk_images(Path(directory) / cls)]

        def _load(self, path: str):
            assert self.channels is not None  # the probe sets it before the first item is read
            return decode_image(path, self.channels)

        def __getitem__(self, p: int) -> torch.Tensor:
            path, _ = self.samples[p]
            img = self.transform(self.loader(path))
            assert self.sample_shape is not None  # the probe sets it before the first item is read
            if tuple(img.shape) != tuple(self.sample_shape):
                raise DatasetError(
                    f"{path} is {img.shape[2]}x{img.shape[1]} but the folder's images are "
                    f"{self.sample_shape[2]}x{self.sample_shape[1]}; pass --image-size N"
                )
            return img

    return FolderImages


class _Pixels:
    """A decoded image → float32 [C, H, W] in [0,1], resized and centre-cropped when asked
    (:func:`~robaudit.data.images.resize_crop`); picklable for DataLoader workers."""

    def __init__(self, image_size: int | None, resize: int | None) -> None:
        self.image_size, self.resize = image_size, resize

    def __call__(self, img: Any) -> torch.Tensor:
        if self.image_size is not None:
            img = resize_crop(img, self.image_size, self.resize)
        return to_tensor(img)


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
    if request.resize is not None and request.image_size is not None and request.resize < request.image_size:
        raise UsageError(f"--resize {request.resize} is smaller than --image-size {request.image_size}")
    root = _split_root(root, request.split)
    class_to_idx, class_names = _classes(root, request.class_map)
    images = _folder_dataset_class()(root, class_to_idx, _Pixels(request.image_size, request.resize))
    files = images.samples
    if not files:
        raise DatasetNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class subfolders of {root}; expected {root}/<class>/<image>"
        )
    probe = sorted({int(i) for i in torch.linspace(0, len(files) - 1, min(PROBE, len(files))).round().tolist()})
    headers = []
    for i in probe:
        with open_image(files[i][0]) as im:
            headers.append((image_layout(files[i][0], im).grey, im.size))
    channels = 1 if all(grey for grey, _ in headers) else 3  # the decoder converts every image to this
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
    images.channels, images.sample_shape = channels, shape
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
