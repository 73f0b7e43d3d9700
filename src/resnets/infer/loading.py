"""A trained model ready for inference: weights resolved, class names, preprocessing, and image paths."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..data.normalization import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from ..pretrained.classes import imagenet_classes

if TYPE_CHECKING:
    from ..models import ResNetBase


@dataclass
class LoadedModel:
    """A model in eval mode with what inference needs to feed it and name its outputs."""

    model: ResNetBase
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    family: str  # "imagenet" or "cifar"
    source: str  # the weights file, absolute
    name: str  # the model name, e.g. "resnet50"
    input_size: int = 0  # side of the square network input; 0: the family's (224 ImageNet, 32 CIFAR)
    resize: int = 0  # the shorter side before the centre crop; 0: the family's (256 ImageNet, 32 CIFAR)

    def __post_init__(self) -> None:
        default_size, default_resize = FAMILY_SIZES[self.family]
        self.input_size = self.input_size or default_size
        self.resize = self.resize or (default_resize if self.input_size == default_size else self.input_size)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """A uint8 3xHxW RGB image to the normalised float 3xSxS network input."""
        return preprocess(image, self.family, self.mean, self.std, crop=self.input_size, resize=self.resize)


FAMILY_SIZES = {"imagenet": (224, 256), "cifar": (32, 32)}  # (input side, shorter side before the crop)


def preprocess(image: torch.Tensor, family: str, mean: Sequence[float], std: Sequence[float], *,
               crop: int | None = None, resize: int | None = None) -> torch.Tensor:
    """Resize and crop as the family was trained (ImageNet: shorter side 256, centre 224; CIFAR: 32, centre 32;
    or shorter side ``resize``, centre ``crop``), with torchvision's Resize + CenterCrop arithmetic, then scale
    to 0..1 and normalise."""
    default_crop, default_resize = FAMILY_SIZES[family]
    crop = crop or default_crop
    resize = resize or (default_resize if crop == default_crop else crop)
    x = image.unsqueeze(0).float()
    h, w = x.shape[-2:]
    long_side = int(resize * max(h, w) / min(h, w))  # torchvision's Resize(int): the long side truncated
    nh, nw = (resize, long_side) if h <= w else (long_side, resize)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))  # as torchvision's CenterCrop
    x = x[..., top:top + crop, left:left + crop].clamp_(0, 255) / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s)[0]


def resolve_weights_path(weights: str | os.PathLike[str], model_name: str | None = None) -> Path:
    """The weights file ``weights`` names: a run folder means its ``best.safetensors`` (else
    ``final.safetensors``); a known weights name (``resnets weights list``) its checked file in the cache,
    downloaded if missing; a run's training checkpoint (``last.pt``, ``best.pt``) without ``model_name`` is a
    UserError pointing at the run's ``best.safetensors``."""
    from ..pretrained import fetch, resolve_name

    entry = resolve_name(weights, model_name)
    if entry is not None:
        return Path(fetch(entry))
    path = Path(weights).expanduser()
    if path.is_dir():
        found = next((path / n for n in ("best.safetensors", "final.safetensors") if (path / n).is_file()), None)
        if found is None:
            raise UserError(f"{path} is a folder without best.safetensors or final.safetensors; give --weights "
                            "a weights file or a run folder written by resnets train")
        return found
    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    run = path.parent
    if model_name is None and path.suffix == ".pt" and (run / "config.json").is_file():
        best = next((run / n for n in ("best.safetensors", "final.safetensors") if (run / n).is_file()), None)
        if best is not None:
            raise UserError(f"{path} is a training checkpoint (for resnets train --resume); use the run's "
                            f"weights: --weights {best} (or --weights {run})")
    return path


