"""A request's images: the body read under the size limit (never buffered past it), multipart ``file``
fields or one raw ``image/*`` body, decoded (at reduced size) and preprocessed off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from concurrent.futures import Executor

import torch
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from ..infer.loading import LoadedModel
from .decoding import centre_crop, decode_resized, normalised
from .errors import ApiError

IMAGE_FIELD = "file"
MAX_FILES = 256  # images in one request


def _multipart_reason(message: str) -> str:
    """Starlette's reason for refusing a multipart body, in this server's words."""
    if message.startswith(("Too many files", "Too many fields")):
        return f"more than {MAX_FILES} files or fields in one request"
    if "maximum size" in message:
        return "a multipart part over the body limit (--max-body-mb)"
    return "malformed multipart body: check its boundary and each part's Content-Disposition header"


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower case ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def too_large(limit: int) -> ApiError:
    """The 413 for a body over ``limit`` bytes."""
    return ApiError(413, f"the request body exceeds the limit of {limit / 1048576:g} MB (--max-body-mb)")


def check_length(request: Request, limit: int) -> None:
    """413 when the declared Content-Length is over ``limit``; 400 when it is not a number."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise ApiError(400, f"Content-Length {declared!r} is not a number") from None
    if size > limit:
        raise too_large(limit)


async def limited_stream(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks, raising 413 as soon as more than ``limit`` bytes arrived."""
    check_length(request, limit)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large(limit)
            yield chunk
    except ClientDisconnect:
        raise ApiError(400, "the client closed the connection before the body was complete") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (413 beyond)."""
    parts = bytearray()
    async for chunk in limited_stream(request, limit):
        parts += chunk
    return bytes(parts)


async def read_uploads(request: Request, limit: int) -> list[tuple[str | None, bytes]]:
    """``(filename, bytes)`` of each image sent: multipart fields named ``file`` (in order), or a raw
    ``image/*`` body (filename None). 415 for another content type, 400 when no image was sent."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        parser = MultiPartParser(request.headers, limited_stream(request, limit), max_files=MAX_FILES,
                                 max_fields=MAX_FILES, max_part_size=limit)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ApiError(400, _multipart_reason(exc.message)) from None
        try:
            uploads: list[tuple[str | None, bytes]] = []
            for value in form.getlist(IMAGE_FIELD):
                if not isinstance(value, UploadFile):
                    raise ApiError(400, f"form field {IMAGE_FIELD!r} must be a file upload, not text")
                uploads.append((value.filename, await value.read()))
        finally:
            await form.close()
        if not uploads:
            raise ApiError(400, f"no image in the form; send each image as a file field named {IMAGE_FIELD!r}")
        return uploads
    if kind.startswith("image/"):
        return [(None, await read_body(request, limit))]
    shown = kind or "none"
    raise ApiError(415, f"unsupported content type {shown}; send multipart/form-data with file fields named "
                        f"{IMAGE_FIELD!r} or a raw body with an image/* content type")


async def decode_all(uploads: list[tuple[str | None, bytes]], loaded: LoadedModel, max_pixels: int,
                     executor: Executor) -> torch.Tensor:
    """The uploads decoded at reduced size, resized (in float32 where the image is small, see
    ``decode_resized``) and centre-cropped in ``executor``, then normalised as one float32 N x 3 x S x S batch:
    the network input ``resnets predict`` makes of the same files."""
    loop = asyncio.get_running_loop()

    def one(data: bytes, name: str | None) -> torch.Tensor:
        image = decode_resized(data, name, loaded.resize, max_pixels, as_float=True)
        return centre_crop(image, loaded.input_size).clone()  # the crop alone, not the resized image behind it

    crops = await asyncio.gather(*(loop.run_in_executor(executor, one, data, name) for name, data in uploads))
    return await loop.run_in_executor(executor, lambda: normalised(torch.stack(crops), loaded.mean, loaded.std))
