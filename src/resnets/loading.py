"""The one way from weights to a ready model: a weights file, a run folder or a weights name (``resnets weights
list``) becomes a model with its trained weights (:func:`create_model`) or a :class:`LoadedModel` for inference
(:func:`load_for_inference`: class names, normalisation and the input sizes it was trained at).

Layering: this module sits above :mod:`resnets.models` (fresh nets only), :mod:`resnets.weights` (files read,
checked and written) and :mod:`resnets.pretrained` (the table and downloads); train, evaluate, infer, serve,
export and the Keras export reach weights through it, and nothing below imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .errors import UserError
from .models import create_model as create_fresh_model
from .models import model_family
from .pretrained import cached_entry, lookup, resolve_name
from .pretrained.classes import class_names, imagenet_classes
from .pretrained.retrieve import fetch
from .weights import (
    METADATA_KEY,
    check_metadata,
    load_model,
    load_weights,
    read_header,
    read_metadata,
    read_state_dict,
)

if TYPE_CHECKING:
    from .models import ResNetBase
    from .pretrained.table import Entry


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


def create_model(name: str, *, num_classes: int | None = None, variant: str | None = None,
                 weights: str | os.PathLike[str] | None = None, **options: Any) -> ResNetBase:
    """Build a ResNet by name (see ``list_models()``): freshly initialised (:func:`resnets.models.create_model`,
    whose options it takes), or with ``weights``: started from trained weights (see :func:`from_weights`), e.g.
    ``create_model("resnet18", weights=FILE, num_classes=5)``, or from known weights by name
    (``resnets.pretrained``; ``create_model("resnet50", weights="resnet50.tv2_in1k")`` or torchvision's tag,
    ``weights="IMAGENET1K_V2"``), downloaded once into the cache and checked."""
    if weights is None:
        return create_fresh_model(name, num_classes=num_classes, variant=variant, **options)
    entry = resolve_name(weights, name)
    if entry is not None:  # a name from the pretrained table (resnets weights list): fetched, checked, cached
        return build(entry, num_classes=num_classes, variant=variant, **options)
    return from_weights(name, weights, num_classes=num_classes, variant=variant, **options)


def from_weights(name: str, weights: str | os.PathLike[str], *, num_classes: int | None = None,
                 variant: str | None = None, say: Any = None, **options: Any) -> ResNetBase:
    """``name`` with trained ``weights``: a resnets .safetensors (its variant, class names and normalisation
    come along) or a torchvision/timm ``.pth``/state dict, read safely. With ``num_classes`` other than the
    weights', the head is a fresh one (fine-tuning); UserError for weights of another architecture. Option-A
    weights laid out as akamaster's load as that code computes (see ``load_weights``; ``shortcut_pad=`` forces
    a placement); ``say`` gets that one line."""
    header = _header_or_none(Path(weights))
    meta = _resnets_metadata(header, Path(weights))
    if meta is not None:
        spec = meta["spec"]
        if spec["name"] != name or (variant is not None and variant != spec.get("variant")):
            raise UserError(f"{weights} holds a {spec['name']} ({spec.get('variant')}), not a {name}"
                            f"{f' ({variant})' if variant else ''}: build a {spec['name']}, or load other weights")
        variant = spec.get("variant")
        options = {**{k: v for k, v in spec.items() if k not in ("name", "variant", "num_classes")}, **options}
    state = read_state_dict(weights, header=header)
    head = state.get("fc.weight", state.get("linear.weight"))
    trained = int(head.shape[0]) if head is not None and head.ndim == 2 else None
    model = create_fresh_model(name, num_classes=num_classes or trained, variant=variant, **options)
    fresh_head = num_classes is not None and trained is not None and num_classes != trained
    load_weights(model, state, reinit_head=fresh_head, say=say)
    if meta is not None:
        model.card.normalization = meta.get("normalization")
        model.card.classes = None if fresh_head else meta.get("classes")
    return model


def entry_classes(entry: Entry) -> list[str]:
    """The class names of ``entry``'s head, in index order (ImageNet's 1,000 ship with resnets)."""
    return class_names(entry.classes)


def build(entry: Entry, *, num_classes: int | None = None, variant: str | None = None,
          say: Callable[[str], object] | None = None, progress: bool = True, **options: Any) -> ResNetBase:
    """``entry``'s model (a table entry, :mod:`resnets.pretrained`) with its trained weights, in eval mode: its
    file fetched and checked, the architecture and options it names, the weights loaded (a keras.applications
    file through the Keras import) and the card given its class names and normalisation. ``num_classes`` other
    than the weights': a fresh head (fine-tuning). ``options`` override the entry's (e.g. ``shortcut_pad``)."""
    if variant is not None and variant != entry.variant:
        raise UserError(f"weights {entry.name} are of variant {entry.variant}, not {variant}; leave out the variant")
    path = fetch(entry, progress=progress, say=say)
    if entry.format == "keras-h5":
        model = _keras_model(entry, str(path))
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_classifier(num_classes)
    else:
        model = from_weights(entry.arch, path, num_classes=num_classes, variant=entry.variant, say=say,
                             **{**entry.options, **options})
    if num_classes is None or num_classes == len(entry_classes(entry)):
        model.card.classes = entry_classes(entry)
    if entry.format != "keras-h5":  # the Keras import sets its own (caffe folded into conv1)
        model.card.normalization = {"mean": list(entry.mean), "std": list(entry.std)}
    return model.eval()


def _keras_model(entry: Entry, path: str) -> ResNetBase:
    """keras.applications' ResNet50/101/152 with the weights file ``path``, read by the Keras import."""
    from .keras.read import read_keras, require_keras

    keras = require_keras()
    depth = entry.arch.removeprefix("resnet")
    net = getattr(keras.applications, f"ResNet{depth}")(weights=path)
    return read_keras(net, normalization="caffe").model


