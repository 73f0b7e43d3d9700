"""WebDataset tar shards: write an image folder as shards, and stream them, split across ranks and workers.

Writing (:func:`write_shards`): each split folder (``train/``, ``val/``/``test/``) becomes
``<split>-000000.tar``, ... . A sample is ``<key>.<ext>`` (the original encoded bytes, never re-encoded)
and ``<key>.cls`` (the class index, ASCII). Training samples are shuffled once (seeded) before writing, so
every shard holds every class. ``index.json`` beside the shards holds the class names, the shard names and
their sample counts, image sizes and the training split's per-channel mean and std.

Reading (:class:`ShardBatches`): a spec is a brace pattern (``shards/train-{000000..000099}.tar``), one
``.tar``, a folder holding ``index.json``, or any URL or ``pipe:`` command WebDataset opens. Each epoch the
shard list is permuted by (seed, epoch); rank ``r`` of ``W`` takes shards ``r::W``; the rank's loader worker
``s`` of ``S`` takes shards ``s::S`` of those and reads them through a seeded shuffle buffer; the workers are kept
from epoch to epoch (the epoch reaches them through shared memory). Large images come out as uint8 random-resized
crops (:mod:`resnets.data.crops`), normalised on the device, at the epoch's side (progressive resizing). Every rank
yields the same number of batches (``total // global batch``); a stream that runs dry starts its shards
again in a new order. The order is a pure function of (seed, epoch, rank, world size, workers), so
``iter_from(b)`` replays an epoch from batch ``b`` exactly, skipping earlier samples without decoding them.

Untrusted input: a shard name read from ``index.json`` must be a plain file name inside the shard folder
(:func:`check_shard_name`), so a data file can never name a ``pipe:`` command, a URL or a path elsewhere; only
a spec typed by the user may. What reading a shard may cost is capped (:class:`ShardLimits`; ``resnets train``
flags raise each cap): a tar member is read into memory only if its name is a relative path and it, and its
sample's members together, hold at most :data:`MAX_MEMBER_BYTES` (``--max-member-mb``); other members are bad
images: refused, or skipped (with a warning, counted) under ``skip_bad_images``. A shard that decompresses to more
than :data:`MAX_SHARD_BYTES` (``--max-shard-gb``), counted before each member is read or skipped, is refused; the
shuffle buffer holds at most :data:`SHUFFLE_BUFFER` samples and :data:`SHUFFLE_BUFFER_BYTES` per stream
(``--shuffle-buffer-mb``); ``index.json`` is read only up to :data:`MAX_INDEX_BYTES`. Images decode under the
image-folder pixel limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import tarfile
import urllib.parse
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import UserError
from ..outputs import atomic_write
from ..progress import Progress
from ..runtime import derive_seed
from .cifar import DATASETS
from .contract import TrainBatches
from .crops import train_crop
from .folder import find_classes, scan_split
from .images import MAX_IMAGE_PIXELS, BadImageError, decode_rgb
from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .tars import CappedTarInfo, HeaderTooLarge, StreamTooLarge, check_end

if TYPE_CHECKING:
    from .feed import DeviceFeed

INDEX_NAME = "index.json"
FORMAT = "resnets-shards-1"
#: Images up to this side are "small" (CIFAR-style augmentation, data-set mean/std); larger are ImageNet-style.
SMALL_IMAGE_MAX_SIDE = 64
#: The shuffle buffer's samples per stream (one stream per loader worker).
SHUFFLE_BUFFER = 512
#: ... and its bytes per stream, the samples' members counted (256 MiB; ``resnets train --shuffle-buffer-mb``).
SHUFFLE_BUFFER_BYTES = 256 << 20
#: Largest tar member read into memory, and the most one sample's members may hold together, in bytes (64 MiB,
#: a 64-Mpixel photograph's JPEG several times over; ``resnets train --max-member-mb``).
MAX_MEMBER_BYTES = 64 << 20
#: The most one shard may decompress to, in bytes, headers and skipped members included (4 GiB, four times the
#: shards ``resnets shard`` writes; ``resnets train --max-shard-gb``): a gzip/bz2/xz bomb costs no more CPU.
MAX_SHARD_BYTES = 4 << 30
#: Largest ``index.json`` read, in bytes (an index of 100,000 shards is about 4 MB).
MAX_INDEX_BYTES = 16 << 20
_MIB, _GIB = 1 << 20, 1 << 30


@dataclass(frozen=True)
class ShardLimits:
    """What reading shards may cost, in bytes: ``member_bytes`` (a tar member, and a sample's members together),
    ``buffer_bytes`` (the shuffle buffer of one stream), ``shard_bytes`` (one shard, decompressed).
    ``ShardLimits.of(config)`` reads ``resnets train``'s ``max_member_mb``, ``shuffle_buffer_mb`` and
    ``max_shard_gb``."""

    member_bytes: int = MAX_MEMBER_BYTES
    buffer_bytes: int = SHUFFLE_BUFFER_BYTES
    shard_bytes: int = MAX_SHARD_BYTES

    def __post_init__(self) -> None:
        for name, flag in (("member_bytes", "--max-member-mb"), ("buffer_bytes", "--shuffle-buffer-mb"),
                           ("shard_bytes", "--max-shard-gb")):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise UserError(f"{flag} must be a whole number of at least 1, not {value!r}")

    @classmethod
    def of(cls, config: Any) -> ShardLimits:
        """The limits of ``config`` (a ``TrainConfig``, ``TrainDataSpec`` or any object with those attributes)."""
        def whole(name: str, default: int, unit: int) -> int:
            value = getattr(config, name, None)
            value = default // unit if value is None else value
            if type(value) is not int or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a whole number of at least 1, not {value!r}")
            return value * unit

        return cls(whole("max_member_mb", MAX_MEMBER_BYTES, _MIB), whole("shuffle_buffer_mb", SHUFFLE_BUFFER_BYTES,
                                                                         _MIB),
                   whole("max_shard_gb", MAX_SHARD_BYTES, _GIB))


# ---- writing --------------------------------------------------------------------------------------------


def _atomic_tar(path: Path, samples: list[tuple[str, str, bytes, int]]) -> None:
    """Write ``(key, ext, data, label)`` samples to the tar ``path`` atomically (see ``atomic_write``)."""
    import webdataset as wds

    def write(tmp: str) -> None:
        with open(tmp, "wb") as stream:
            writer = wds.TarWriter(stream, encoder=False)
            for key, ext, data, label in samples:
                writer.write({"__key__": key, ext: data, "cls": str(label).encode("ascii")})
            writer.close()

    atomic_write(path, write)


def write_split(split_dir: Path, out: Path, name: str, classes: list[str], *, max_count: int,
                max_bytes: int, shuffle_seed: int | None, skip_bad_images: bool,
                stats: bool, progress: bool = True) -> dict[str, Any]:
    """Write one split folder as ``<name>-NNNNNN.tar`` shards in ``out``; its entry for ``index.json``.

    ``progress``: show the images done on stderr (see :mod:`resnets.progress`)."""
    rows = scan_split(split_dir, classes)
    if not rows:
        raise UserError(f"no image files in {split_dir}")
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    pixels, sizes, bad = 0, set(), []
    shards: list[str] = []
    counts: list[int] = []
    pending: list[tuple[str, str, bytes, int]] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if pending:
            shard = f"{name}-{len(shards):06d}.tar"
            _atomic_tar(out / shard, pending)
            shards.append(shard)
            counts.append(len(pending))
            pending, pending_bytes = [], 0

    with Progress(len(rows), f"sharding {name}", enabled=progress) as bar:
        for index, (rel, _, _, label) in enumerate(rows):
            bar.to(index)
            path = split_dir / rel
            data = path.read_bytes()
            try:
                image = decode_rgb(data, path)  # checks every image once, at write time
            except BadImageError as exc:
                if not skip_bad_images:
                    raise
                bad.append([exc.path, exc.reason])
                continue
            sizes.add(tuple(image.shape[1:]))
            if stats:
                pix = image.to(torch.float64).div_(255)
                total += pix.sum(dim=(1, 2))
                squares += pix.square().sum(dim=(1, 2))
                pixels += pix.shape[1] * pix.shape[2]
            ext = Path(rel).suffix.lower().lstrip(".") or "img"
            pending.append((f"{index:09d}", ext, data, label))
            pending_bytes += len(data)
            if len(pending) >= max_count or pending_bytes >= max_bytes:
                flush()
        flush()
        bar.to(len(rows))
    if not shards:
        raise UserError(f"no readable images in {split_dir} ({len(bad)} bad)")
    entry: dict[str, Any] = {"shards": shards, "counts": counts, "total": sum(counts),
                             "pattern": _pattern(name, len(shards)), "bad_images": bad,
                             "image_size": list(next(iter(sizes))) if len(sizes) == 1 else None}
    if stats:
        mean = total / pixels
        entry["mean"] = mean.tolist()
        entry["std"] = (squares / pixels - mean.square()).clamp_min(0).sqrt().tolist()
    return entry


def _pattern(name: str, count: int) -> str:
    return f"{name}-000000.tar" if count == 1 else f"{name}-{{000000..{count - 1:06d}}}.tar"


def write_shards(root: str | os.PathLike[str], out: str | os.PathLike[str], *, max_count: int = 10000,
                 max_bytes: int = 1 << 30, shuffle_seed: int | None = 0, skip_bad_images: bool = False,
                 log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Write the image folder ``root`` as shards in ``out``; returns the ``index.json`` written there.

    ``root`` holds ``train/`` and optionally ``val/``/``test/`` (class sub-folders in each), or is itself one
    split of class folders (written as ``train``). A shard closes at ``max_count`` samples or ``max_bytes``.
    ``shuffle_seed`` (None: keep folder order) shuffles the training split before it is cut into shards.
    ``progress=False`` hides the images written per split (shown on stderr, see :mod:`resnets.progress`).
    """
    root, out = Path(root), Path(out)
    if max_count < 1 or max_bytes < 1:
        raise UserError("max_count and max_bytes must be positive")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    splits = [(n, root / n) for n in ("train", "val", "test") if (root / n).is_dir()]
    if not splits:
        splits = [("train", root)]
    elif splits[0][0] != "train":
        raise UserError(f"{root} has {splits[0][0]}/ but no train/ folder")
    classes = find_classes(splits[0][1])
    out.mkdir(parents=True, exist_ok=True)
    if (out / INDEX_NAME).exists():
        raise UserError(f"{out} already holds shards ({INDEX_NAME}); pick an empty --out")
    index: dict[str, Any] = {"format": FORMAT, "source": str(root), "classes": classes, "splits": {}}
    for name, folder in splits:
        if name != "train":
            extra = [c for c in find_classes(folder, allow_empty=True) if c not in classes]
            if extra:
                raise UserError(f"{folder} has class folder(s) {', '.join(extra)} not in train/")
        entry = write_split(folder, out, name, classes, max_count=max_count, max_bytes=max_bytes,
                            shuffle_seed=shuffle_seed if name == "train" else None,
                            skip_bad_images=skip_bad_images, stats=name == "train", progress=progress)
        index["splits"][name] = entry
        log(f"{name}: {entry['total']} images in {len(entry['shards'])} shard(s) {out / entry['pattern']}"
            + (f", {len(entry['bad_images'])} bad image(s) skipped" if entry["bad_images"] else ""))
    atomic_write(out / INDEX_NAME, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1) + "\n"))
    return index


