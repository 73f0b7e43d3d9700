"""Training recipes and the resolved configuration a run is driven by.

A recipe is a named set of defaults (the paper's two, our two fast ones); a ``--config`` file (JSON or TOML)
and then explicit flags override it. ``resolve_config`` turns that stack into one ``TrainConfig`` whose
every field is final, and which the run saves as ``config.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..models.registry import MODELS, model_family


@dataclass
class TrainConfig:
    """Every setting of a training run; see ``RECIPES`` for the recipes' values."""

    # what to train, on what
    model: str = "resnet20"
    variant: str | None = None
    shortcut: str | None = None  # CIFAR nets: "A" (zero-padding identity, the default) or "B" (1x1 projection)
    zero_init_residual: bool = False
    data: str = "sample"
    val_split: int = 0
    cache_dir: str | None = None
    skip_bad_images: bool = False
    download: bool = False
    train_images: int | None = None  # train on this many images only (a fixed seeded subset), for quick runs
    test_images: int | None = None  # evaluate on this many only
    recipe: str = "cifar-fast"
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.1
    lr_scale_batch: int | None = None  # if set, the LR used is lr * batch_size / lr_scale_batch
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = True  # False: no weight decay on BN weights/biases and on biases
    batch_size: int = 128
    accum_steps: int = 1  # each batch is split into this many micro-batches (same result, less memory)
    # schedule; lengths (epochs/iterations/milestones/warmup) count ``schedule_unit``s
    schedule: str = "multistep"  # multistep | cosine | onecycle
    schedule_unit: str = "iterations"  # iterations | epochs
    epochs: float | None = None
    iterations: int | None = None
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    warmup: float = 0.0  # onecycle: a fraction of the whole run
    warmup_lr: float | None = None  # constant LR during warm-up (the paper's 0.01); None: linear ramp from 0
    final_lr_fraction: float = 0.0  # cosine/onecycle end at lr * this
    # regularisation and augmentation
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    ema: bool = False
    ema_decay: float = 0.999
    pad: int = 4
    flip: bool = True
    resize_from: int | None = None  # progressive resizing (in-memory data): train at this size first, then grow
    resize_until: float = 0.5  # ... reaching the full size after this fraction of the epochs
    image_size: int = 224  # ImageNet-style data: train crop / eval centre crop
    fit_images: int | None = None  # small images in memory: shorter side to N, centre crop N x N (--image-size)
    resize: int = 256  # ImageNet-style data: eval resize before the centre crop
    # engine
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False  # several processes: BN statistics of the global batch, not of each rank's slice
    seed: int = 0
    deterministic: bool | None = None  # None: on for CPU (bit-exact resume), off for CUDA (cudnn.benchmark)
    workers: int = field(default_factory=lambda: default_workers())  # loader processes for streamed data
    # output
    out: str | None = None
    log_every: int = 50
    checkpoint_every: int = 0  # also checkpoint every N steps (0: only at epoch ends)
    eval_every: int = 1  # evaluate every N epochs (and after the last)
    tensorboard: bool = False
    progress: bool = True
    plots: bool = True
    stop_after_steps: int | None = None  # debug: checkpoint and stop once this global step is reached

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def effective_lr(self) -> float:
        """The peak learning rate actually used (after batch-size scaling)."""
        return self.lr * self.batch_size / self.lr_scale_batch if self.lr_scale_batch else self.lr


