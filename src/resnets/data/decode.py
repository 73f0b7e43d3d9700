"""Decode many image files quickly: libjpeg-turbo through TorchCodec for plain JPEGs, Pillow for the rest.

Measured on CIFAR-10 JPEGs (2 CPU cores): libjpeg-turbo through TorchCodec's or torchvision's ``decode_jpeg`` is
about 7x faster than Pillow and gives identical pixels; TorchCodec (the decoder torchvision 0.29 deprecates its
own image decoding for) and torchvision give the same pixels at the same speed (1.54 and 1.59 ms a 500x375 JPEG),
and both apply the EXIF orientation. TorchCodec is used where it is installed (a dependency, at least
:data:`MIN_TORCHCODEC`), else torchvision's decoder, its deprecation warning silenced for that call alone.
Only JPEGs that pass a header check (1 or 3 components, size within the pixel limit, an end-of-image marker)
take the fast path; anything else, and anything the fast path fails on, is decoded by
:func:`resnets.data.images.decode_rgb`, so the rules for odd images and bad files hold.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from .images import MAX_IMAGE_PIXELS, BadImageError, decode_rgb

#: The oldest TorchCodec whose ``decode_jpeg`` is used (0.17: CPU and nvJPEG decoding, EXIF orientation applied).
MIN_TORCHCODEC = (0, 17)

JpegDecoder = Callable[[list[torch.Tensor]], list[torch.Tensor]]


@functools.cache
def jpeg_decoder() -> tuple[str, JpegDecoder] | None:
    """(name, decode) of the libjpeg-turbo decoder in use: ``"torchcodec"`` (at least :data:`MIN_TORCHCODEC`),
    else ``"torchvision"``; ``decode`` takes encoded uint8 tensors and returns RGB uint8 3xHxW tensors with their
    EXIF orientation applied. Imported on first use (torchvision takes seconds to import, which commands that
    decode no JPEG should not pay); None without either (everything goes through Pillow)."""
    try:
        import torchcodec
        from torchcodec.decoders import decode_jpeg as codec_decode

        version = tuple(int(p) for p in torchcodec.__version__.split("+")[0].split(".")[:2])
        if version >= MIN_TORCHCODEC:
            return "torchcodec", lambda data: codec_decode(data, mode="RGB")
    except (ImportError, OSError, RuntimeError, ValueError):  # missing, too old, or its libraries fail to load
        pass
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                    category=DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # pragma: no cover - depends on the installed torchvision
        return None

    def vision_decode(data: list[torch.Tensor]) -> list[torch.Tensor]:
        with warnings.catch_warnings():  # the deprecation of torchvision's codecs, for this call only
            warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                    category=DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)

    return "torchvision", vision_decode

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_CHUNK = 256

DecodeResult = torch.Tensor | BadImageError


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's frame header, or None if ``data`` is not a parsable JPEG."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF_MARKERS:
            if i + 10 > n:
                return None
            return (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8], data[i + 9]
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        i += 2 + length
    return None


def _fast_ok(data: bytes, max_pixels: int) -> bool:
    header = jpeg_header(data)
    if header is None or jpeg_decoder() is None:  # the header first: no decoder import for PNGs
        return False
    height, width, components = header
    return (components in (1, 3) and 0 < height * width <= max_pixels
            and data.rstrip(b"\x00")[-2:] == b"\xff\xd9")


def decode_bytes(data: bytes, path: str = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Encoded image bytes to a uint8 3xHxW RGB tensor: the fast JPEG decoder where it may, else Pillow's rules;
    :class:`BadImageError` names ``path`` if the image cannot be decoded."""
    result = _fast_one(data, path, max_pixels) if _fast_ok(data, max_pixels) else _slow_one(data, path, max_pixels)
    if isinstance(result, BadImageError):
        raise result
    return result


def _fast_one(data: bytes, path: str, max_pixels: int) -> DecodeResult:
    _, decode = jpeg_decoder()  # type: ignore[misc]  # _fast_ok saw it
    try:
        return decode([torch.frombuffer(bytearray(data), dtype=torch.uint8)])[0]
    except (RuntimeError, ValueError):
        return _slow_one(data, path, max_pixels)


def _slow_one(data: bytes, path: str, max_pixels: int) -> DecodeResult:
    try:
        return decode_rgb(data, path, max_pixels=max_pixels)
    except BadImageError as exc:
        return exc


def _read(path: str) -> bytes | BadImageError:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        return BadImageError(path, exc.strerror or str(exc))


def _decode_chunk(paths: Sequence[str], max_pixels: int) -> list[DecodeResult]:
    out: list[DecodeResult | None] = [None] * len(paths)
    fast_idx: list[int] = []
    fast_data: list[torch.Tensor] = []
    for k, path in enumerate(paths):
        data = _read(path)
        if isinstance(data, BadImageError):
            out[k] = data
        elif _fast_ok(data, max_pixels):
            fast_idx.append(k)
            fast_data.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        else:
            out[k] = _slow_one(data, path, max_pixels)
    if fast_idx:
        _, decode = jpeg_decoder()  # type: ignore[misc]  # _fast_ok saw it
        try:
            decoded = decode(fast_data)
        except (RuntimeError, ValueError):  # one bad file fails the batch: redo one by one
            decoded = [_fast_one(d.numpy().tobytes(), paths[k], max_pixels) for k, d in zip(fast_idx, fast_data, strict=True)]
        for k, image in zip(fast_idx, decoded, strict=True):
            out[k] = image
    return out  # type: ignore[return-value]


def decode_files(paths: Sequence[str | os.PathLike[str]], *, workers: int | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS,
                 progress: Callable[[int], None] | None = None) -> list[DecodeResult]:
    """Decode ``paths`` in order: each a uint8 3xHxW RGB tensor or the :class:`BadImageError` it raised.

    ``workers`` threads (default: the CPU count, at most 4) each take chunks of 256 files; ``progress``
    is called with the number of files finished after each chunk.
    """
    names = [os.fspath(p) for p in paths]
    chunks = [names[i:i + _CHUNK] for i in range(0, len(names), _CHUNK)]
    workers = workers or min(4, os.cpu_count() or 1)
    results: list[DecodeResult] = []
    if workers <= 1 or len(chunks) <= 1:
        mapped = (_decode_chunk(c, max_pixels) for c in chunks)
        for part in mapped:
            results.extend(part)
            if progress:
                progress(len(results))
        return results
    with ThreadPoolExecutor(workers, thread_name_prefix="resnets-decode") as pool:
        for part in pool.map(_decode_chunk, chunks, [max_pixels] * len(chunks)):
            results.extend(part)
            if progress:
                progress(len(results))
    return results
