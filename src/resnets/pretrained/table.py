"""The known pretrained weights, as data: one :class:`Entry` per file, named as timm names them (``arch.tag``).

Nothing here imports PyTorch (``resnets weights list`` stays fast). A checksum is ``"sha256:HEX"`` or
``"md5:HEX"`` (Keras' own); HEX may be a prefix where only that much is published (torchvision's file names carry
the first 8 hex digits of the SHA-256, which ``torch.hub``'s ``check_hash`` checks the same way). Entries from the
Hugging Face Hub have none here: the Hub's cache names each file by its SHA-256, which is checked instead.

More entries (a site's own, or a test's): :func:`registered` for a while, or a JSON list of entry objects in the
file named by ``$RESNETS_WEIGHTS_TABLE``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import UserError

TABLE_ENV = "RESNETS_WEIGHTS_TABLE"
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CHECKSUM = re.compile(r"^(sha256:[0-9a-f]{8,64}|md5:[0-9a-f]{32})$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9_]+$")


@dataclass(frozen=True)
class Entry:
    """One pretrained weights file: what it is, where it comes from, how to check it, and how it was fed.

    ``url``: the file (for a Hub entry, the page); ``cache``: ``"torch"`` (torchvision's checkpoints folder, the
    URL's file name), ``"hf"`` (the Hugging Face cache: ``hf_repo``/``hf_file``) or ``"keras"`` (Keras' models
    folder). ``format``: ``"state_dict"`` (a ``.pth``/``.safetensors`` for ``arch``) or ``"keras-h5"`` (a
    keras.applications weights file, read through the Keras import). ``options``: ``create_model`` options it needs
    (``shortcut``, ``shortcut_pad``). ``resize``/``crop``: the shorter side before the centre crop and the crop,
    as the published top-1 was measured; ``interpolation`` that resize's (resnets resizes bilinear, antialiased).
    """

    name: str
    arch: str
    variant: str
    source: str
    licence: str
    url: str
    checksum: str = ""
    size_mb: float = 0.0  # as published (MiB), for the table; not checked
    size: int = 0  # exact bytes where known: checked against the download when given
    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN_STD[0]
    std: tuple[float, float, float] = IMAGENET_MEAN_STD[1]
    classes: str = "imagenet"  # "imagenet" (the shipped 1,000 names) or "cifar10"
    top1: float = 0.0
    top1_source: str = ""
    aliases: tuple[str, ...] = ()
    cache: str = "torch"
    format: str = "state_dict"
    hf_repo: str = ""
    hf_file: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def file_name(self) -> str:
        """The name the file has in its cache (the URL's last part; the Hub's file name)."""
        return self.hf_file or self.url.rsplit("/", 1)[-1].split("?", 1)[0]

    @property
    def algorithm(self) -> str:
        return self.checksum.split(":", 1)[0] if self.checksum else ""

    @property
    def digest(self) -> str:
        return self.checksum.split(":", 1)[1] if self.checksum else ""


_TV = "https://download.pytorch.org/models/"
_TV_V1 = "torchvision docs (ResNet*_Weights.IMAGENET1K_V1, acc@1)"
_TV_V2 = "torchvision docs (ResNet*_Weights.IMAGENET1K_V2, acc@1)"
_RSB = "Wightman, Touvron, Jegou, ResNet strikes back (2021), Table 1, ImageNet val at 224"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
_CHEN = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/resnet/"
_AKA = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


def _tv(depth: int, tag: str, digest: str, mb: float, top1: float, resize: int = 256) -> Entry:
    v2 = tag == "tv2_in1k"
    return Entry(f"resnet{depth}.{tag}", f"resnet{depth}", "v1.5", "torchvision", "BSD-3-Clause",
                 f"{_TV}resnet{depth}-{digest}.pth", f"sha256:{digest}", mb, resize=resize, top1=top1,
                 top1_source=_TV_V2 if v2 else _TV_V1,
                 aliases=(f"resnet{depth}.IMAGENET1K_{'V2' if v2 else 'V1'}",))


def _timm(tag: str, top1: float, train: int) -> Entry:
    return Entry(f"resnet50.{tag}", "resnet50", "v1.5", "timm (Hugging Face Hub)", "Apache-2.0",
                 f"https://huggingface.co/timm/resnet50.{tag}", "", 97.8, resize=235, crop=224,
                 interpolation="bicubic", top1=top1, top1_source=_RSB, cache="hf", hf_repo=f"timm/resnet50.{tag}",
                 hf_file="model.safetensors",
                 notes=f"trained at {train} px; timm evaluates with crop_pct 0.95, bicubic")


def _keras(depth: int, md5: str, mb: float, top1: float) -> Entry:
    return Entry(f"resnet{depth}.keras_in1k", f"resnet{depth}", "v1", "Keras applications", "MIT (Keras); "
                 "weights from Kaiming He's original release", f"{_KERAS}resnet{depth}_weights_tf_dim_ordering_tf_kernels.h5",
                 f"md5:{md5}", mb, top1=top1, top1_source="keras.io/api/applications (top-1)", cache="keras",
                 format="keras-h5", notes="caffe preprocessing folded into conv1 by the Keras import")


def _chen(depth: int, digest: str, top1: float) -> Entry:
    return Entry(f"resnet{depth}.chenyaofo_cifar10", f"resnet{depth}", "v1", "chenyaofo/pytorch-cifar-models",
                 "BSD-3-Clause", f"{_CHEN}cifar10_resnet{depth}-{digest}.pt", f"sha256:{digest}", 0.0, resize=32,
                 crop=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), classes="cifar10",
                 top1=top1, top1_source="chenyaofo/pytorch-cifar-models README (CIFAR-10 top-1)",
                 options={"shortcut": "B"}, notes="projection shortcuts (1x1 + BN)")


def _aka(depth: int, digest: str, top1: float) -> Entry:
    return Entry(f"resnet{depth}.akamaster_cifar10", f"resnet{depth}", "v1", "akamaster/pytorch_resnet_cifar10",
                 "BSD-2-Clause", f"{_AKA}resnet{depth}-{digest}.th", f"sha256:{digest}", 0.0, resize=32, crop=32,
                 classes="cifar10", top1=top1,
                 top1_source="akamaster/pytorch_resnet_cifar10 README (100% - test error of this impl.)",
                 options={"shortcut": "A", "shortcut_pad": "both"},
                 notes="option A with the zeros on both sides; the 8 hex digits of its file name are taken as a "
                       "SHA-256 prefix (unconfirmed)")


#: The built-in table. Every figure is the source's own; none of these files could be fetched where this table
#: was written (no network), so each checksum is the published one, unconfirmed by a download (docs/weights.md).
BUILTIN: tuple[Entry, ...] = (
    _tv(18, "tv_in1k", "f37072fd", 44.661, 69.758),
    _tv(34, "tv_in1k", "b627a593", 83.275, 73.314),
    _tv(50, "tv_in1k", "0676ba61", 97.781, 76.130),
    _tv(50, "tv2_in1k", "11ad3fa6", 97.79, 80.858, resize=232),
    _tv(101, "tv_in1k", "63fe2227", 170.511, 77.374),
    _tv(101, "tv2_in1k", "cd907fc2", 170.53, 81.886, resize=232),
    _tv(152, "tv_in1k", "394f9c45", 230.434, 78.312),
    _tv(152, "tv2_in1k", "f82ba261", 230.474, 82.284, resize=232),
    _timm("a1_in1k", 80.4, 224),
    _timm("a2_in1k", 79.8, 224),
    _timm("a3_in1k", 78.1, 160),
    _chen(20, "4118986f", 92.60),
    _chen(32, "ef93fc4d", 93.53),
    _chen(44, "2a3cabcb", 94.01),
    _chen(56, "187c023a", 94.37),
    _aka(20, "12fca82f", 91.73),
    _aka(32, "d509ac18", 92.63),
    _aka(44, "014dd654", 93.10),
    _aka(56, "4bfd9763", 93.39),
    _aka(110, "1d1ed7c2", 93.68),
    _keras(50, "2cb95161c43110f7111970584f804107", 98.0, 74.9),
    _keras(101, "f1aeb4b969a6efcfb50fad2f0c20cfc5", 171.0, 76.4),
    _keras(152, "100835be76be38e30d865e96f2aaae62", 232.0, 76.6),
)

_extra: list[Entry] = []


def check_entry(entry: Entry) -> Entry:
    """``entry`` if it is well formed (name ``arch.tag``, a checksum or a Hub file, a known cache); else UserError."""
    where = f"weights entry {entry.name!r}"
    if not _NAME.match(entry.name) or not entry.name.startswith(entry.arch + "."):
        raise UserError(f"{where}: a name is ARCH.TAG in lower case (e.g. resnet50.tv2_in1k), ARCH its model")
    if entry.cache not in ("torch", "hf", "keras") or entry.format not in ("state_dict", "keras-h5"):
        raise UserError(f"{where}: cache must be torch, hf or keras and format state_dict or keras-h5")
    if entry.cache == "hf":
        if not entry.hf_repo or not entry.hf_file:
            raise UserError(f"{where}: a Hub entry needs hf_repo and hf_file")
    elif not _CHECKSUM.match(entry.checksum) or not entry.url.startswith(("https://", "http://")):
        raise UserError(f"{where}: needs an http(s) url and a checksum sha256:HEX (8 to 64 digits) or md5:HEX")
    if "/" in entry.file_name or entry.file_name in ("", ".", ".."):
        raise UserError(f"{where}: its file name {entry.file_name!r} is not a plain name")
    if entry.classes not in ("imagenet", "cifar10"):
        raise UserError(f"{where}: classes must be imagenet or cifar10")
    return entry


def entry_from_dict(data: dict[str, Any]) -> Entry:
    """An :class:`Entry` from a JSON object (lists for the tuples); UserError for unknown or missing fields."""
    known = {f.name for f in fields(Entry)}
    if not isinstance(data, dict) or not set(data) <= known:
        extra = sorted(set(data) - known) if isinstance(data, dict) else []
        raise UserError(f"a weights table entry must be an object of {', '.join(sorted(known))}; unknown: "
                        f"{', '.join(extra) or type(data).__name__}")
    values = {k: tuple(v) if k in ("mean", "std", "aliases") and isinstance(v, list) else v for k, v in data.items()}
    try:
        return check_entry(Entry(**values))
    except TypeError as exc:
        raise UserError(f"a weights table entry is incomplete ({exc})") from None


def entry_to_dict(entry: Entry) -> dict[str, Any]:
    return asdict(entry)


@contextlib.contextmanager
def registered(*entries: Entry) -> Iterator[None]:
    """``entries`` are in the table inside the ``with`` block (tests; a program's own weights)."""
    checked = [check_entry(e) for e in entries]
    _extra.extend(checked)
    try:
        yield
    finally:
        for e in checked:
            _extra.remove(e)


def _from_env() -> list[Entry]:
    path = os.environ.get(TABLE_ENV)
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"${TABLE_ENV}={path}: not a readable JSON weights table ({exc})") from None
    if not isinstance(data, list):
        raise UserError(f"${TABLE_ENV}={path}: a weights table is a JSON list of entries")
    return [entry_from_dict(d) for d in data]


