"""One image file → pixels in [0,1]: the decoder of ``imagefolder:`` for every Pillow mode.

Each file is opened with Pillow (its header only, with the decompression-bomb check), its
*layout* read — greyscale or colour, bits per sample — and decoded by what the file holds:

* **8-bit and lower** (``1``, ``L``, ``LA``, ``P``, ``PA``, ``RGB``, ``RGBA``, ``RGBX``, ``CMYK``,
  ``YCbCr``, ``HSV``, ``LAB``; 1/2/4-bit PNGs, which Pillow scales to 8 bits): Pillow converts it
  to ``L`` or ``RGB`` (its colour conversions: CMYK (255−C)(255−K)/255, JFIF YCbCr, HSV; CIELAB →
  sRGB through LittleCMS, unoptimized (``convert`` is off by up to 20 levels); ITU-R 601 luma ``L = 0.299 R + 0.587 G + 0.114 B`` for a colour image in
  a greyscale folder), and the uint8 values are divided by 255 — torchvision's ImageFolder
  pipeline, so the published weights' preprocessing is reproduced exactly.
* **16-bit PNG** (greyscale, grey + alpha, RGB, RGBA): decoded by ``torchvision.io.decode_png``
  as uint16 and divided by 65535 (Pillow keeps only the high byte of 16-bit colour PNGs and, in
  its ``L`` conversion, clips 16-bit grey at 255 — the all-white image of issue 21).
* **16-bit integer modes** of other files (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and ``I``
  stored as unsigned 16-bit): divided by 65535.
* **Refused** (exit 3, one line naming the file and what to do), because no [0,1] scale follows
  from the file: 32-bit or signed integer pixels (``I`` stored as ``I;32S``, ``I;16S``, …), and
  floating-point pixels (``F``) outside [0,1] or not finite. ``F`` within [0,1] is taken as is.

**Alpha is dropped** (the colour channels as stored, not composited over a background): what
torchvision's loaders do (``convert("RGB")``, ``ImageReadMode.RGB``).

High-bit images stay float32 through the resize and crop (each channel a Pillow ``F`` image,
resized with the same bilinear filter), so no precision is lost to an 8-bit intermediate.
"""

from __future__ import annotations

import functools
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError

__all__ = ["Layout", "open_image", "image_layout", "decode_image", "decode_opened", "to_tensor", "resize_crop", "LUMA"]

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, Pillow's RGB → L
_GREY_MODES = {"1", "L", "LA", "I", "F"}  # + every I;16 variant
_COLOUR_MODES = {"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV", "LAB"}
_UINT16_RAW = re.compile(r"^I;16[BLN]?$")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Layout:
    """What a file holds: ``grey`` (one colour channel, alpha aside) and ``bits`` per sample
    (8 for everything Pillow decodes to 8 bits; 16 for the uint16 sources; 32 for float ``F``)."""

    grey: bool
    bits: int
    png16: bool = False  # a 16-bit PNG, decoded by torchvision


def open_image(path: str) -> Any:
    """``PIL.Image.open`` (lazy: the header; the decompression-bomb check); DatasetError otherwise."""
    from PIL import Image

    try:
        return Image.open(path)
    except Exception as exc:  # not an image, truncated header, decompression bomb, vanished file, ...
        raise DatasetError(f"{path} can't be read as an image ({type(exc).__name__}: {exc})") from None


def _png_header(im: Any) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG's IHDR, read from the open file; None for other formats."""
    if im.format != "PNG":
        return None
    fp = getattr(im, "fp", None)
    if fp is None:
        return None
    where = fp.tell()
    try:
        fp.seek(0)
        head = fp.read(26)
    finally:
        fp.seek(where)
    if len(head) < 26 or not head.startswith(_PNG_MAGIC) or head[12:16] != b"IHDR":
        return None
    depth, colour = struct.unpack(">BB", head[24:26])
    return depth, colour


def image_layout(path: str, im: Any) -> Layout:
    """The layout of the opened (not yet loaded) image ``im``: what the channel decision of a folder
    and :func:`decode_image` both go by. DatasetError for a mode robaudit does not know."""
    png = _png_header(im)
    if png is not None and png[0] == 16:
        return Layout(grey=png[1] in (0, 4), bits=16, png16=True)  # 0 grey, 4 grey+alpha, 2 RGB, 6 RGBA
    mode = im.mode
    if mode.startswith("I;16"):
        return Layout(grey=True, bits=16)
    if mode == "I":
        return Layout(grey=True, bits=16 if _UINT16_RAW.match(_rawmode(im)) else 32)
    if mode == "F":
        return Layout(grey=True, bits=32)
    if mode in _GREY_MODES:
        return Layout(grey=True, bits=8)
    if mode in _COLOUR_MODES:
        return Layout(grey=False, bits=8)
    raise DatasetError(
        f"{path} has the Pillow image mode {mode!r}, which robaudit can't map to [0,1] pixels; "
        f"save it as 8- or 16-bit greyscale or RGB (PNG)"
    )


def _rawmode(im: Any) -> str:
    """How the file stores its samples (Pillow's raw mode of the first tile: ``I;16B``, ``I;32S``);
    "" once the image is loaded or when the decoder takes no raw mode."""
    tile = getattr(im, "tile", None) or []
    args = tile[0][3] if tile and len(tile[0]) > 3 else ""
    return str(args[0] if isinstance(args, tuple) and args else args)


def decode_image(path: str, channels: int) -> Any:
    """The image at ``path`` with ``channels`` (1 or 3) channels: a Pillow ``L``/``RGB`` image for
    8-bit sources, else a float32 tensor ``[channels, H, W]`` in [0,1] (see the module docstring).
    Every failure is a DatasetError naming the file."""
    with open_image(path) as im:
        return decode_opened(im, path, channels)