# ---- locating ---------------------------------------------------------------------------------------------


CIFAR_ARCHIVES = {spec["archive"] for spec in DATASETS.values()}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def is_shard_spec(spec: str) -> bool:
    """Whether a ``--data`` spec names WebDataset shards (a ``.tar`` pattern or URL, a pipe, a shard folder)."""
    text = str(spec)
    if Path(text).name in CIFAR_ARCHIVES and Path(text).is_file():
        return False  # the official CIFAR archive, read by resnets.data.cifar
    if text.startswith("pipe:") or re.search(r"\.tar(\.gz)?(\}|$)", text.split("::")[0]):
        return True
    return Path(text).is_dir() and (Path(text) / INDEX_NAME).is_file()


@dataclass
class ShardSet:
    """One split as shards: their URLs, the class names, the sample count and the image statistics."""

    urls: list[str]
    split: str
    classes: list[str]
    total: int
    counts: list[int] | None = None
    image_size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    index: dict[str, Any] = field(default_factory=dict)
    base: str = ""

    @property
    def small_images(self) -> bool:
        """Whether the images all share one size no larger than :data:`SMALL_IMAGE_MAX_SIDE`."""
        return self.image_size is not None and max(self.image_size) <= SMALL_IMAGE_MAX_SIDE


def expand(spec: str) -> list[str]:
    """The shard URLs of a spec: brace patterns expanded, ``::`` separating several lists."""
    from braceexpand import braceexpand

    urls: list[str] = []
    for part in spec.split("::"):
        urls.extend(braceexpand(part))
    return urls


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def check_shard_name(name: object, source: str) -> str:
    """``name`` if it is a plain file name (``[A-Za-z0-9_][A-Za-z0-9_.+-]*``, no ``..``), else a UserError.

    Every shard name read from a file goes through here before it is joined onto the data path, so none
    can become a ``pipe:`` command, a URL, an absolute path or a path outside the shard folder. The
    error names ``source`` (the file the name was read from) and the entry.
    """
    if isinstance(name, str) and _PLAIN_NAME.fullmatch(name) and ".." not in name:
        return name
    shown = repr(name) if len(repr(name)) <= 200 else repr(name)[:200] + "..."
    raise UserError(f"{source}: shard entry {shown} is not a plain file name inside the shard folder (no scheme, "
                    "absolute path, '/', '..' or shell characters); write the shards again with resnets shard")