def default_workers() -> int:
    """Loader processes by default: the CPU cores this process may use, at most 4."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


# The recipes: only what differs from the TrainConfig defaults.
RECIPES: dict[str, dict[str, Any]] = {
    # He et al. 2015, section 4.2: SGD 0.9, wd 1e-4, batch 128, LR 0.1 divided by 10 at 32k and 48k
    # iterations, stop at 64k; 0.01 warm-up (about 400 iterations) for 110 layers and deeper; pad 4, crop, flip.
    "cifar-paper": dict(
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, decay_norm_and_bias=True,
        batch_size=128, schedule="multistep", schedule_unit="iterations", iterations=64000,
        milestones=[32000, 48000], gamma=0.1, warmup=0, warmup_lr=None, label_smoothing=0.0, ema=False,
        pad=4, flip=True, zero_init_residual=False,
    ),
    # He et al. 2015, section 3.4: SGD 0.9, wd 1e-4, batch 256, LR 0.1 divided by 10 every 30 epochs, 90 epochs;
    # random-resized crop 224 + flip; evaluation resize 256, centre 224.
    "imagenet-paper": dict(
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, decay_norm_and_bias=True,
        batch_size=256, schedule="multistep", schedule_unit="epochs", epochs=90, milestones=[30, 60],
        gamma=0.1, warmup=0, label_smoothing=0.0, ema=False, image_size=224, resize=256,
        zero_init_residual=False,
    ),
    # Ours, for time to accuracy: one-cycle, label smoothing, no decay on norms/biases, zero-init, EMA.
    "cifar-fast": dict(
        optimizer="sgd", lr=0.2, lr_scale_batch=128, momentum=0.9, nesterov=True, weight_decay=5e-4,
        decay_norm_and_bias=False, batch_size=512, schedule="onecycle", schedule_unit="epochs", epochs=30,
        warmup=0.15, final_lr_fraction=0.0, label_smoothing=0.1, ema=True, ema_decay=0.999, pad=4, flip=True,
        zero_init_residual=True,
    ),
    "imagenet-fast": dict(
        optimizer="sgd", lr=0.1, lr_scale_batch=256, momentum=0.9, nesterov=True, weight_decay=5e-5,
        decay_norm_and_bias=False, batch_size=1024, schedule="cosine", schedule_unit="epochs", epochs=40,
        warmup=2, final_lr_fraction=0.0, label_smoothing=0.1, ema=True, ema_decay=0.9998, image_size=224,
        resize=256, zero_init_residual=True,
    ),
}

# The paper's warm-up for very deep CIFAR nets (section 4.2): LR 0.01 until training error < 80%, ~400 iters.
PAPER_WARMUP_MIN_DEPTH = 110
PAPER_WARMUP = {"warmup": 400, "warmup_lr": 0.01}

# With the shipped sample and no length given, train this many epochs (a couple of minutes on a laptop).
SAMPLE_EPOCHS = 15

_CHOICES = {
    "optimizer": ("sgd",),
    "schedule": ("multistep", "cosine", "onecycle"),
    "schedule_unit": ("iterations", "epochs"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
}


def default_recipe(model: str) -> str:
    """``cifar-fast`` for CIFAR nets, ``imagenet-fast`` for ImageNet nets."""
    return "cifar-fast" if model_family(model) == "cifar" else "imagenet-fast"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON or TOML file (a flat table of TrainConfig fields; ``[train]`` table allowed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table of settings")
    if isinstance(data.get("train"), dict) and len(data) == 1:
        data = data["train"]
    return data


def resolve_config(
    overrides: dict[str, Any] | None = None,
    *,
    recipe: str | None = None,
    config_file: str | Path | None = None,
) -> TrainConfig:
    """Recipe defaults, then ``config_file``, then ``overrides`` (None values ignored) -> a final TrainConfig.

    The recipe comes from ``recipe``, else the overrides or file, else ``default_recipe(model)``.
    Unknown keys, unknown recipes and invalid values raise ``UserError``.
    """
    layers: list[dict[str, Any]] = []
    if config_file is not None:
        layers.append(load_config_file(config_file))
    layers.append({k: v for k, v in (overrides or {}).items() if v is not None})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for layer in layers:
        unknown = [k for k in layer if k not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key '{unknown[0]}'{hint}")
    for layer in layers:
        check_types(layer)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    model = merged.get("model", TrainConfig.model)
    if model not in MODELS:
        model_family(model)  # raises the registry's UserError with suggestions
    recipe = recipe or merged.get("recipe") or default_recipe(model)
    if recipe not in RECIPES:
        close = difflib.get_close_matches(recipe, RECIPES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown recipe '{recipe}'; {hint}choose one of: {', '.join(RECIPES)}")
    values: dict[str, Any] = dict(RECIPES[recipe])
    if recipe == "cifar-paper" and MODELS[model]["family"] == "cifar" \
            and MODELS[model]["depth"] >= PAPER_WARMUP_MIN_DEPTH:
        values.update(PAPER_WARMUP)
    # A length given explicitly replaces the recipe's (and its unit): --epochs wins over the recipe's iterations.
    if "epochs" in merged and "iterations" not in merged:
        values["iterations"] = None
    if "iterations" in merged and "epochs" not in merged:
        values["epochs"] = None
    if merged.get("data", TrainConfig.data) == "sample" and "epochs" not in merged and "iterations" not in merged \
            and recipe == "cifar-fast":
        values.update(epochs=SAMPLE_EPOCHS, iterations=None)
    values.update(merged)
    values["recipe"] = recipe
    cfg = TrainConfig(**values)
    _validate(cfg)
    return cfg


def field_types() -> dict[str, Any]:
    """Each TrainConfig field's type (``float``, ``int | None``, ``list[float]``, ...)."""
    return typing.get_type_hints(TrainConfig)


