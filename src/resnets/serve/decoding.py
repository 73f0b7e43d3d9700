"""One uploaded image as the server reads it: the pixel limit checked on the header, decoded at reduced size
where the format allows, and resized, still uint8, to the size the model's centre crop is taken from.

So no float copy of a full-size image is ever made. A JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
scaled IDCT, Pillow's ``draft``); another format is decoded whole, then box-reduced by an integer factor in
its own mode (Pillow's ``reduce``, premultiplied for alpha). Both stop at :data:`REDUCING_GAP` times the
target size, and the antialiased bilinear resize that ``resnets predict`` does in float32 does the rest, here
in uint8: the input equals the predict path's to within the rounding of a scaled JPEG decode.
"""

from __future__ import annotations

import io
import logging
import warnings

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..data.images import to_rgb_array
from .errors import ApiError

LOG = logging.getLogger("resnets.serve")
#: The reduced decode stops at this many times the target size on each side: then the uint8 resize is within
#: about 3 levels (of 255) of the float one from the full image, and a 24-Mpx JPEG decodes at half size.
REDUCING_GAP = 4
_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
#: The mode each decoded mode is reduced in ("P": RGBA with transparency, else RGB); to_rgb_array then applies
#: the rules of resnets.data.images to the small image ("I" is scaled as 16-bit, as "I;16" is).
_REDUCIBLE = {"PA": "RGBA", "1": "L", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}
_STRIP_ROWS = 256  # rows converted and reduced at a time


def resized_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """(height, width) with the shorter side scaled to ``resize``, as ``resnets.infer.loading.preprocess``
    (torchvision's ``Resize(int)``: the long side truncated)."""
    long_side = int(resize * max(height, width) / min(height, width))
    return (resize, long_side) if height <= width else (long_side, resize)


def bad_image(name: str | None, reason: str) -> ApiError:
    """The 400 for an image that cannot be read."""
    return ApiError(400, f"cannot read image {name or '<body>'}: {reason}")


def decode_resized(data: bytes, name: str | None, resize: int, max_pixels: int) -> torch.Tensor:
    """The uint8 3 x h x w RGB image in ``data`` with its shorter side scaled to ``resize`` (the mode rules of
    :mod:`resnets.data.images`); a 400 naming the reason, never an exception's text, when it cannot be read
    or is over ``max_pixels`` (checked on the header, before any pixel is decoded)."""
    if not data:
        raise bad_image(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise bad_image(name, f"{width}x{height} pixels is over the server's limit of {max_pixels} "
                                          "(--max-pixels; a possible decompression bomb)")
                if min(width, height) < 1:
                    raise bad_image(name, f"{width}x{height} pixels is an empty image")
                transposed = im.getexif().get(_ORIENTATION, 1) in _TRANSPOSED
                h, w = (width, height) if transposed else (height, width)
                nh, nw = resized_size(h, w, resize)
                if nh * nw > max_pixels:
                    raise bad_image(name, f"{width}x{height} pixels would be {nw}x{nh} once its shorter side is "
                                          f"scaled to {resize}, over the server's limit of {max_pixels} "
                                          "(--max-pixels)")
                fw, fh = (nh, nw) if transposed else (nw, nh)  # the target in the file's own orientation
                wanted = (fw * REDUCING_GAP, fh * REDUCING_GAP)
                if im.format == "JPEG":
                    im.draft(None, wanted)  # decode at the smallest DCT scale still >= wanted
                im.load()
                small = _reduced(im, wanted)
                array = to_rgb_array(ImageOps.exif_transpose(small))
    except ApiError:
        raise
    except Image.UnidentifiedImageError:
        raise bad_image(name, "not an image file Pillow can identify") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise bad_image(name, f"more pixels than the server's limit of {max_pixels} (--max-pixels; a possible "
                              "decompression bomb)") from None  # Pillow's own limit, far above ours
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, MemoryError) as exc:
        LOG.info("cannot decode image %s: %s: %s", name or "<body>", type(exc).__name__, exc)
        if "truncated" in str(exc).lower():
            raise bad_image(name, "the file is truncated (it ends before the image does)") from None
        raise bad_image(name, "the image data is corrupt or in a form this server cannot decode") from None
    if not array.flags.writeable:
        array = array.copy()
    x = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)  # channels_last, as uint8 resizing likes it
    if tuple(x.shape[-2:]) != (nh, nw):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    return x[0].contiguous()


def _reduced(im: Image.Image, wanted: tuple[int, int]) -> Image.Image:
    """``im`` box-reduced by the largest integer factor that keeps it at least ``wanted`` (itself when none
    does). It is converted to a mode Pillow can reduce strip by strip, so no full-size converted copy exists
    beside the decoded image; each output row depends only on its own input rows, so the strips give what one
    ``reduce`` of the whole image gives."""
    factor = min(im.width // wanted[0], im.height // wanted[1])
    if factor < 2:
        return im
    mode = _REDUCIBLE.get(im.mode, im.mode)
    if im.mode == "P":
        mode = "RGBA" if "transparency" in im.info else "RGB"
    rows = factor * max(1, _STRIP_ROWS // factor)
    out: Image.Image | None = None
    try:
        for top in range(0, im.height, rows):
            strip = im.crop((0, top, im.width, min(im.height, top + rows)))
            small = (strip if strip.mode == mode else strip.convert(mode)).reduce(factor)
            if out is None:
                out = Image.new(small.mode, (-(-im.width // factor), -(-im.height // factor)))
            out.paste(small, (0, top // factor))
    except ValueError:  # a mode Pillow cannot reduce: resized whole
        return im
    return out if out is not None else im
