"""Decode one image file into a uint8 3xHxW RGB tensor, whatever its mode, or fail with its path.

Rules (the same for every loader in :mod:`resnets.data`):

* EXIF orientation is applied, so the tensor is the image as a viewer shows it.
* Grayscale (``1``, ``L``), palette (``P``), ``CMYK``, ``YCbCr`` and other colour modes become RGB.
* Transparency (``RGBA``, ``LA``, ``PA``, palette transparency) is composited on **white**: transparent
  pixels of icons and logos are meant to be seen on a page, and white is what a viewer shows.
* 16-bit images (``I;16*``, 16-bit PNG, and ``I`` read from such files) are scaled to 8 bit by
  ``round(v * 255 / 65535)``, not truncated, so full white stays full white.
* Truncated, empty, unreadable or non-image files, and images over :data:`MAX_IMAGE_PIXELS` pixels
  (decompression bombs), raise :class:`BadImageError` naming the path.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import UserError

#: Largest image accepted, in pixels (about 8192 x 8192); larger files are refused as decompression bombs.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class BadImageError(UserError):
    """An image file that cannot be decoded: truncated, empty, not an image, or a decompression bomb."""

    def __init__(self, path: str | os.PathLike[str], reason: str = "cannot read image") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"bad image {self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) across process boundaries (DataLoader workers)
        return (type(self), (self.path, self.reason))


def read_rgb(path: str | os.PathLike[str], *, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """The image at ``path`` as a uint8 3xHxW RGB tensor; :class:`BadImageError` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BadImageError(path, exc.strerror or str(exc)) from None
    return decode_rgb(data, path, max_pixels=max_pixels)


def decode_rgb(data: bytes, path: str | os.PathLike[str] = "<bytes>", *,
               max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Decode encoded image bytes with Pillow under the rules of this module; ``path`` names them in errors."""
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise BadImageError(path, f"{width}x{height} pixels exceeds the limit of {max_pixels} "
                                              "(possible decompression bomb)")
                im.load()
                array = to_rgb_array(ImageOps.exif_transpose(im))
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(path, f"decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(path, "not an image file Pillow can identify") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, MemoryError) as exc:
        raise BadImageError(path, f"{type(exc).__name__}: {exc}") from None
    chw = np.ascontiguousarray(array.transpose(2, 0, 1))  # a view, not a copy, for 1-pixel-wide images
    return torch.from_numpy(chw if chw.flags.writeable else chw.copy())


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB array of a loaded Pillow image of any mode."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(im).astype(np.int64)
        gray = ((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info or mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode == "P":
        im, mode = im.convert("RGB"), "RGB"
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has an image extension the loaders consider (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm"})
