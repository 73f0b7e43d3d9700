"""read_rgb: every odd mode becomes correct RGB; bad files stop with their path."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data import BadImageError, read_rgb
from resnets.data import decode as decode_module
from resnets.data.decode import decode_files, jpeg_header
from resnets.errors import UserError


def _watch_decoders(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[str]]:
    """Count the images the fast JPEG decoder (TorchCodec's) decodes and list the paths Pillow decodes, in
    ``decode_files``. The fast decoder must be present: TorchCodec is a dependency, and without it a comparison
    of the bulk decoder with ``read_rgb`` would compare Pillow with Pillow."""
    codec = decode_module.jpeg_decoder()
    assert codec is not None and codec[0] == "torchcodec", f"the fast decoder is {codec}, not TorchCodec's"
    name, decode = codec
    fast: list[int] = []
    slow: list[str] = []

    def counting_decode(data):
        fast.append(len(data))
        return decode(data)

    def listing_decode_rgb(data, path, **kwargs):
        slow.append(path)
        return decode_rgb(data, path, **kwargs)

    decode_rgb = decode_module.decode_rgb
    monkeypatch.setattr(decode_module, "jpeg_decoder", lambda: (name, counting_decode))
    monkeypatch.setattr(decode_module, "decode_rgb", listing_decode_rgb)
    return fast, slow


def _hwc(t: torch.Tensor) -> np.ndarray:
    assert t.dtype == torch.uint8 and t.dim() == 3 and t.shape[0] == 3
    return t.permute(1, 2, 0).numpy()


def test_rgb_png_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.array_equal(_hwc(read_rgb(tmp_path / "a.png")), arr)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(arr, "L").save(tmp_path / "g.png")
    out = _hwc(read_rgb(tmp_path / "g.png"))
    assert out.shape == (3, 4, 3)
    for c in range(3):
        assert np.array_equal(out[:, :, c], arr)


def test_palette_with_transparency_composited_on_white(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    im.info["transparency"] = 1  # index 1 (blue) is fully transparent
    im.save(tmp_path / "p.png", transparency=1)
    out = _hwc(read_rgb(tmp_path / "p.png"))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]


def test_rgba_and_la_composited_on_white(tmp_path):
    rgba = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [200, 100, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = _hwc(read_rgb(tmp_path / "a.png")).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 0]
    expected = np.round(np.array([200, 100, 0]) * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.abs(out[0, 2] - expected).max() <= 1
    Image.fromarray(np.array([[[10, 0], [10, 255]]], dtype=np.uint8), "LA").save(tmp_path / "la.png")
    assert _hwc(read_rgb(tmp_path / "la.png"))[0].tolist() == [[255, 255, 255], [10, 10, 10]]


def test_cmyk_jpeg_and_tiff(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.tif")  # pure red in CMYK
    assert _hwc(read_rgb(tmp_path / "c.tif"))[0, 0].tolist() == [255, 0, 0]
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    red = _hwc(read_rgb(tmp_path / "c.jpg")).astype(int)[8, 8]
    assert red[0] > 240 and red[1] < 20 and red[2] < 20


def test_16_bit_png_scaled_not_truncated(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "i16.png")  # mode I;16 -> 16-bit PNG
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    out = _hwc(read_rgb(tmp_path / "i16.png"))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(out[:, :, 0], out[:, :, 2])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw_rows))
            + _png_chunk(b"IEND", b""))


def test_16_bit_rgb_png(tmp_path):
    row = b"\x00" + struct.pack(">6H", 65535, 0, 32768, 0, 257, 65535)  # 2 pixels, 16 bit per channel
    (tmp_path / "rgb16.png").write_bytes(_png(2, 1, 16, 2, row))
    out = _hwc(read_rgb(tmp_path / "rgb16.png")).astype(int)
    assert np.abs(out[0] - np.array([[255, 0, 128], [0, 1, 255]])).max() <= 1


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_6_is_applied(tmp_path, suffix, monkeypatch):
    # Stored 2 rows x 3 columns with a white pixel top-left; orientation 6 means "rotate 90 degrees
    # clockwise to display", so the shown image is 3 x 2 with the white pixel top-right.
    arr = np.zeros((2, 3, 3), dtype=np.uint8)
    arr[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    big = np.kron(arr, np.ones((8, 8, 1), dtype=np.uint8))  # 16 x 24 so JPEG blocks keep the corners clean
    Image.fromarray(big).save(tmp_path / f"r{suffix}", exif=exif, quality=100)
    path = tmp_path / f"r{suffix}"
    out = _hwc(read_rgb(path)).astype(int)
    assert out.shape == (24, 16, 3)
    assert out[2, 13].min() > 200 and out[2, 2].max() < 50  # top-right white, top-left black
    assert out[21, 2].max() < 50
    fast_count, slow = _watch_decoders(monkeypatch)
    fast = _hwc(decode_files([path], workers=1)[0]).astype(int)  # the bulk decoder agrees
    assert np.abs(fast - out).max() <= 1
    assert (sum(fast_count), slow) == ((1, []) if suffix == ".jpg" else (0, [str(path)]))  # and ran as said


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _bad_files(tmp_path):
    data = _jpeg_bytes()
    files = {"truncated.jpg": data[: len(data) // 2], "empty.jpg": b"", "text.jpg": b"this is not an image\n"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    # A decompression bomb: a valid PNG header claiming 100000 x 100000 pixels.
    (tmp_path / "bomb.png").write_bytes(_png(100_000, 100_000, 8, 2, b"\x00" * 16))
    return [tmp_path / n for n in [*files, "bomb.png"]]


def test_bad_images_raise_with_path(tmp_path):
    for path in _bad_files(tmp_path):
        with pytest.raises(BadImageError) as info:
            read_rgb(path)
        assert str(path) in str(info.value) and info.value.path == str(path)
        assert isinstance(info.value, UserError)
        result = decode_files([path], workers=1)[0]  # the bulk decoder reports the same failure
        assert isinstance(result, BadImageError) and result.path == str(path)
    with pytest.raises(BadImageError, match="missing.jpg"):
        read_rgb(tmp_path / "missing.jpg")


def test_pixel_limit_is_a_decompression_bomb(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    assert read_rgb(tmp_path / "big.png").shape == (3, 100, 100)
    with pytest.raises(BadImageError, match="decompression bomb"):
        read_rgb(tmp_path / "big.png", max_pixels=5000)


def test_bulk_decoder_matches_pillow_and_keeps_order(tmp_path, monkeypatch):
    paths = []
    for k in range(300):  # more than one chunk, mixed fast (JPEG) and slow (PNG) paths
        arr = np.random.default_rng(k).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = tmp_path / (f"{k}.jpg" if k % 3 else f"{k}.png")
        Image.fromarray(arr).save(path)
        paths.append(path)
    fast, slow = _watch_decoders(monkeypatch)
    results = decode_files(paths, workers=2)
    # every JPEG went through TorchCodec's decoder (in batches, not one by one) and only the PNGs through Pillow
    assert sum(fast) == 200 and len(fast) == 2 and sorted(slow) == sorted(str(p) for p in paths if p.suffix == ".png")
    monkeypatch.undo()  # read_rgb below is Pillow, unwatched
    for path, result in zip(paths, results, strict=True):
        assert torch.equal(result, read_rgb(path))
    assert jpeg_header(paths[1].read_bytes()) == (8, 8, 3)
    assert jpeg_header(b"not a jpeg") is None