def entries() -> list[Entry]:
    """Every known entry: the built-in table, then ``$RESNETS_WEIGHTS_TABLE``'s, then :func:`registered` ones."""
    return [*BUILTIN, *_from_env(), *_extra]


def find(name: str, arch: str | None = None) -> Entry | None:
    """The entry ``name`` names (its name or an alias, e.g. ``resnet50.IMAGENET1K_V2``; with ``arch``, a tag alone:
    ``IMAGENET1K_V2``, ``tv2_in1k``), or None."""
    table = entries()
    wanted = [name] + ([f"{arch}.{name}"] if arch and "." not in name else [])
    for entry in reversed(table):  # a later (site or test) entry overrides a built-in one of the same name
        if entry.name in wanted or any(a in wanted for a in entry.aliases):
            return entry
    return None


def lookup(name: str, arch: str | None = None) -> Entry:
    """:func:`find`, or UserError naming the closest known names."""
    entry = find(name, arch)
    if entry is None:
        names = [e.name for e in entries()]
        close = difflib.get_close_matches(name, names, n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UserError(f"unknown weights {name!r}; {hint}see resnets weights list")
    if arch is not None and entry.arch != arch:
        raise UserError(f"weights {entry.name} are for {entry.arch}, not {arch}: build a {entry.arch} or choose "
                        f"weights for {arch} (resnets weights list)")
    return entry


def looks_like_name(text: str) -> bool:
    """Whether ``text`` is shaped as a weights name (``arch.tag``, no folder, not a file's extension)."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9_]*\.[A-Za-z0-9_]+$", text)) and "/" not in text and not text.endswith(
        (".pth", ".pt", ".th", ".safetensors", ".h5", ".keras", ".bin", ".ckpt"))