def _check_index(index: dict[str, Any], source: str) -> None:
    """Refuse an index whose classes, shard names or counts are not what :func:`write_shards` writes."""
    classes, splits = index.get("classes"), index.get("splits")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{source}: 'classes' is not a list of class names; write the shards again")
    if not isinstance(splits, dict) or not all(isinstance(e, dict) for e in splits.values()):
        raise UserError(f"{source}: 'splits' is not a mapping of split names to entries; write the shards again")
    for split, entry in splits.items():
        shards, counts = entry.get("shards"), entry.get("counts")
        if not isinstance(shards, list) or not shards:
            raise UserError(f"{source}: split {split!r} has no list of shards; write the shards again")
        for name in shards:
            check_shard_name(name, source)
        if (not isinstance(counts, list) or len(counts) != len(shards)
                or not all(type(n) is int and n >= 0 for n in counts)):
            raise UserError(f"{source}: split {split!r} needs one sample count (a whole number >= 0) per shard; "
                            "write the shards again")


def _shard_urls(base: str, names: Sequence[Any], source: str) -> list[str]:
    """``names`` (checked by :func:`check_shard_name`) joined onto ``base``."""
    return [_join(base, check_shard_name(name, source)) for name in names]


def _join(base: str, name: str) -> str:
    if _URL.match(base) and not re.match(r"^[a-zA-Z]:[\\/]", base):
        return urllib.parse.urljoin(base.rstrip("/") + "/", name)
    return str(Path(base) / name)


