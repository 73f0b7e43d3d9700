"""The depth table (paper Table 1 and section 4.2) and the name registry behind ``create_model``."""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Any

from ..errors import UserError
from .resnet import ALL_VARIANTS, CifarResNet, ResNet, ResNetBase

# ImageNet family, paper Table 1: block kind and blocks per stage (conv2_x .. conv5_x).
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

# CIFAR family, paper section 4.2: depth 6n + 2, n blocks of two 3x3 layers per stage.
CIFAR_DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}

# The CIFAR-10 speed records' residual nets (models/cifar_speed.py), by the weighted layers their names count.
SPEED_NETS = {"resnet9": 9, "resnet18-cifar": 18}

# The paper's plain baselines: the same nets with every shortcut removed.
PLAIN_IMAGENET_DEPTHS = (18, 34)
PLAIN_CIFAR_DEPTHS = (20, 32, 44, 56, 110)


def _registry() -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for depth in IMAGENET_DEPTHS:
        table[f"resnet{depth}"] = {"family": "imagenet", "depth": depth, "residual": True}
    for depth in CIFAR_DEPTHS:
        table[f"resnet{depth}"] = {"family": "cifar", "depth": depth, "residual": True}
    for depth in PLAIN_IMAGENET_DEPTHS:
        table[f"plain{depth}"] = {"family": "imagenet", "depth": depth, "residual": False}
    for depth in PLAIN_CIFAR_DEPTHS:
        table[f"plain{depth}"] = {"family": "cifar", "depth": depth, "residual": False}
    for name, depth in SPEED_NETS.items():  # the CIFAR speed records' nets (models/cifar_speed.py)
        table[name] = {"family": "cifar", "depth": depth, "residual": True, "speed": True}
    return table


MODELS = _registry()


def list_models(family: str | None = None) -> list[str]:
    """Model names, ordered by family then depth; ``family`` is ``"imagenet"``, ``"cifar"`` or None."""
    names = [n for n, e in MODELS.items() if family is None or e["family"] == family]
    return sorted(names, key=lambda n: (MODELS[n]["family"] != "imagenet", not MODELS[n]["residual"],
                                        MODELS[n]["depth"]))


def model_family(name: str) -> str:
    """``"imagenet"`` or ``"cifar"`` for a registered name."""
    return _entry(name)["family"]


def _entry(name: str) -> dict[str, Any]:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown model '{name}'; {hint}choose one of: {', '.join(list_models())}")
    return MODELS[name]


def default_variant(name: str) -> str:
    return "v1.5" if model_family(name) == "imagenet" else "v1"


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    variant: str | None = None,
    **options: Any,
) -> ResNetBase:
    """Build a ResNet by name (see ``list_models()``), freshly initialised. Trained weights (a file, a run
    folder or a weights name) are :func:`resnets.create_model`'s ``weights=`` (:mod:`resnets.loading`, above
    this package: models build fresh nets and import nothing above them).

    ImageNet nets default to ``num_classes=1000`` and ``variant="v1.5"``; CIFAR nets to 10 classes,
    ``variant="v1"`` and ``shortcut="A"``. Options: ``zero_init_residual``, ``in_chans``, and for CIFAR nets
    ``shortcut``. Structural options (nets imported from Keras, ``resnets.load_keras``): ``blocks``, other
    blocks per stage for an ImageNet net (e.g. ``create_model("resnet50", blocks=(3, 4, 5, 3))``: same block
    kind and widths), and ``tf_padding=True``, strided convolutions and pools padded as Keras ``"same"``
    (or a list of the places: ``"conv1"``, ``"maxpool"``, ``"blocks"``); for CIFAR nets ``projection_bn=False``,
    projection shortcuts without batch norm (a 1x1 with a bias: keras.io's CIFAR-10 ``resnet_v1``), and
    ``shortcut_pad="both"``, option A's zero channels half before and half after the identity (akamaster's nets).
    The returned model's ``card`` names it and records the options given (``model.spec``, the arguments that
    rebuild it).
    """
    if "weights" in options:
        raise UserError("resnets.models.create_model builds fresh nets; for trained weights call "
                        f"resnets.create_model({name!r}, weights=...)")
    entry = _entry(name)
    if entry.get("speed"):
        return _speed_net(name, num_classes, variant, options)
    family = entry["family"]
    allowed = {"zero_init_residual", "in_chans"} | ({"shortcut"} if family == "cifar" else set())
    structural = ["blocks", "tf_padding"] if family == "imagenet" else ["tf_padding", "projection_bn", "shortcut_pad"]
    unknown = set(options) - allowed - set(structural)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(sorted(unknown))} for {name}; "
                        f"allowed: {', '.join(sorted(allowed))} (structure: {', '.join(structural)})")
    variant = variant or default_variant(name)
    if "blocks" in options:
        options["blocks"] = _blocks(name, options["blocks"])
    try:
        if family == "imagenet":
            if variant not in ALL_VARIANTS:
                raise UserError(f"unknown variant '{variant}' for {name}; choose one of {', '.join(ALL_VARIANTS)}")
            kind, layers = IMAGENET_DEPTHS[entry["depth"]]
            net_options = {k: v for k, v in options.items() if k != "blocks"}
            model: ResNetBase = ResNet(kind, options.get("blocks", layers), num_classes or 1000, variant=variant,
                                       residual=entry["residual"], **net_options)
        else:
            model = CifarResNet(CIFAR_DEPTHS[entry["depth"]], num_classes or 10, variant=variant,
                                residual=entry["residual"], **options)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}") from None
    model.card = replace(model.card, name=name, options=dict(options))
    return model


def _speed_net(name: str, num_classes: int | None, variant: str | None, options: dict[str, Any]) -> ResNetBase:
    """``resnet9`` or ``resnet18-cifar`` (variant v1 only; options ``in_chans``, ``whiten``, and for
    resnet18-cifar ``zero_init_residual``)."""
    from .cifar_speed import ResNet9, ResNet18Cifar

    allowed = {"in_chans", "whiten"} | ({"zero_init_residual"} if name == "resnet18-cifar" else set())
    if name == "resnet9":
        options = {k: v for k, v in options.items() if not (k == "zero_init_residual" and v is False)}
    unknown = set(options) - allowed
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(sorted(unknown))} for {name}; allowed: {', '.join(sorted(allowed))}")
    if variant not in (None, "v1"):
        raise UserError(f"{name} comes in one variant, v1; drop --variant {variant}")
    cls = ResNet9 if name == "resnet9" else ResNet18Cifar
    model: ResNetBase = cls(num_classes or 10, **options)
    model.card = replace(model.card, name=name, options=dict(options))
    return model


def _blocks(name: str, blocks: Any) -> list[int]:
    """``blocks`` as a list of four positive ints (JSON keeps it a list, so the card round-trips)."""
    try:
        counts = [int(b) for b in blocks]
    except (TypeError, ValueError):
        counts = []
    if len(counts) != 4 or min(counts) < 1 or any(isinstance(b, bool) or b != int(b) for b in blocks):
        raise UserError(f"blocks={blocks!r} for {name}: give four positive block counts, e.g. blocks=(3, 4, 6, 3)")
    return counts


def weighted_layers(kind: str, blocks: Any) -> int:
    """Convolution and fc layers of an ImageNet net with ``blocks`` per stage (the depth the name counts)."""
    return 2 + (3 if kind == "bottleneck" else 2) * sum(blocks)
