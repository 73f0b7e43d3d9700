"""One uploaded image as the server reads it: the pixel limit checked on the header, decoded at reduced size
where the format allows, and resized, still uint8, to the size the model's centre crop is taken from.

So no float copy of a full-size image is ever made. A JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
scaled IDCT, Pillow's ``draft``); another format is decoded whole, then box-reduced by an integer factor in
its own mode, a strip at a time (Pillow's ``reduce``, premultiplied for alpha). Both stop well above the
target size (:data:`REDUCING_GAP`), and the antialiased bilinear resize that ``resnets predict``
does in float32 does the rest, here in uint8, sampling where the full image would be sampled: the input is
within a few levels of the predict path's.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import to_rgb_array
from .errors import ApiError

LOG = logging.getLogger("resnets.serve")
#: How far the reduced decode goes: down to 4x the target size on each side (a 24-Mpx JPEG decodes at half size
#: for an ImageNet model). Measured on a real photo, the network input is then within ~5 levels (of 255) of
#: predict's float resize of the whole image after a 1/8-scale JPEG decode, ~8 after a box reduce by 23, ~0.5 on
#: average. Reducing less (8x) halves those errors but costs more memory than the decode for an alpha PNG.
REDUCING_GAP = 4
_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
#: What ImageOps.exif_transpose does for each EXIF orientation, on a 3 x h x w tensor.
_ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda x: x.flip(-1), 3: lambda x: x.flip(-1, -2), 4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-1, -2), 6: lambda x: torch.rot90(x, -1, (-2, -1)),
    7: lambda x: x.transpose(-1, -2).flip(-1, -2), 8: lambda x: torch.rot90(x, 1, (-2, -1))}
#: The mode each decoded mode is reduced in ("P": RGBA with transparency, else RGB); to_rgb_array then applies
#: the rules of resnets.data.images to the small image ("I" is scaled as 16-bit, as "I;16" is).
_REDUCIBLE = {"PA": "RGBA", "1": "L", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}
_STRIP_ROWS = 256  # rows converted and reduced at a time
#: decode_resized(as_float=True) resizes in float32 when the decoded image has at most this many times the
#: output's pixels (a float copy of at most 4 x 3 x 256 x 341 x 4 bytes, 4 MB, for an ImageNet model).
FLOAT_RESIZE_RATIO = 4


def resized_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """(height, width) with the shorter side scaled to ``resize``, as ``resnets.infer.loading.preprocess``
    (torchvision's ``Resize(int)``: the long side truncated)."""
    long_side = int(resize * max(height, width) / min(height, width))
    return (resize, long_side) if height <= width else (long_side, resize)


def centre_crop(image: torch.Tensor, crop: int) -> torch.Tensor:
    """The centre ``crop`` x ``crop`` of a 3 x h x w image, where torchvision's CenterCrop (and
    ``resnets.infer.loading.preprocess``) takes it."""
    h, w = image.shape[-2:]
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return image[:, top:top + crop, left:left + crop]


def normalised(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A uint8 (or float32 0..255) N x 3 x S x S batch scaled to 0..1 and normalised, in one float32 tensor: the values
    ``preprocess`` gives each image (the same operations, done in place)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return batch.float().div_(255.0).sub_(m).div_(s)


def bad_image(name: str | None, reason: str) -> ApiError:
    """The 400 for an image that cannot be read."""
    return ApiError(400, f"cannot read image {name or '<body>'}: {reason}")


def decode_resized(data: bytes, name: str | None, resize: int, max_pixels: int, *,
                   as_float: bool = False) -> torch.Tensor:
    """The uint8 3 x h x w RGB image in ``data`` with its shorter side scaled to ``resize`` (the mode rules of
    :mod:`resnets.data.images`); a 400 naming the reason, never an exception's text, when it cannot be read
    or is over ``max_pixels`` (checked on the header, before any pixel is decoded).

    ``as_float``: float32 values 0..255 instead, and where the decoded image has at most
    :data:`FLOAT_RESIZE_RATIO` times the output's pixels (an upscale, or a mild downscale) the resize itself runs
    in float32, unrounded, as predict's does: a uint8 resize rounds each value to half a level, enough to turn a
    near tie (a 32-px photo upscaled to 64) another way than predict. Larger images are resized in uint8."""
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
                orientation = im.getexif().get(_ORIENTATION, 1)  # EXIF's, or XMP's as Pillow reads it
                transposed = orientation in _TRANSPOSED
                h, w = (width, height) if transposed else (height, width)
                nh, nw = resized_size(h, w, resize)
                if nh * nw > max_pixels:
                    raise bad_image(name, f"{width}x{height} pixels would be {nw}x{nh} once its shorter side is "
                                          f"scaled to {resize}, over the server's limit of {max_pixels} "
                                          "(--max-pixels)")
                fw, fh = (nh, nw) if transposed else (nw, nh)  # the target in the file's own orientation
                wanted = (fw * REDUCING_GAP, fh * REDUCING_GAP)
                extent = (float(width), float(height))  # the whole image, in pixels of the decoded one
                if im.format == "JPEG":
                    drafted = im.draft(None, wanted)  # decode at the smallest DCT scale still >= wanted
                    if drafted is not None:
                        extent = drafted[1][2:]
                im.load()
                small, factor = _reduced(im, wanted)
                extent = (extent[0] / factor, extent[1] / factor)
                array = to_rgb_array(small)
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
    if as_float and x.shape[-2] * x.shape[-1] <= FLOAT_RESIZE_RATIO * fh * fw:
        x = x.float()  # at most FLOAT_RESIZE_RATIO x the output in float32: small, and exact
    x = _resize(x, fh, fw, extent)[0]
    if as_float:
        x = x.float()
    if orientation in _ORIENT:  # as ImageOps.exif_transpose, after the resize (they commute)
        x = _ORIENT[orientation](x)
    return x.contiguous()


def _resize(x: torch.Tensor, height: int, width: int, extent: tuple[float, float]) -> torch.Tensor:
    """A uint8 1 x 3 x h x w image resized to ``height`` x ``width`` (antialiased bilinear, as predict's),
    where the whole original spans ``extent`` (width, height) of its pixels: less than w x h when the last
    row or column of a reduced decode averages a partial block. The output pixels then sample the image where
    they would in the original, not where a stretched copy would put them."""
    h, w = x.shape[-2:]
    if (float(w), float(h)) == extent:
        if (h, w) == (height, width):
            return x
        return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    # the same kernel, told the scale (output pixels per input pixel) instead of deriving it from the sizes
    return torch.ops.aten._upsample_bilinear2d_aa.default(x, [height, width], False, height / extent[1],
                                                          width / extent[0])


def _reduced(im: Image.Image, wanted: tuple[int, int]) -> tuple[Image.Image, int]:
    """``im`` box-reduced by the largest integer factor that keeps it at least ``wanted``, and that factor
    (``im`` and 1 when none does). It is converted to a mode Pillow can reduce strip by strip, so no full-size converted copy exists
    beside the decoded image; each output row depends only on its own input rows, so the strips give what one
    ``reduce`` of the whole image gives."""
    factor = min(im.width // wanted[0], im.height // wanted[1])
    if factor < 2:
        return im, 1
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
        return im, 1
    return (out, factor) if out is not None else (im, 1)