def _dirname(url: str) -> str:
    if url.startswith("pipe:"):
        return ""
    if _URL.match(url) and not url.startswith("file:"):
        return url.rsplit("/", 1)[0]
    return str(Path(url.removeprefix("file:")).parent)


def _read_index(base: str) -> dict[str, Any] | None:
    """``index.json`` at ``base`` (a folder or URL prefix), or None if there is none."""
    if not base:
        return None
    where = _join(base, INDEX_NAME)
    if not _URL.match(base) or base.startswith("file:"):
        path = Path(base.removeprefix("file:")) / INDEX_NAME
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_INDEX_BYTES:
            raise _index_too_large(where)
        with open(path, "rb") as fh:
            raw = fh.read(MAX_INDEX_BYTES + 1)
    else:
        from webdataset.gopen import gopen

        try:
            with gopen(where) as f:
                raw = f.read(MAX_INDEX_BYTES + 1)
        except Exception:  # noqa: BLE001 - any failure to fetch means "no index"
            return None
    if len(raw) > MAX_INDEX_BYTES:
        raise _index_too_large(where)
    try:
        index = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{where} is not valid JSON: {str(exc).splitlines()[0][:160]}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UserError(f"{_join(base, INDEX_NAME)} is not a resnets shard index")
    _check_index(index, _join(base, INDEX_NAME))
    return index


def _index_too_large(where: str) -> UserError:
    return UserError(f"{where} is larger than {MAX_INDEX_BYTES:,} bytes, the limit for a shard index "
                     "(resnets.data.shards.MAX_INDEX_BYTES); it is not one resnets shard wrote: write the shards again")


def _split_of(urls: list[str], index: dict[str, Any]) -> str | None:
    names = {Path(u).name for u in urls}
    for split, entry in index["splits"].items():
        if names <= set(entry["shards"]):
            return split
    return None


def _from_entry(urls: list[str], split: str, index: dict[str, Any], base: str) -> ShardSet:
    entry = index["splits"][split]
    count_of = dict(zip(entry["shards"], entry["counts"], strict=True))
    counts = [count_of[Path(u).name] for u in urls]
    train = index["splits"].get("train", {})
    size = entry.get("image_size")
    return ShardSet(urls, split, list(index["classes"]), sum(counts), counts,
                    tuple(size) if size else None, train.get("mean"), train.get("std"), index, base)


def open_shards(spec: str, limits: ShardLimits | None = None) -> ShardSet:
    """The shards a spec names, with class names and counts from ``index.json`` beside them (or a scan, under
    ``limits``)."""
    text = str(spec)
    if Path(text).is_dir():
        index = _read_index(text)
        if index is None or "train" not in index["splits"]:
            raise UserError(f"{text} holds no {INDEX_NAME} with a train split")
        names = index["splits"]["train"]["shards"]
        source = str(Path(text) / INDEX_NAME)
        return _from_entry([str(Path(text) / check_shard_name(s, source)) for s in names], "train", index, text)
    urls = expand(text)
    if not urls:
        raise UserError(f"no shards in {text!r}")
    base = _dirname(urls[0])
    index = _read_index(base)
    if index is not None:
        split = _split_of(urls, index)
        if split is None:
            raise UserError(f"{text}: shards not listed in {_join(base, INDEX_NAME)}")
        return _from_entry(urls, split, index, base)
    return scan_shards(urls, limits=limits)