def accepts_text(key: str) -> bool:
    """Whether the field ``key`` may hold text (so ``--set key=123`` means the text '123')."""
    hint = field_types().get(key)
    return hint is str or str in typing.get_args(hint)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as JSON, TOML or ``--set`` give it) is of the field type ``hint``."""
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    return isinstance(value, hint)


_TYPE_NAMES = {bool: ["true", "false"], int: ["a whole number"], float: ["a number"], str: ["text"],
               type(None): ["null"]}
_EXAMPLES = {bool: True, int: 1, float: 0.5, str: "name", list: [100, 150]}


def _alternatives(hint: Any) -> tuple[Any, ...]:
    """The members of a union type, or the type alone."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _type_name(hint: Any) -> str:
    """``float | None`` -> 'a number or null', for messages."""
    names: list[str] = []
    for h in _alternatives(hint):
        if typing.get_origin(h) is list:
            (item,) = typing.get_args(h) or (Any,)
            names.append(f"a list of {_type_name(item).removeprefix('a ')}s")
        else:
            names += _TYPE_NAMES.get(h, [getattr(h, "__name__", str(h))])
    return " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]


def _example(key: str, hint: Any) -> str:
    """A valid ``key=value`` for messages: the default, or a made-up value of the type where it is empty."""
    value = getattr(TrainConfig(), key)
    if value is None or value == []:
        first = next(h for h in _alternatives(hint) if h is not type(None))
        value = _EXAMPLES.get(typing.get_origin(first) or first, value)
    return f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"


def check_types(settings: dict[str, Any]) -> None:
    """UserError naming the first setting whose value is not of its TrainConfig field's type (unknown keys pass)."""
    hints = field_types()
    for key, value in settings.items():
        if key in hints and value is not None and not _fits(value, hints[key]):
            raise UserError(f"{key} must be {_type_name(hints[key])}, not {value!r} (e.g. {_example(key, hints[key])})")


def _validate(cfg: TrainConfig) -> None:
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise UserError(f"{key} must be one of {', '.join(choices)}, not {getattr(cfg, key)!r}")
    if (cfg.epochs is None) == (cfg.iterations is None):
        raise UserError("give exactly one training length: epochs or iterations")
    if cfg.epochs is not None and cfg.epochs <= 0 or cfg.iterations is not None and cfg.iterations <= 0:
        raise UserError("the training length must be positive")
    if cfg.batch_size < 1 or cfg.accum_steps < 1 or cfg.batch_size % cfg.accum_steps:
        raise UserError(f"batch size {cfg.batch_size} must be a positive multiple of accum_steps {cfg.accum_steps}")
    if cfg.lr <= 0:
        raise UserError(f"the learning rate must be positive, not {cfg.lr}")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError("label_smoothing must be in [0, 1)")
    if not 0 < cfg.ema_decay < 1:
        raise UserError("ema_decay must be in (0, 1)")
    if list(cfg.milestones) != sorted(cfg.milestones):
        raise UserError("milestones must be increasing")
    if any(v is not None and v < 1 for v in (cfg.train_images, cfg.test_images)):
        raise UserError("train_images and test_images must be positive")
    if cfg.resize_from is not None and cfg.resize_from < 8:
        raise UserError(f"resize_from must be at least 8 pixels, not {cfg.resize_from}")
    if not 0 < cfg.resize_until <= 1:
        raise UserError(f"resize_until must be in (0, 1], not {cfg.resize_until}")
    if cfg.eval_every < 1:
        raise UserError(f"eval_every must be at least 1 (epochs), not {cfg.eval_every}")
    if cfg.val_split < 0:
        raise UserError("val_split must be >= 0")
    if cfg.shortcut is not None:
        if cfg.shortcut not in ("A", "B"):
            raise UserError(f"shortcut must be A (zero padding) or B (projection), not {cfg.shortcut!r}")
        if model_family(cfg.model) != "cifar":
            raise UserError(f"--shortcut is for CIFAR nets; {cfg.model} has projection shortcuts (variant d: "
                            "average-pool then projection); drop --shortcut")
