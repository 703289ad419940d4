"""Every Pillow mode an image folder can hold, decoded to [0,1] against a reference conversion
computed with numpy from the raw pixel values written into the file (issue 21: a 16-bit PNG read
as all-white). Small files in a tmp folder; modes no file format writes (``HSV``, ``I;16N``)
are decoded from an in-memory image by the same function.

Tolerances: exact (float32 rounding) where the decoder only scales integers (1, L, LA, P, RGB,
RGBA, the 16-bit modes, F); 1/255 where Pillow converts colours in 8-bit fixed point (luma,
CMYK, YCbCr, HSV, palette → L: the reference is the same formula in floating point, rounded);
1/255 for CIELAB too: robaudit converts it through LittleCMS without the 8-bit lookup table
Pillow's ``convert`` uses (off by up to 20/255), and the reference is CIE's formula with
Lindbloom's Bradford-adapted sRGB matrix.
"""

from __future__ import annotations

import colorsys
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from robaudit.data import DataRequest, load_dataset
from robaudit.data.images import decode_image, decode_opened, image_layout, open_image, resize_crop, to_tensor
from robaudit.errors import DatasetError

RNG = np.random.default_rng(21)
H, W = 5, 6
LUMA = np.array([0.299, 0.587, 0.114])


def png_file(path: Path, values: np.ndarray, colour_type: int, bit_depth: int = 16) -> Path:
    """A PNG written byte by byte (Pillow can't write 16-bit colour): ``values`` [H, W(, C)] as
    stored, colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
    h, w = values.shape[:2]
    if bit_depth >= 8:
        rows = values.astype(">u2" if bit_depth == 16 else "u1").reshape(h, -1)
        raw = b"".join(b"\x00" + r.tobytes() for r in rows)
    else:  # 1/2/4 bits per sample, packed
        bits = np.unpackbits(values.astype(np.uint8)[:, :, None], axis=2)[:, :, 8 - bit_depth :].reshape(h, -1)
        raw = b"".join(b"\x00" + np.packbits(r).tobytes() for r in bits)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def u8(*shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def u16(*shape):
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def chw(a: np.ndarray) -> np.ndarray:
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def luma(rgb: np.ndarray) -> np.ndarray:
    """[3, H, W] → [1, H, W], ITU-R 601-2."""
    return np.tensordot(LUMA, rgb, axes=1)[None]


def lab_to_srgb(lab8: np.ndarray) -> np.ndarray:
    """Pillow's LAB bytes (L* = L·100/255, a*, b* as signed bytes) → sRGB in [0,1]: CIE's
    Lab → XYZ (D50), Lindbloom's Bradford-adapted XYZ(D50) → linear sRGB matrix, sRGB's curve."""
    L = lab8[..., 0] * 100.0 / 255.0
    a, b = lab8[..., 1].view(np.int8).astype(float), lab8[..., 2].view(np.int8).astype(float)
    fy = (L + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200
    eps, kappa = 216 / 24389, 24389 / 27

    def finv(f):
        return np.where(f**3 > eps, f**3, (116 * f - 16) / kappa)

    xyz = np.stack([finv(fx) * 0.96422, np.where(L > kappa * eps, fy**3, L / kappa), finv(fz) * 0.82521], -1)
    m = np.array([[3.1338561, -1.6168667, -0.4906146], [-0.9787684, 1.9161415, 0.0334540], [0.0719453, -0.2289914, 1.4052427]])
    lin = np.clip(xyz @ m.T, 0, 1)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return chw(srgb)


def pil_file(path: Path, im: Image.Image) -> Path:
    im.save(path)
    return path


# name → (make(tmp) → path or in-memory image, channels the file holds, reference [C, H, W] in [0,1], tolerance)
def _cases():
    c = {}
    bits = RNG.integers(0, 2, (H, W)).astype(bool)
    c["1 (PNG)"] = (lambda t: pil_file(t / "one.png", Image.fromarray(bits)), 1, chw(bits.astype(float)), 0)
    grey = u8(H, W)
    c["L (PNG)"] = (lambda t: pil_file(t / "l.png", Image.fromarray(grey)), 1, chw(grey / 255), 0)
    la = u8(H, W, 2)
    c["LA (PNG), alpha dropped"] = (lambda t: pil_file(t / "la.png", Image.fromarray(la, "LA")), 1, chw(la[..., 0] / 255), 0)
    idx, palette = RNG.integers(0, 16, (H, W)).astype(np.uint8), u8(16, 3)

    def p_image():
        im = Image.fromarray(idx, "P")
        im.putpalette(palette.reshape(-1).tolist())
        return im

    c["P (PNG)"] = (lambda t: pil_file(t / "p.png", p_image()), 3, chw(palette[idx] / 255), 0)
    c["PA (TIFF), alpha dropped"] = (lambda t: pil_file(t / "pa.tif", p_image().convert("PA")), 3, chw(palette[idx] / 255), 0)
    g16 = u16(H, W)
    c["I;16 (PNG written by Pillow: the issue's row)"] = (
        lambda t: pil_file(t / "i16.png", Image.fromarray(g16)),
        1,
        chw(g16 / 65535),
        0,
    )
    c["I;16 (TIFF)"] = (lambda t: pil_file(t / "i16.tif", Image.fromarray(g16)), 1, chw(g16 / 65535), 0)
    c["I;16B (TIFF)"] = (
        lambda t: pil_file(t / "i16b.tif", Image.frombytes("I;16B", (W, H), g16.astype(">u2").tobytes())),
        1,
        chw(g16 / 65535),
        0,
    )
    c["I;16L (TIFF)"] = (
        lambda t: pil_file(t / "i16l.tif", Image.frombytes("I;16L", (W, H), g16.astype("<u2").tobytes())),
        1,
        chw(g16 / 65535),
        0,
    )
    c["I;16N (in memory)"] = (lambda t: Image.frombytes("I;16N", (W, H), g16.astype("=u2").tobytes()), 1, chw(g16 / 65535), 0)
    f32 = RNG.random((H, W), dtype=np.float32)
    c["F in [0,1] (TIFF)"] = (lambda t: pil_file(t / "f.tif", Image.fromarray(f32)), 1, chw(f32.astype(float)), 0)
    rgb = u8(H, W, 3)
    c["RGB (PNG)"] = (lambda t: pil_file(t / "rgb.png", Image.fromarray(rgb)), 3, chw(rgb / 255), 0)
    rgba = u8(H, W, 4)
    c["RGBA (PNG), alpha dropped"] = (
        lambda t: pil_file(t / "rgba.png", Image.fromarray(rgba, "RGBA")),
        3,
        chw(rgba[..., :3] / 255),
        0,
    )
    cmyk = u8(H, W, 4)
    c["CMYK (TIFF)"] = (
        lambda t: pil_file(t / "cmyk.tif", Image.fromarray(cmyk, "CMYK")),
        3,
        chw((255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255**2),
        1 / 255,
    )
    ycc = u8(H, W, 3)
    y, cb, cr = (ycc[..., i].astype(float) for i in range(3))
    ycc_rgb = np.clip(
        np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], -1),
        0,
        255,
    )
    c["YCbCr (TIFF)"] = (
        lambda t: pil_file(t / "ycc.tif", Image.frombytes("YCbCr", (W, H), ycc.tobytes())),
        3,
        chw(np.round(ycc_rgb) / 255),
        1 / 255,
    )
    hsv = u8(H, W, 3)
    hsv_rgb = np.array([[colorsys.hsv_to_rgb(*(hsv[i, j] / 255)) for j in range(W)] for i in range(H)])
    c["HSV (in memory)"] = (lambda t: Image.frombytes("HSV", (W, H), hsv.tobytes()), 3, chw(hsv_rgb), 1 / 255)
    lab = RNG.integers(100, 231, (H, W, 3)).astype(np.uint8)  # L* 39..90 and |a*|, |b*| < 25: inside sRGB's gamut
    lab[..., 1:] = RNG.integers(-24, 25, (H, W, 2)).astype(np.int8).view(np.uint8)
    c["LAB (TIFF)"] = (
        lambda t: pil_file(t / "lab.tif", Image.frombytes("LAB", (W, H), lab.tobytes())),
        3,
        lab_to_srgb(lab),
        1 / 255,
    )
    for depth in (2, 4):
        low = RNG.integers(0, 2**depth, (H, W))
        c[f"{depth}-bit grey PNG"] = (
            lambda t, low=low, depth=depth: png_file(t / f"g{depth}.png", low, 0, depth),
            1,
            chw(low / (2**depth - 1)),
            0,
        )
    for name, colour, channels, keep in (("grey", 0, 1, 1), ("grey + alpha", 4, 2, 1), ("RGB", 2, 3, 3), ("RGBA", 6, 4, 3)):
        v = u16(H, W, channels)[..., :channels] if channels > 1 else u16(H, W)
        ref = chw(v / 65535)[:keep]
        c[f"16-bit {name} PNG"] = (lambda t, v=v, colour=colour: png_file(t / f"png16-{colour}.png", v, colour), keep, ref, 0)
    return c


CASES = _cases()


def _decode(make, tmp_path, channels):
    made = make(tmp_path)
    if isinstance(made, Image.Image):
        return to_tensor(decode_opened(made, "in-memory", channels)), made
    with open_image(str(made)) as im:
        grey = image_layout(str(made), im).grey
    return to_tensor(decode_image(str(made), channels)), grey


@pytest.mark.parametrize("name", list(CASES))
def test_every_mode_decodes_to_the_reference(name, tmp_path):
    make, holds, ref, tol = CASES[name]
    x, _ = _decode(make, tmp_path, holds)
    assert x.dtype == torch.float32 and tuple(x.shape) == ref.shape
    np.testing.assert_allclose(x.numpy(), ref, atol=tol + 1e-6, rtol=0)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


@pytest.mark.parametrize("name", list(CASES))
def test_the_other_channel_count_is_luma_or_repeated_grey(name, tmp_path):
    """A colour image in a greyscale folder is ITU-R 601 luma; a grey one in a colour folder is repeated."""
    make, holds, ref, tol = CASES[name]
    other = 1 if holds == 3 else 3
    x, _ = _decode(make, tmp_path, other)
    expected = luma(ref) if other == 1 else np.repeat(ref, 3, 0)
    np.testing.assert_allclose(x.numpy(), expected, atol=tol + 1e-6 + 1.01 / 255 * (other == 1), rtol=0)


@pytest.mark.parametrize("name", [n for n in CASES if "in memory" not in n])
def test_the_folder_channel_decision_agrees_with_the_decoder(name, tmp_path):
    """A folder of one such file: the probe's channel count is what the file holds, and the
    folder's pixels are the reference (the scan reads what the decoder makes)."""
    make, holds, ref, tol = CASES[name]
    path = make(tmp_path)
    (tmp_path / "folder" / "k").mkdir(parents=True)
    path.rename(tmp_path / "folder" / "k" / path.name)
    spec = load_dataset(f"imagefolder:{tmp_path / 'folder'}", DataRequest())
    assert spec.input_shape == (holds, H, W)
    np.testing.assert_allclose(spec.x[0].numpy(), ref, atol=tol + 1e-6, rtol=0)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda t: Image.fromarray(np.full((H, W), 70000, np.int32)), "no standard [0,1] scale"),  # I, 32-bit
        (lambda t: Image.fromarray(np.full((H, W), -5, np.int32)), "no standard [0,1] scale"),  # I, negative
        (lambda t: Image.fromarray(np.full((H, W), 7.5, np.float32)), "from 7.5 to 7.5, outside [0,1]"),
        (lambda t: Image.fromarray(np.full((H, W), -0.5, np.float32)), "outside [0,1]"),
        (lambda t: Image.fromarray(np.full((H, W), np.nan, np.float32)), "not finite"),
    ],
    ids=["I 32-bit", "I negative", "F above 1", "F below 0", "F NaN"],
)
def test_pixels_without_an_unambiguous_scale_are_refused_naming_the_file(make, fragment, tmp_path):
    path = tmp_path / "bad.tif"
    make(tmp_path).save(path)
    with pytest.raises(DatasetError) as err:
        decode_image(str(path), 1)
    message = str(err.value)
    assert str(path) in message and fragment in message and "\n" not in message
    assert "save it as" in message or "rescale" in message  # what to do