def scan_shards(urls: list[str], split: str = "train", *, limits: ShardLimits | None = None) -> ShardSet:
    """A ShardSet from reading every shard once (no ``index.json``): counts, and classes ``0..max label``."""
    counts, top = [], -1
    for url in urls:
        n = 0
        for sample in _samples([url], limits):
            top = max(top, _label(sample))
            n += 1
        counts.append(n)
    if not sum(counts):
        raise UserError(f"no samples in {urls[0]}{' ...' if len(urls) > 1 else ''}")
    return ShardSet(urls, split, [str(i) for i in range(top + 1)], sum(counts), counts)


def sibling_split(shards: ShardSet, names: Sequence[str] = ("val", "test")) -> ShardSet | None:
    """The evaluation split written beside ``shards`` (``val`` or ``test`` in the same index), if any."""
    if not shards.index:
        return None
    for name in names:
        entry = shards.index["splits"].get(name)
        if entry:
            urls = _shard_urls(shards.base, entry["shards"], _join(shards.base, INDEX_NAME))
            return _from_entry(urls, name, shards.index, shards.base)
    return None


# ---- reading ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadMember:
    """A tar member left unread (too large, or named outside the shard); its sample fails with ``reason``."""

    reason: str


def _member_problem(info: tarfile.TarInfo, max_bytes: int, sample_bytes: int) -> str | None:
    """Why the member ``info`` must not be read, or None; ``sample_bytes``: its sample's members so far, it too."""
    name = info.name
    if not name or name.startswith("/") or "\\" in name or "\0" in name or ".." in PurePosixPath(name).parts:
        return "member name is not a relative path inside the shard"
    if info.size > max_bytes:
        return f"member of {info.size} bytes exceeds the limit of {max_bytes} bytes (raise it with --max-member-mb)"
    if sample_bytes > max_bytes:
        return (f"the sample's members reach {sample_bytes} bytes, over the limit of {max_bytes} bytes for one "
                "sample (raise it with --max-member-mb)")
    return None


def _tar_files(urls: Sequence[str], limits: ShardLimits) -> Iterator[dict[str, Any]]:
    """WebDataset's file records (fname, data, url; ``{}`` after each shard); unsafe members as BadMember.

    Each member's end in the decompressed stream is checked against ``limits.shard_bytes`` before the member is
    read or skipped, so a compression bomb costs at most that much decompression."""
    from webdataset.gopen import gopen
    from webdataset.tariterators import base_plus_ext

    for url in urls:
        stream = gopen(url, "rb")
        whole = False
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=CappedTarInfo)
            key, held = None, 0
            for info in tar:
                check_end(info, limits.shard_bytes)
                if not info.isreg() or re.match(r"__[^/]*__($|/)", info.name):  # WebDataset's metadata
                    continue
                prefix = base_plus_ext(info.name)[0]
                if prefix != key:
                    key, held = prefix, 0
                held += info.size + len(info.name)
                problem = _member_problem(info, limits.member_bytes, held)
                member = tar.extractfile(info) if problem is None else None
                data = member.read() if member is not None else BadMember(problem or "cannot read member")
                yield {"fname": info.name, "data": data, "__url__": url}
                tar.members = []
            whole = True
        except HeaderTooLarge as exc:
            raise UserError(f"shard {url}: {exc}; the shard is damaged or crafted, write it again") from None
        except StreamTooLarge as exc:
            raise UserError(f"shard {url}: {exc} per shard; the shard is damaged or crafted, or raise the limit with "
                            "--max-shard-gb") from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise UserError(f"cannot read shard {url} ({exc or type(exc).__name__}): not a whole tar file; write it "
                            "again with resnets shard, or give --data a CIFAR archive by its own name") from None
        finally:
            if not whole:  # an error, or the reader stopped early: close without raising over it
                with contextlib.suppress(Exception):
                    stream.close()
        stream.close()
        yield {}


def _samples(urls: Sequence[str], limits: ShardLimits | None = None) -> Iterator[dict[str, Any]]:
    """The samples (dicts of key, url and member bytes or :class:`BadMember`) of ``urls``, in order."""
    from webdataset.tariterators import group_by_keys

    return group_by_keys(_tar_files(urls, limits or ShardLimits()))


