"""Random-resized crops decoded at a reduced DCT scale: the same geometry as the full decode, pixels within JPEG
tolerance of it; and the JPEG decoder is TorchCodec's, without a process-wide warning filter."""

from __future__ import annotations

import io
import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data import crops
from resnets.data.crops import crop_box, dct_scale, train_crop
from resnets.data.images import BadImageError

SIZE = 64


def _photo(width: int = 640, height: int = 480, *, square: bool = False, exif: int | None = None) -> bytes:
    """A smooth photo-like JPEG (a small random image upscaled, light noise; quality 90), or with ``square`` a
    white square on black, whose position shows the crop's geometry."""
    rng = np.random.default_rng(1)
    if square:
        a = np.zeros((height, width, 3), np.uint8)
        a[height // 3: height // 3 + 60, width // 2: width // 2 + 80] = 255
    else:
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        a = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
        a = np.clip(a + rng.normal(0, 3, a.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    kwargs = {}
    if exif is not None:
        e = Image.Exif()
        e[0x0112] = exif
        kwargs["exif"] = e.tobytes()
    Image.fromarray(a).save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def _seeds(height: int, width: int, k: int, count: int = 4) -> list[int]:
    """Seeds whose crop box of a ``height`` x ``width`` image decodes at DCT scale 1/``k``."""
    found = []
    for seed in range(10_000):
        box = crop_box(height, width, random.Random(seed))
        if dct_scale(box[2], box[3], SIZE) == k:
            found.append(seed)
            if len(found) == count:
                return found
    raise AssertionError(f"no seed gives scale 1/{k}")


@pytest.fixture
def scaled_calls(monkeypatch):
    """How many crops went through the reduced-scale decoder (and came back)."""
    calls: list[int] = []
    real = crops._scaled_crop

    def spy(im, box, size, k, orientation):
        out = real(im, box, size, k, orientation)
        if out is not None:
            calls.append(k)
        return out

    monkeypatch.setattr(crops, "_scaled_crop", spy)
    return calls


def _centroid(x: torch.Tensor) -> tuple[float, float]:
    bright = x.float().mean(0)
    ys, xs = torch.meshgrid(torch.arange(bright.shape[0]), torch.arange(bright.shape[1]), indexing="ij")
    total = bright.sum()
    return float((bright * ys).sum() / total), float((bright * xs).sum() / total)


@pytest.mark.parametrize("k", [2, 4])
def test_reduced_scale_crops_are_within_jpeg_tolerance_of_full_decoding(scaled_calls, k):
    data = _photo()
    for seed in _seeds(480, 640, k):
        reduced = train_crop(data, "p.jpg", seed, SIZE)
        full = train_crop(data, "p.jpg", seed, SIZE, reduced=False)
        assert reduced.shape == full.shape == (3, SIZE, SIZE) and reduced.dtype == torch.uint8
        diff = (reduced.int() - full.int()).abs().float()
        assert diff.mean() < 2.0 and diff.quantile(0.99) <= 8, (seed, float(diff.mean()))
    assert scaled_calls == [k] * 4  # every one of them decoded at 1/k


@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_reduced_scale_crops_keep_the_geometry(scaled_calls, orientation):
    """A white square lands at the same place in the reduced and the full crop (within a fifth of a pixel),
    EXIF-rotated images included (the box is drawn on the image as shown)."""
    data = _photo(square=True, exif=orientation)
    height, width = (640, 480) if orientation == 6 else (480, 640)
    checked = 0
    for seed in _seeds(height, width, 2, count=40):
        full = train_crop(data, "s.jpg", seed, SIZE, reduced=False)
        if full.float().mean() < 20:  # the square is (mostly) outside this crop
            continue
        reduced = train_crop(data, "s.jpg", seed, SIZE)
        (ry, rx), (fy, fx) = _centroid(reduced), _centroid(full)
        assert abs(ry - fy) < 0.2 and abs(rx - fx) < 0.2, (seed, (ry, rx), (fy, fx))
        checked += 1
    assert checked >= 3 and len(scaled_calls) == checked


def test_small_crops_and_other_images_decode_whole(scaled_calls, tmp_path):
    data = _photo()
    assert train_crop(data, "p.jpg", 0, 300).shape == (3, 300, 300) and scaled_calls == []  # 480 < 2 x 300
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (10, 200, 30)).save(buf, "PNG")
    png = train_crop(buf.getvalue(), "p.png", _seeds(480, 640, 2, count=1)[0], SIZE)
    assert png[:, 5, 5].tolist() == [10, 200, 30] and scaled_calls == []


def test_a_damaged_jpeg_is_a_bad_image_either_way():
    data = _photo()
    broken = data[:600] + b"\x00" * 200 + b"\xff\xd9"
    for reduced in (True, False):
        with pytest.raises(BadImageError, match="bad.jpg"):
            train_crop(broken[:20], "bad.jpg", 0, SIZE, reduced=reduced)
        try:
            out = train_crop(broken, "bad.jpg", _seeds(480, 640, 2, count=1)[0], SIZE, reduced=reduced)
        except BadImageError as exc:
            assert "bad.jpg" in str(exc)
        else:  # libjpeg pads a corrupt scan; the crop is still the right size
            assert out.shape == (3, SIZE, SIZE)


def test_the_jpeg_decoder_is_torchcodec_and_no_filter_is_left_behind():
    from resnets.data import decode

    assert decode.jpeg_decoder()[0] == "torchcodec"
    assert not any("TorchVision" in str(f[1].pattern if f[1] else "") for f in warnings.filters)
    code = ("import sys, io, warnings; warnings.simplefilter('error'); from PIL import Image; "
            "from resnets.data.decode import decode_files, jpeg_decoder; import tempfile, os; "
            "p = os.path.join(tempfile.mkdtemp(), 'a.jpg'); Image.new('RGB', (8, 8), (200, 0, 0)).save(p); "
            "x = decode_files([p])[0]; "
            "print(jpeg_decoder()[0], tuple(x.shape), 'torchvision.io' in sys.modules, "
            "any('TorchVision' in str(f[1].pattern if f[1] else '') for f in warnings.filters))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["torchcodec", "(3,", "8,", "8)", "False", "False"], proc.stdout + proc.stderr