def test_a_16_bit_folder_scans_with_its_pixels_and_a_bad_one_is_one_line(tmp_path):
    """The issue's row end to end: the embedded 28×28 model scans a folder of 16-bit PNGs; a float
    TIFF outside [0,1] among them stops the scan with one line, exit 3, and no result file."""
    from robaudit.cli.demo import DEMO_MODEL
    from robaudit.cli.main import app

    values = {}
    for k in ("a", "b"):
        for i in range(3):
            v = u16(28, 28)
            values[(k, i)] = v
            (tmp_path / "f" / k).mkdir(parents=True, exist_ok=True)
            png_file(tmp_path / "f" / k / f"{i}.png", v, 0)
    spec = load_dataset(f"imagefolder:{tmp_path / 'f'}", DataRequest())
    np.testing.assert_allclose(spec.x[0, 0].numpy(), values[("a", 0)] / 65535, atol=1e-6)
    assert float(spec.x.max()) < 1.0, "not the all-white image of Pillow's convert('L')"
    (tmp_path / "classes.txt").write_text("\n".join("abcdefghij"))  # folders a, b: the model's classes 0 and 1
    args = [
        "scan",
        str(DEMO_MODEL),
        "-d",
        f"imagefolder:{tmp_path / 'f'}",
        "--class-map",
        str(tmp_path / "classes.txt"),
        "--checks",
        "clean",
        "--attacks",
        "fgsm",
        "--device",
        "cpu",
        "-q",
        "--workers",
        "0",
    ]
    ok = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "r.json")])
    assert ok.exit_code == 0, ok.output
    Image.fromarray(np.full((28, 28), 3.0, np.float32)).save(tmp_path / "f" / "b" / "9.tif")
    bad = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "r2.json")])
    assert bad.exit_code == 3, bad.output
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "9.tif holds floating-point pixels from 3 to 3, outside [0,1]" in lines[0]
    assert not (tmp_path / "r2.json").exists()


def test_high_bit_images_resize_like_their_8_bit_selves(tmp_path):
    """Resizing a float image channel by channel as Pillow F images is the 8-bit bilinear resize
    without its rounding: within one grey level of the uint8 pipeline on the same picture (Pillow
    resizes uint8 in two passes, rows then columns, each rounded to 8 bits: ≤ 2 × ½ level)."""
    rgb = u8(20, 30, 3)
    as_float = torch.from_numpy(chw(rgb / 255).astype(np.float32))
    eight = to_tensor(resize_crop(Image.fromarray(rgb), 8, 12))
    high = to_tensor(resize_crop(as_float, 8, 12))
    assert high.shape == eight.shape == (3, 8, 8)
    assert float((high - eight).abs().max()) <= 1 / 255 + 1e-6