def _sample_bytes(sample: dict[str, Any]) -> int:
    """The bytes a sample holds: its members' data and names (the URL is shared by the shard's samples)."""
    return sum(len(k) + (len(v) if isinstance(v, (bytes, str)) else 0) for k, v in sample.items() if k != "__url__")


def _check_members(sample: dict[str, Any]) -> None:
    """BadImageError naming the shard and member if any member of ``sample`` was left unread."""
    for ext, value in sample.items():
        if isinstance(value, BadMember):
            raise BadImageError(f"{sample.get('__url__')}:{sample.get('__key__')}.{ext}", value.reason)


def _label(sample: dict[str, Any]) -> int:
    if "cls" not in sample:
        raise UserError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no .cls member")
    _check_members(sample)
    try:
        return int(sample["cls"])
    except ValueError:
        raise UserError(f"sample {sample.get('__key__')} in {sample.get('__url__')}: the .cls member is not a "
                        "whole number") from None


def _image_bytes(sample: dict[str, Any]) -> tuple[str, bytes]:
    for key, value in sample.items():
        if not key.startswith("__") and key != "cls" and isinstance(value, bytes):
            return key, value
    raise UserError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no image member")


def decode_sample(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """(uint8 3xHxW image, label) of a shard sample; BadImageError names the shard and member.

    Images decode under the image-folder pixel limit (:data:`~resnets.data.images.MAX_IMAGE_PIXELS`).
    """
    _check_members(sample)
    ext, data = _image_bytes(sample)
    path = f"{sample.get('__url__')}:{sample.get('__key__')}.{ext}"
    return decode_rgb(data, path, max_pixels=MAX_IMAGE_PIXELS), _label(sample)


def rank_shards(urls: Sequence[str], seed: int, epoch: int, rank: int, world_size: int) -> list[str]:
    """This rank's shards for ``epoch``: a permutation seeded by (seed, epoch), then every ``world_size``-th."""
    order = list(urls)
    random.Random(derive_seed("shards", seed, epoch)).shuffle(order)
    mine = order[rank::world_size]
    if not mine:  # fewer shards than ranks: share them round-robin
        mine = [order[rank % len(order)]]
    return mine


def stream_samples(urls: Sequence[str], seed: int, buffer: int = SHUFFLE_BUFFER, *,
                   limits: ShardLimits | None = None) -> Iterator[dict[str, Any]]:
    """Endless samples of ``urls``: pass ``p`` reads them in a (seed, p) order through a seeded shuffle buffer
    of at most ``buffer`` samples and ``limits.buffer_bytes`` bytes: a sample that does not fit takes a random
    one's place, and random ones leave until the rest fits again (the buffer holds at most one sample more)."""
    limits = limits or ShardLimits()
    for p in range(1 << 62):
        rng = random.Random(derive_seed("shards", seed, p))
        order = list(urls)
        if p:
            rng.shuffle(order)
        pool: list[dict[str, Any]] = []
        held = 0
        for sample in _samples(order, limits):
            size = _sample_bytes(sample)
            if len(pool) < buffer and (not pool or held + size <= limits.buffer_bytes):
                pool.append(sample)
                held += size
                continue
            i = rng.randrange(len(pool))
            held += size - _sample_bytes(pool[i])
            pool[i], sample = sample, pool[i]
            yield sample
            while held > limits.buffer_bytes and len(pool) > 1:  # larger samples came in: let some go
                i = rng.randrange(len(pool))
                pool[i], pool[-1] = pool[-1], pool[i]
                out = pool.pop()
                held -= _sample_bytes(out)
                yield out
        rng.shuffle(pool)
        yield from pool


def _skip(exc: BadImageError, skip_bad_images: bool) -> None:
    """Re-raise ``exc`` unless ``skip_bad_images``; then warn that its sample is skipped."""
    if not skip_bad_images:
        raise exc
    warnings.warn(f"skipping {exc}", stacklevel=3)


class _TrainStream(IterableDataset):
    """Batches ``start..steps-1`` of one rank's epoch; DataLoader worker ``i`` makes every ``S``-th of them.

    The epoch, the first batch and the crop side are read from ``position`` (a shared-memory tensor the main
    process sets before each pass), so persistent workers follow the epochs; the rank's shards of the epoch are
    drawn here from it, and stream ``s`` of ``S`` reads shards ``s::S`` of them. ``crop``: random-resized crops of
    the epoch's side (:func:`~resnets.data.crops.train_crop`, uint8, flipped if ``flip``), each drawn from (seed,
    epoch, rank, batch, slot); else ``transform`` of the decoded image, its randomness drawn from the batch's
    seed. ``skipped`` counts the bad samples skipped in this process.
    """

    def __init__(self, urls: list[str], *, per_rank: int, steps: int, streams: int, seed: int, rank: int,
                 world_size: int, position: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None,
                 crop: bool, flip: bool, skip_bad_images: bool, limits: ShardLimits | None = None) -> None:
        self.urls, self.per_rank, self.steps, self.streams = urls, per_rank, steps, streams
        self.base_seed, self.rank, self.world_size, self.position = seed, rank, world_size, position
        self.transform, self.crop, self.flip, self.skip_bad_images = transform, crop, flip, skip_bad_images
        self.limits, self.skipped = limits or ShardLimits(), 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start, size = (int(v) for v in self.position.tolist())
        shards = rank_shards(self.urls, self.base_seed, epoch, self.rank, self.world_size)
        seed = derive_seed("shards", self.base_seed, epoch, self.rank)
        info = get_worker_info()
        worker = info.id if info is not None else 0
        stride = self.streams if info is not None else 1
        # DataLoader output j comes from worker j % S; output j is batch start + j, of stream (start + j) % S.
        first = start + worker
        if first >= self.steps:
            return
        stream = first % stride
        position = first // stride  # batches of this stream already consumed
        samples = stream_samples(shards[stream::stride] or shards, derive_seed("shards", seed, stream),
                                 limits=self.limits)
        for _ in range(position * self.per_rank):
            next(samples)
        for b in range(first, self.steps, stride):
            if self.crop:
                yield self._batch(samples, seed, b, size)
                continue
            with torch.random.fork_rng(devices=[]):
                # augmentation is a function of the batch
                torch.manual_seed(derive_seed("shards", seed, "batch", b))
                batch = self._batch(samples, seed, b, size)
            yield batch

    def _batch(self, samples: Iterator[dict[str, Any]], seed: int, b: int,
               size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        while len(images) < self.per_rank:
            sample = next(samples)
            try:
                if self.crop:
                    _check_members(sample)
                    ext, data = _image_bytes(sample)
                    path = f"{sample.get('__url__')}:{sample.get('__key__')}.{ext}"
                    image = train_crop(data, path, derive_seed("shards", seed, "crop", b, len(images)), size,
                                       flip=self.flip)
                    label = _label(sample)
                else:
                    image, label = decode_sample(sample)
                    assert self.transform is not None
                    image = self.transform(image)
            except BadImageError as exc:
                _skip(exc, self.skip_bad_images)
                self.skipped += 1
                continue
            images.append(image)
            labels.append(label)
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def small_image_transform(pad: int, flip: bool, mean: Sequence[float], std: Sequence[float]
                          ) -> Callable[[torch.Tensor], torch.Tensor]:
    """CIFAR-style training transform of a uint8 image: zero-pad ``pad``, random crop back, flip, normalise."""
    from torchvision.transforms import v2

    steps: list[Any] = []
    if pad:
        steps.append(_PadCrop(pad))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


class _PadCrop(torch.nn.Module):
    """Zero-pad by ``pad`` and crop a random window of the original size (the paper's CIFAR augmentation)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        padded = torch.nn.functional.pad(image, (self.pad,) * 4)
        dy, dx = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
        return padded[..., dy:dy + h, dx:dx + w]


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 image -> normalised float image, no augmentation."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


class ShardBatches(TrainBatches):
    """Training batches streamed from shards: ``len`` global steps per epoch, ``set_epoch``, ``iter_from``.

    Each rank yields ``batch_size // world_size`` images per step (``batch_size`` is the global batch), on the
    device through ``feed`` (:class:`~resnets.data.feed.DeviceFeed`; None: the CPU batches as they are):
    ``random_resized_crop``: uint8 random-resized crops of side ``image_size`` (``full_size``), normalised by the
    feed, resizable (progressive resizing); else CIFAR-style (pad, crop, flip) float images, or ``transform``'s,
    of the shards' image height (:data:`SMALL_IMAGE_MAX_SIDE` if it varies). The loader's ``workers`` are kept
    from epoch to epoch (:meth:`close` stops them). ``limits``: what reading may cost (:class:`ShardLimits`).
    """

    def __init__(self, shards: ShardSet, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 0, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 pad: int = 4, flip: bool = True, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 image_size: int | None = None, skip_bad_images: bool = False,
                 limits: ShardLimits | None = None, pin_memory: bool = False, random_resized_crop: bool = False,
                 feed: DeviceFeed | None = None) -> None:
        if batch_size % world_size:
            raise UserError(f"the global batch size {batch_size} must be divisible by the number of processes "
                            f"{world_size}")
        self.full_size = image_size or (shards.image_size[0] if shards.image_size else SMALL_IMAGE_MAX_SIDE)
        self.shards, self.batch_size, self.seed = shards, batch_size, seed
        self.rank, self.world_size, self.workers = rank, world_size, max(0, workers)
        self.mean = list(mean or shards.mean or IMAGENET_MEAN)
        self.std = list(std or shards.std or IMAGENET_STD)
        self.crop, self.flip, self.feed = random_resized_crop, flip, feed
        self.resizable = random_resized_crop
        self.transform = None if random_resized_crop else transform or small_image_transform(pad, flip, self.mean,
                                                                                              self.std)
        self.skip_bad_images, self.limits = skip_bad_images, limits or ShardLimits()
        self.pin_memory = pin_memory  # CUDA: page-locked batches, so the copy to the GPU overlaps compute
        self.epoch = 0
        self.size = self.full_size
        self._position = torch.zeros(3, dtype=torch.int64).share_memory_()  # epoch, start, size: seen by workers
        self._loader: DataLoader | None = None
        self._stream: _TrainStream | None = None

    def __len__(self) -> int:
        return self.shards.total // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration replays."""
        self.epoch = int(epoch)

    def set_image_size(self, size: int | None) -> None:
        """Crop to side ``size`` from the next pass on (None: ``full_size``); random-resized crops only."""
        if not self.resizable:
            TrainBatches.set_image_size(self, size)
        if size is not None and size < 1:
            raise UserError(f"image size must be positive, got {size}")
        self.size = self.full_size if size is None else int(size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of the current epoch from step ``start`` on."""
        if self._stream is None:
            mine = rank_shards(self.shards.urls, self.seed, 0, self.rank, self.world_size)  # as many every epoch
            workers = min(self.workers, len(mine))
            self._stream = _TrainStream(
                self.shards.urls, per_rank=self.batch_size // self.world_size, steps=len(self),
                streams=max(1, workers), seed=self.seed, rank=self.rank, world_size=self.world_size,
                position=self._position, transform=self.transform, crop=self.crop, flip=self.flip,
                skip_bad_images=self.skip_bad_images, limits=self.limits)
            if workers:
                self._loader = DataLoader(self._stream, batch_size=None, num_workers=workers, in_order=True,
                                          pin_memory=self.pin_memory, persistent_workers=True)
        self._position.copy_(torch.tensor([self.epoch, max(0, start), self.size]))  # before the workers resume
        batches = self._loader if self._loader is not None else self._stream
        yield from (self.feed(batches) if self.feed is not None else batches)

    def close(self) -> None:
        """Stop the worker processes now (they are otherwise kept as long as these batches)."""
        loader, self._loader, self._stream = self._loader, None, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


class _EvalStream(IterableDataset):
    """Every sample of ``urls`` exactly once over all (rank, worker) pairs: sample ``i`` goes to ``i % parts``.

    ``skipped`` counts the bad samples skipped in this process.
    """

    def __init__(self, urls: list[str], batch_size: int, rank: int, world_size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor], skip_bad_images: bool,
                 limits: ShardLimits | None = None) -> None:
        self.urls, self.batch_size, self.rank, self.world_size = urls, batch_size, rank, world_size
        self.transform, self.skip_bad_images = transform, skip_bad_images
        self.limits, self.skipped = limits or ShardLimits(), 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        parts, part = self.world_size * workers, self.rank + self.world_size * worker
        images: list[torch.Tensor] = []
        labels: list[int] = []
        for i, sample in enumerate(_samples(self.urls, self.limits)):
            if i % parts != part:
                continue
            try:
                image, label = decode_sample(sample)
            except BadImageError as exc:
                _skip(exc, self.skip_bad_images)
                self.skipped += 1
                continue
            images.append(self.transform(image))
            labels.append(label)
            if len(images) == self.batch_size:
                yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)
                images, labels = [], []
        if images:
            yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def eval_loader(shards: ShardSet, batch_size: int, *, rank: int = 0, world_size: int = 1, workers: int = 0,
                transform: Callable[[torch.Tensor], torch.Tensor], skip_bad_images: bool = False,
                limits: ShardLimits | None = None, pin_memory: bool = False) -> DataLoader:
    """Evaluation batches of this rank's share of ``shards`` (each sample on exactly one rank), read under
    ``limits`` (:class:`ShardLimits`); ``pin_memory`` for a CUDA consumer."""
    stream = _EvalStream(shards.urls, batch_size, rank, world_size, transform, skip_bad_images, limits)
    return DataLoader(stream, batch_size=None, num_workers=max(0, workers), pin_memory=pin_memory)