def load_for_inference(weights: str | os.PathLike[str] | LoadedModel, model_name: str | None = None, *,
                       variant: str | None = None, shortcut_pad: str | None = None) -> LoadedModel:
    """Load ``weights``: a resnets safetensors file (rebuilt from its metadata) or a run folder (its
    ``best.safetensors``), or with ``model_name`` (and ``variant``, e.g. ``d`` or ``v1``) a torchvision/timm
    ``.pth``/checkpoint (then ImageNet names and normalisation when it has 1000 classes), or a weights name
    (``resnets weights list``: fetched, checked, fed at its entry's resize and crop).

    ``shortcut_pad`` (``"after"``, ``"both"``): where a foreign ``.pth``'s or a weights name's option-A shortcuts put
    their zeros; None: detected (akamaster's layout: both sides) or the entry's. A resnets file records its own."""
    if isinstance(weights, LoadedModel):
        return weights
    from ..models import create_model
    from ..pretrained import cached_entry, resolve_name
    from ..weights import load_model, load_weights, metadata_text, read_metadata

    entry = resolve_name(weights, model_name) or cached_entry(weights)  # a name, or a named weight's cached file
    if entry is not None and model_name and entry.arch != model_name:
        from ..pretrained import lookup

        lookup(entry.name, model_name)  # refused in one line: weights for another architecture
    if entry is not None:  # a known weights name: its file fetched and checked, fed as its source evaluates it
        from ..pretrained.build import build
        from ..pretrained.retrieve import fetch

        path = fetch(entry)
        model = build(entry, variant=variant, **({"shortcut_pad": shortcut_pad} if shortcut_pad else {}))
        _NAMED_SIZES[str(path.resolve())] = (entry.crop, entry.resize)
        return _loaded(model, path, entry.crop, entry.resize)
    path = resolve_weights_path(weights, model_name)
    is_resnets = _has_resnets_metadata(path, metadata_text)  # a damaged one is then refused with its reason
    input_size = resize = 0  # the family's, unless the weights were trained at another size
    if is_resnets:
        trained = read_metadata(path).get("trained")
        input_size, resize = _trained_sizes(trained if isinstance(trained, dict) else {})
        model = load_model(path)
        card = model.card
        if model_name and model_name != card.name:
            raise UserError(f"{path} holds a {card.name}, not a {model_name}")
        if variant and variant != card.variant:
            raise UserError(f"{path} holds a {card.name} of variant {card.variant}, "
                            f"not {variant}; leave out --variant")
        if shortcut_pad and shortcut_pad != card.options.get("shortcut_pad", "after"):
            raise UserError(f"{path} records its option-A placement (shortcut_pad "
                            f"{card.options.get('shortcut_pad', 'after')!r}); leave out --shortcut-pad")
    elif model_name is None:
        raise UserError(f"{path} is not a resnets weights file; name its architecture with --model NAME "
                        "(e.g. --model resnet50 for torchvision's ImageNet weights)")
    else:
        from ..weights import read_state_dict

        state = read_state_dict(path)
        head = state.get("fc.weight", state.get("linear.weight"))  # the head's size: the weights' classes
        classes_in = int(head.shape[0]) if head is not None and head.ndim == 2 else None
        model = create_model(model_name, variant=variant, num_classes=classes_in)
        load_weights(model, state, shortcut_pad=shortcut_pad)  # a fresh card: no class names or normalisation
    return _loaded(model, path, input_size, resize)


#: Fetched weights names' files -> (input side, resize) their table entry records (see ``trained_sizes``).
_NAMED_SIZES: dict[str, tuple[int, int]] = {}


def _loaded(model: ResNetBase, path: Path, input_size: int, resize: int) -> LoadedModel:
    """``model`` (from ``path``) in eval mode with its class names (ImageNet's for 1,000 classes without any),
    normalisation (its card's, else the family's) and input sizes."""
    from ..models import model_family

    model.eval()
    card = model.card
    name = card.name
    family = model_family(name)
    classes = list(card.classes or [])
    num_classes = card.num_classes
    if not classes:
        classes = list(imagenet_classes()) if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
    norm = card.normalization
    if norm:
        mean, std = tuple(norm["mean"]), tuple(norm["std"])
    elif family == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = CIFAR_MEAN, CIFAR_STD
    return LoadedModel(model, classes, mean, std, family, str(path.resolve()), name,  # type: ignore[arg-type]
                       input_size, resize)


MAX_INPUT_SIDE = 4096  # the largest input side a weights file may ask inference to feed


def recorded_sizes(trained: dict[str, object]) -> tuple[int, int]:
    """(input side, shorter side before the centre crop) that a ``resnets train`` record says its network was
    fed: ``input_size``/``resize`` (written since they were recorded), else an older file's ``fit_images``
    (``--image-size N`` on small images: N and N); (0, 0) when it says neither. UserError for sizes outside
    1..:data:`MAX_INPUT_SIDE` or a resize below the side."""
    side, resize = trained.get("input_size"), trained.get("resize")
    if side is not None:
        if not (_is_side(side) and _is_side(resize) and resize >= side):  # type: ignore[operator]
            raise UserError(f"the weights record a training input of {side!r} px after resizing to {resize!r} "
                            f"(need whole numbers, 1..{MAX_INPUT_SIDE}, the resize at least the input); "
                            "the file is damaged: use the run's weights again or retrain")
        return int(side), int(resize)  # type: ignore[call-overload]
    fit = trained.get("fit_images")
    if _is_side(fit):
        return int(fit), int(fit)  # type: ignore[call-overload]
    return 0, 0