def resolve_weights_path(weights: str | os.PathLike[str], model_name: str | None = None) -> Path:
    """The weights file ``weights`` names: a run folder means its ``best.safetensors`` (else
    ``final.safetensors``); a known weights name (``resnets weights list``) its checked file in the cache,
    downloaded if missing; a run's training checkpoint (``last.pt``, ``best.pt``) without ``model_name`` is a
    UserError pointing at the run's ``best.safetensors``."""
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
    (``resnets weights list``: fetched, checked, fed at its entry's resize and crop). A safetensors header is
    read once (:func:`resnets.weights.read_header`) and handed on.

    ``shortcut_pad`` (``"after"``, ``"both"``): where a foreign ``.pth``'s or a weights name's option-A shortcuts put
    their zeros; None: detected (akamaster's layout: both sides) or the entry's. A resnets file records its own."""
    if isinstance(weights, LoadedModel):
        return weights
    entry = resolve_name(weights, model_name) or cached_entry(weights)  # a name, or a named weight's cached file
    if entry is not None and model_name and entry.arch != model_name:
        lookup(entry.name, model_name)  # refused in one line: weights for another architecture
    if entry is not None:  # a known weights name: its file fetched and checked, fed as its source evaluates it
        path = fetch(entry)
        model = build(entry, variant=variant, **({"shortcut_pad": shortcut_pad} if shortcut_pad else {}))
        _NAMED_SIZES[str(path.resolve())] = (entry.crop, entry.resize)
        return _loaded(model, path, entry.crop, entry.resize)
    path = resolve_weights_path(weights, model_name)
    header = _header_or_none(path)
    meta = _resnets_metadata(header, path)  # a damaged resnets file is refused here with its reason
    input_size = resize = 0  # the family's, unless the weights were trained at another size
    if meta is not None:
        trained = meta.get("trained")
        input_size, resize = _trained_sizes(trained if isinstance(trained, dict) else {})
        model = load_model(path, header=header)
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
        state = read_state_dict(path, header=header)
        head = state.get("fc.weight", state.get("linear.weight"))  # the head's size: the weights' classes
        classes_in = int(head.shape[0]) if head is not None and head.ndim == 2 else None
        model = create_fresh_model(model_name, variant=variant, num_classes=classes_in)
        load_weights(model, state, shortcut_pad=shortcut_pad)  # a fresh card: no class names or normalisation
    return _loaded(model, path, input_size, resize)


def _header_or_none(path: Path) -> dict[str, Any] | None:
    """``path``'s checked safetensors header, or None when it is not a readable safetensors file (a ``.pth``)."""
    try:
        return read_header(path)
    except UserError:
        return None


def _resnets_metadata(header: dict[str, Any] | None, path: Path) -> dict[str, Any] | None:
    """The checked resnets metadata in ``header``; None when the file claims none (a foreign file). A file that
    claims it but holds a damaged or crafted one is a UserError with its reason."""
    if header is None or METADATA_KEY not in (header.get("__metadata__") or {}):
        return None
    return check_metadata(header, path)


#: Fetched weights names' files -> (input side, resize) their table entry records (see ``trained_sizes``).
_NAMED_SIZES: dict[str, tuple[int, int]] = {}


def _loaded(model: ResNetBase, path: Path, input_size: int, resize: int) -> LoadedModel:
    """``model`` (from ``path``) in eval mode with its class names (ImageNet's for 1,000 classes without any),
    normalisation (its card's, else the family's) and input sizes."""
    # here, not at the top: resnets.create_model need not import the data package
    from .data.normalization import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD

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
    named = _NAMED_SIZES.get(str(Path(path).resolve()))
    if named is not None:
        return named
    try:
        trained = read_metadata(path).get("trained") or {}
    except (UserError, ValueError):
        return 0, 0
    return recorded_sizes(trained) if isinstance(trained, dict) else (0, 0)
