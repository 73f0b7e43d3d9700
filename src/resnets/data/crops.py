"""Training and evaluation crops of one encoded image, as uint8 3xSxS tensors, decoding only what is needed.

Training: a random-resized crop (torchvision's RandomResizedCrop: area 8-100% of the image, aspect 3/4-4/3, the
same ten tries and fallback) and a horizontal flip, all drawn from ``random.Random(seed)``, so a crop is a function
of (seed, image size) whichever decoder ran. The crop box is drawn on the full-size image as a viewer shows it
(EXIF orientation applied). When the box is at least twice the output side in each dimension, a plain JPEG is
decoded by libjpeg-turbo at a reduced DCT scale 1/k (k = 2, 4 or 8, the largest that keeps the box at least
the output side; Pillow's ``Image.draft``), the box is scaled into the reduced image by exactly 1/k (float
coordinates, Pillow's ``resize(box=...)``) and resized to the output: the same geometry as the full-size
crop, the pixels within JPEG tolerance of it, and the reduced crop still downscaled, never upscaled. Any other
image, and any JPEG the reduced path fails on, is decoded whole (:func:`~resnets.data.decode.decode_bytes`,
under the same pixel limit and bad-image rules) and cropped there (antialiased bilinear).

Evaluation: shorter side to ``resize``, centre crop of ``size`` (torchvision's Resize and CenterCrop).
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch

from .decode import _fast_ok, decode_bytes, jpeg_header
from .images import MAX_IMAGE_PIXELS

#: RandomResizedCrop's ranges: the crop's share of the image area, and its aspect ratio (width / height).
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
_ORIENTATION = 0x0112


def crop_box(height: int, width: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random-resized crop of a ``height`` x ``width`` image, drawn from ``rng``
    as torchvision's ``RandomResizedCrop.get_params`` draws (ten tries, then the central crop of the nearest
    allowed aspect)."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def dct_scale(box_height: int, box_width: int, size: int) -> int:
    """The DCT scale denominator k (1, 2, 4 or 8) to decode at: the largest that keeps the crop box at least
    ``size`` pixels in each dimension (1: decode at full size)."""
    for k in (8, 4, 2):
        if box_height >= k * size and box_width >= k * size:
            return k
    return 1


def train_crop(data: bytes, path: str, seed: int, size: int, *, flip: bool = True, reduced: bool = True,
               max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """A ``size`` x ``size`` random-resized crop of the encoded image ``data``, flipped with probability 1/2 if
    ``flip``, drawn from ``seed``; ``reduced``: decode JPEGs at a reduced DCT scale where the crop allows.
    :class:`~resnets.data.images.BadImageError` (naming ``path``) for an image that cannot be decoded."""
    header = jpeg_header(data) if reduced else None
    # a box is at most the image: no reduced scale unless both sides are at least twice the output
    probe = _plain_jpeg(data, max_pixels) if header is not None and min(header[:2]) >= 2 * size else None
    if probe is not None:
        im, height, width, orientation = probe
        rng = random.Random(seed)
        box = crop_box(height, width, rng)
        mirror = flip and rng.random() < 0.5
        k = dct_scale(box[2], box[3], size)
        if k > 1:
            out = _scaled_crop(im, box, size, k, orientation)
            if out is not None:
                return out.flip(-1) if mirror else out
    image = decode_bytes(data, path, max_pixels)
    rng = random.Random(seed)
    box = crop_box(image.shape[1], image.shape[2], rng)
    mirror = flip and rng.random() < 0.5
    out = _resized_crop(image, box, size)
    return out.flip(-1) if mirror else out


def eval_crop(data: bytes, path: str, size: int, resize: int, *,
              max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Shorter side to ``resize`` (antialiased bilinear), then the centre ``size`` x ``size`` (uint8)."""
    from torchvision.transforms.v2 import functional as TF

    image = TF.resize(decode_bytes(data, path, max_pixels), resize, antialias=True)
    return TF.center_crop(image, [size, size])


def _resized_crop(image: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.resized_crop(image, *box, [size, size], antialias=True)


def _plain_jpeg(data: bytes, max_pixels: int) -> tuple[object, int, int, int] | None:
    """(Pillow image, not yet decoded; displayed height and width; EXIF orientation) of a plain RGB or
    grayscale JPEG within the pixel limit, else None."""
    if not _fast_ok(data, max_pixels):
        return None
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        if im.format != "JPEG" or im.mode not in ("RGB", "L"):
            return None
        orientation = int(im.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - anything odd takes the full decoder, whose rules say what is bad
        return None
    width, height = im.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return im, height, width, orientation


def _scaled_crop(im: object, box: tuple[int, int, int, int], size: int, k: int,
                 orientation: int) -> torch.Tensor | None:
    """The crop ``box`` (displayed full-size coordinates) of the JPEG ``im`` decoded at DCT scale 1/``k``,
    resized to ``size`` x ``size``; None if the decoder picked another scale or failed (decode it whole)."""
    from PIL import Image, ImageOps

    try:
        full_w, full_h = im.size  # type: ignore[attr-defined]
        drafted = im.draft("RGB", (full_w // k, full_h // k))  # type: ignore[attr-defined]
        if drafted is None or abs(full_w / drafted[1][2] - k) > 1e-9:
            return None
        im.load()  # type: ignore[attr-defined]
        shown = ImageOps.exif_transpose(im) if orientation != 1 else im
        top, left, h, w = box
        crop = shown.resize((size, size), Image.Resampling.BILINEAR,  # type: ignore[attr-defined]
                            box=(left / k, top / k, (left + w) / k, (top + h) / k))
        if crop.mode != "RGB":
            crop = crop.convert("RGB")
        return torch.from_numpy(np.asarray(crop).transpose(2, 0, 1).copy())
    except Exception:  # noqa: BLE001 - a damaged file: the full decoder decides (and names it)
        return None