def _is_side(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_INPUT_SIDE


def _trained_sizes(trained: dict[str, object]) -> tuple[int, int]:
    """(input side, shorter side before the crop) that ``resnets train`` trained at (see ``recorded_sizes``);
    older files without that record but an ImageNet ``image_size`` N: N and N*8/7; (0, 0): the family's
    default."""
    recorded = recorded_sizes(trained)
    if recorded != (0, 0):
        return recorded
    size = trained.get("image_size")
    if _is_side(size):
        return int(size), round(int(size) * 256 / 224)  # type: ignore[call-overload]
    return 0, 0


def trained_sizes(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``recorded_sizes`` of a resnets weights file's training record, or the sizes a fetched weights name's
    entry records; (0, 0) for any other file."""
    from ..weights import read_metadata

    named = _NAMED_SIZES.get(str(Path(path).resolve()))
    if named is not None:
        return named

    try:
        trained = read_metadata(path).get("trained") or {}
    except (UserError, ValueError):
        return 0, 0
    return recorded_sizes(trained) if isinstance(trained, dict) else (0, 0)


def _has_resnets_metadata(path: Path, read_metadata: object) -> bool:
    try:
        read_metadata(path)  # type: ignore[operator]
    except UserError:
        return False
    return True


def expand_paths(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files named by ``inputs`` (files, folders searched recursively, globs), in order, each once.

    Returns ``(paths, problems)``; a problem is ``(input, message)`` for an input that names nothing.
    """
    from ..data.images import is_image_file

    paths: list[str] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            paths.append(p)

    for item in inputs:
        text = os.fspath(item)
        if os.path.isdir(text):
            found = sorted(str(p) for p in _walk_images(Path(text), is_image_file))
            if not found:
                problems.append((text, "folder holds no image files"))
            for p in found:
                add(p)
        elif os.path.exists(text):
            add(text)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            files = [m for m in matches if os.path.isfile(m)]
            for d in (m for m in matches if os.path.isdir(m)):
                files += sorted(str(p) for p in _walk_images(Path(d), is_image_file))
            if not files:
                problems.append((text, "pattern matches no files"))
            for p in files:
                add(p)
        else:
            problems.append((text, "no such file or folder"))
    return paths, problems


def _walk_images(root: Path, is_image_file: object) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_file(name):  # type: ignore[operator]
                yield Path(dirpath) / name


def read_batches(paths: Sequence[str], loaded: LoadedModel, batch_size: int
                 ) -> Iterator[tuple[list[str], torch.Tensor | None, list[tuple[str, str]]]]:
    """Read and preprocess ``paths`` in batches: yields ``(good_paths, inputs, failures)`` per batch;
    an unreadable file becomes a ``(path, message)`` failure and the rest of its batch goes on."""
    from ..data import BadImageError, read_rgb

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    for start in range(0, len(paths), batch_size):
        good: list[str] = []
        tensors: list[torch.Tensor] = []
        failures: list[tuple[str, str]] = []
        for p in paths[start:start + batch_size]:
            try:
                tensors.append(loaded.preprocess(read_rgb(p)))
                good.append(p)
            except BadImageError as exc:
                failures.append((p, str(exc)))
            except (OSError, UserError) as exc:
                failures.append((p, f"{p}: {exc}"))
        yield good, (torch.stack(tensors) if tensors else None), failures


def require(module: str, extra: str) -> None:
    """UserError naming the extra to install when optional ``module`` is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"this needs {module}: pip install 'resnets[{extra}]'")


def report_failure(failures: list[tuple[str, str]], item: tuple[str, str], on_failure: object) -> None:
    """Record an unreadable input ``(path, message)`` and pass it to ``on_failure`` if that is callable."""
    failures.append(item)
    if callable(on_failure):
        on_failure(*item)


def read_batches_reporting(paths: Sequence[str], loaded: LoadedModel, batch_size: int,
                           failures: list[tuple[str, str]], on_failure: object, *, what: str,
                           progress: bool) -> Iterator[tuple[list[str], torch.Tensor]]:
    """``read_batches`` under a progress bar (``what``): unreadable files go to ``report_failure`` beside the
    bar; yields ``(good_paths, inputs)`` for each batch with a readable image."""
    from ..progress import Progress

    with Progress(len(paths), what, enabled=progress) as bar:
        for good, inputs, bad in read_batches(paths, loaded, batch_size):
            if bad:
                with bar.aside():
                    for item in bad:
                        report_failure(failures, item, on_failure)
            if inputs is not None:
                yield good, inputs
            bar.update(len(good) + len(bad))