def decode_opened(im: Any, path: str, channels: int) -> Any:
    """:func:`decode_image` of an image already opened (not yet loaded) with Pillow."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. Pillow's note on palette transparency: alpha is dropped anyway
            layout = image_layout(path, im)
            if layout.png16:
                return _match_channels(_png16(path), channels)
            if layout.bits > 8:
                return _match_channels(_high_bit(path, im), channels)
            return _eight_bit(im, layout, channels)
    except DatasetError:
        raise
    except Exception as exc:  # truncated data, decoder errors, a file removed while it is read, ...
        raise DatasetError(f"{path} can't be read as an image ({type(exc).__name__}: {str(exc).strip()[:200]})") from None


def _eight_bit(im: Any, layout: Layout, channels: int) -> Any:
    """Pillow's conversion to L or RGB (alpha dropped), then to the folder's channel count."""
    if im.mode == "LAB":
        im = _lab_to_srgb(im)
    elif im.mode not in ("L", "RGB"):
        im = im.convert("L" if layout.grey else "RGB")
    if channels == 1 and im.mode == "RGB":
        return im.convert("L")
    if channels == 3 and im.mode == "L":
        return im.convert("RGB")
    return im.copy()  # loaded, and independent of the file the caller closes


@functools.lru_cache(maxsize=1)
def _lab_transform() -> Any:
    from PIL import ImageCms

    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB", flags=ImageCms.Flags.NOOPTIMIZE
    )


def _lab_to_srgb(im: Any) -> Any:
    """CIELAB (D50) → sRGB through LittleCMS without its 8-bit lookup-table optimization, which
    ``convert("RGB")`` uses and which is off by up to 20 levels (measured on 3,600 in-gamut
    colours; unoptimized: within 0.5 level of CIE's formula)."""
    from PIL import ImageCms

    return ImageCms.applyTransform(im, _lab_transform())


def _png16(path: str) -> torch.Tensor:
    """A 16-bit PNG as float32 [C, H, W] in [0,1], alpha dropped (torchvision's libpng decoder)."""
    from torchvision.io import ImageReadMode, decode_png, read_file

    raw = decode_png(read_file(path), ImageReadMode.UNCHANGED)
    if raw.dtype != torch.uint16:
        raise DatasetError(f"{path}: its header says 16 bits per sample but it decoded as {raw.dtype}")
    keep = 1 if raw.shape[0] in (1, 2) else 3  # grey (+alpha) or RGB (+alpha)
    return raw[:keep].to(torch.float32).div_(65535.0)


def _high_bit(path: str, im: Any) -> torch.Tensor:
    """``I;16*``, ``I`` and ``F`` images as float32 [1, H, W] in [0,1], or a refusal naming why."""
    rawmode = _rawmode(im)
    arr = np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and _UINT16_RAW.match(rawmode)):
        values = arr.astype(np.float32)
        lo, hi = float(values.min(initial=0)), float(values.max(initial=0))
        if lo < 0 or hi > 65535:
            raise DatasetError(f"{path}: 16-bit pixels from {lo:g} to {hi:g} are outside 0..65535; save it as unsigned 16-bit")
        return torch.from_numpy(values / np.float32(65535.0)).unsqueeze(0)
    if im.mode == "I":
        lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
        stored = rawmode or "32-bit integers"
        raise DatasetError(
            f"{path} holds integer pixels stored as {stored} (values {lo}..{hi}), which have no standard [0,1] "
            f"scale; save it as 8- or 16-bit unsigned (PNG or TIFF), or as 32-bit float already in [0,1]"
        )
    values = arr.astype(np.float32)  # F
    finite = np.isfinite(values)
    lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (float("nan"),) * 2
    if not finite.all() or lo < 0 or hi > 1:
        what = "not finite (NaN or infinity)" if not finite.all() else f"from {lo:g} to {hi:g}, outside [0,1]"
        raise DatasetError(
            f"{path} holds floating-point pixels {what}; robaudit does not guess their scale: rescale the image "
            f"to [0,1] (or save it as 8- or 16-bit)"
        )
    return torch.from_numpy(values).unsqueeze(0)


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """[1|3, H, W] → [channels, H, W]: grey repeated, or colour to ITU-R 601 luma."""
    if x.shape[0] == channels:
        return x
    if channels == 3:
        return x.expand(3, -1, -1).contiguous()
    weights = torch.tensor(LUMA, dtype=x.dtype).view(3, 1, 1)
    return (x * weights).sum(0, keepdim=True)


def to_tensor(img: Any) -> torch.Tensor:
    """A decoded image (Pillow L/RGB, or a float tensor) as float32 [C, H, W] in [0,1]."""
    if isinstance(img, torch.Tensor):
        return img.to(torch.float32)
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img).to(torch.float32).div_(255.0)


def resize_crop(img: Any, image_size: int, resize: int | None) -> Any:
    """torchvision's ``Resize(resize or image_size)`` (bilinear, Pillow) + ``CenterCrop(image_size)``;
    a float tensor is resized channel by channel as Pillow ``F`` images (no 8-bit rounding)."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    def one(pil):
        return TF.center_crop(TF.resize(pil, resize or image_size), image_size)

    if not isinstance(img, torch.Tensor):
        return one(img)
    planes = [np.asarray(one(Image.fromarray(plane.numpy())), dtype=np.float32) for plane in img]
    return torch.from_numpy(np.stack(planes)).clamp_(0.0, 1.0)
