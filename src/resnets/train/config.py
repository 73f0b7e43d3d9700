"""Training recipes and the resolved configuration a run is driven by.

Each ``TrainConfig`` field is declared once, with ``option(...)``: its type, default, help, choices, command-line
flag and whether a resumed run may change it; ``resnets train`` makes its flags from these declarations.
A recipe is a named set of defaults (the paper's two, our two fast ones); a ``--config`` file (JSON or TOML)
and then the flags the user typed override it. ``resolve_config`` turns that stack into one ``TrainConfig``
whose every field is final, and which the run saves as ``config.json``; resuming a run, its saved config
takes the recipe's place.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import shlex
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError
from ..models.registry import MODELS, model_family

# How an option is given on the command line: ``--flag VALUE``; ``--flag`` / ``--no-flag``; ``--flag`` alone
# (sets True); ``--flag VALUE`` left out of ``--help``.
CliKind = Literal["value", "on-off", "on", "hidden"]


@dataclass(frozen=True)
class Option:
    """A TrainConfig field's declaration beyond its type and default (``dataclasses.field`` metadata)."""

    help: str | None
    flag: str | None  # None: not a flag of ``resnets train`` (``--set KEY=VALUE`` and files still set it)
    cli: CliKind
    metavar: str | None
    choices: tuple[Any, ...] | None  # None stays allowed where the default is None
    resumable: bool  # ``--resume`` may change it; the run's saved value stands for every other field


def option(default: Any = dataclasses.MISSING, help: str | None = None, *,
           default_factory: Any = dataclasses.MISSING, flag: str | None = None, cli: CliKind = "value",
           metavar: str | None = None, choices: tuple[Any, ...] | None = None, resumable: bool = False) -> Any:
    """A TrainConfig field with its ``Option`` in ``metadata["option"]``."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={
        "option": Option(help, flag, cli, metavar, choices, resumable)})


@dataclass
class TrainConfig:
    """Every setting of a training run; see ``RECIPES`` for the recipes' values."""

    # what to train, on what
    model: str = option("resnet20", "model name (default resnet20)", flag="--model")
    variant: str | None = option(None, "architecture variant (v1, v1.5, d, preact)", flag="--variant")
    shortcut: str | None = option(None, "CIFAR nets: A, zero-padding identity shortcuts (default, the paper's); "
                                  "B, 1x1 projections where the shape changes", flag="--shortcut", choices=("A", "B"))
    zero_init_residual: bool = option(False, flag="--zero-init-residual", cli="on-off")
    whiten: bool = option(False, "resnet9, resnet18-cifar: a fixed first layer whitening 3x3 patches, set from the "
                          "training images' patch covariance", flag="--whiten", cli="on-off")
    data: str = option("sample", "sample (default), cifar10, cifar100, a CIFAR archive, or a folder with "
                       "train/ and val/ (or test/)", flag="--data")
    val_split: int = option(0, "hold out N training images for validation", flag="--val-split", metavar="N")
    cache_dir: str | None = option(None, flag="--cache-dir")
    skip_bad_images: bool = option(False, flag="--skip-bad-images", cli="on")
    download: bool = option(False, "download cifar10/cifar100 if missing", flag="--download", cli="on")
    # what reading WebDataset shards may cost (resnets.data.shards.ShardLimits); raise for unusual data
    max_member_mb: int = option(64, "shards: the most MiB a tar member, and a sample's members together, may hold "
                                "(default 64; a larger one is a bad image)", flag="--max-member-mb", metavar="MIB")
    shuffle_buffer_mb: int = option(256, "shards: the shuffle buffer's MiB per loader worker (default 256; at most "
                                    "512 samples)", flag="--shuffle-buffer-mb", metavar="MIB")
    max_shard_gb: int = option(4, "shards: the most GiB one shard may decompress to (default 4)",
                               flag="--max-shard-gb", metavar="GIB")
    # a fixed seeded subset of the training images
    train_images: int | None = option(None, "train on N images only (quick runs)", flag="--train-images",
                                      metavar="N")
    test_images: int | None = option(None, "evaluate on N images only", flag="--test-images", metavar="N")
    recipe: str = option("cifar-fast", "the recipe under the other settings (``resnets train --recipe``)")
    # fine-tuning: start from trained weights, keep stages fixed, give the backbone a smaller LR
    init: str | None = option(None, "start from these weights: a weights name (resnets weights list), a resnets "
                              ".safetensors (its architecture and normalisation) or a torchvision/timm .pth state "
                              "dict (name it with --model); the head is replaced when the classes differ",
                              flag="--init", metavar="FILE|NAME")
    freeze: list[str] = option(default_factory=list, help="stages whose weights stay fixed and whose batch norms "
                               "stay in eval mode, comma-separated: conv1, conv2_x ... conv5_x, or backbone",
                               flag="--freeze", metavar="STAGES")
    freeze_epochs: int = option(0, "train the new head alone for N epochs, then unfreeze (all but --freeze)",
                                flag="--freeze-epochs", metavar="N")
    backbone_lr_mult: float | None = option(None, "the backbone's learning rate is the head's times F",
                                            flag="--backbone-lr-mult", metavar="F")
    lr_stage_decay: float | None = option(None, "discriminative learning rates: each stage gets F times the LR of "
                                          "the stage above it (the head: lr; the last stage: lr*F; ... conv1: "
                                          "the lowest)", flag="--lr-stage-decay", metavar="F")
    linear_probe: bool = option(False, "keep the backbone fixed, compute its features once and train only the "
                                "head (a baseline in seconds)", flag="--linear-probe", cli="on")
    # optimisation
    optimizer: str = option("sgd", choices=("sgd",))
    lr: float = option(0.1, "peak learning rate (fast recipes: at batch 128 / 256, scaled)", flag="--lr")
    lr_scale_batch: int | None = option(None, "if set, the LR used is lr * batch_size / lr_scale_batch")
    momentum: float = option(0.9, flag="--momentum")
    nesterov: bool = option(False)
    weight_decay: float = option(1e-4, flag="--weight-decay")
    decay_norm_and_bias: bool = option(True, "False: no weight decay on BN weights/biases and on biases")
    norm_bias_lr_mult: float = option(1.0, "BN weights/biases and biases learn at lr times this (their weight "
                                      "decay divided by it, so decay per step is unchanged)")
    batch_size: int = option(128, flag="--batch-size")
    # same result, less memory
    accum_steps: int = option(1, "split each batch into this many micro-batches", flag="--accum-steps")
    # schedule; lengths (epochs/iterations/milestones/warmup) count ``schedule_unit``s
    schedule: str = option("multistep", choices=("multistep", "cosine", "onecycle"))
    schedule_unit: str = option("iterations", choices=("iterations", "epochs"))
    epochs: float | None = option(None, "training length in epochs (replaces the recipe's length)",
                                  flag="--epochs", resumable=True)
    iterations: int | None = option(None, "training length in optimiser steps", flag="--iterations", resumable=True)
    milestones: list[float] = option(default_factory=list)
    gamma: float = option(0.1)
    warmup: float = option(0.0, "onecycle: a fraction of the whole run")
    warmup_lr: float | None = option(None, "constant LR during warm-up (the paper's 0.01); None: linear ramp from 0")
    final_lr_fraction: float = option(0.0, "cosine/onecycle end at lr * this")
    # regularisation and augmentation
    label_smoothing: float = option(0.0, flag="--label-smoothing")
    mixup_alpha: float = option(0.0, flag="--mixup", metavar="ALPHA")
    cutmix_alpha: float = option(0.0, flag="--cutmix", metavar="ALPHA")
    ema: bool = option(False, "keep EMA weights", flag="--ema", cli="on-off")
    ema_decay: float = option(0.999)
    ema_every: int = option(1, "update the EMA every N optimiser steps (at ema_decay per update)")
    pad: int = option(4)
    flip: bool = option(True)
    flip_mode: str = option("random", "random: each image mirrored with probability 1/2 every epoch; alternate: "
                            "each image's side swapped every epoch (in-memory data)", flag="--flip-mode",
                            choices=("random", "alternate"))
    cutout: int = option(0, "zero a random square of this side in every training image (in-memory data)",
                         flag="--cutout", metavar="PIXELS")
    tta: str | None = option(None, "test-time augmentation of the run's evaluations: flip, or flip-translate "
                             "(flips and one-pixel shifts)", flag="--tta", choices=("flip", "flip-translate"))
    resize_from: int | None = option(None, "progressive resizing: train at this image size first, growing to full "
                                     "size (in-memory data, streamed folders, large-image shards; see --resize-until)",
                                     flag="--resize-from", metavar="PIXELS")
    resize_until: float = option(0.5, "with --resize-from: reach the full size after this fraction of the epochs "
                                 "(default 0.5)", flag="--resize-until", metavar="FRACTION")
    # the flag also sets fit_images and resize (see cli/train.py)
    image_size: int = option(224, "image folders: large (streamed) images train on random-resized crops of N and "
                             "are evaluated on the centre N of shorter side N*8/7; small (in-memory) images of "
                             "mixed sizes are scaled to shorter side N and centre-cropped to N x N, and images all "
                             "of one smaller square size (e.g. CIFAR's 32) are upscaled to N on the device",
                             flag="--image-size", metavar="N")
    fit_images: int | None = option(None, "small images in memory: shorter side to N, centre crop N x N, or, "
                                    "all of one smaller square size, upscaled to N on the device (--image-size)")
    resize: int = option(256, "ImageNet-style data: eval resize before the centre crop")
    # engine
    device: str = option("auto", flag="--device", choices=("auto", "cpu", "cuda"), resumable=True)
    precision: str = option("auto", flag="--precision", choices=("auto", "bf16", "fp16", "fp32"))
    channels_last: bool = option(True, flag="--channels-last", cli="on-off")
    compile: bool = option(False, "torch.compile", flag="--compile", cli="on-off")
    sync_bn: bool = option(False, "with several processes: batch-norm statistics of the global batch "
                           "(SyncBatchNorm)", flag="--sync-bn", cli="on-off")
    seed: int = option(0, flag="--seed")
    deterministic: bool | None = option(None, "deterministic kernels (default: on for CPU, so resume is bit-exact; "
                                        "off for CUDA, where cudnn.benchmark picks the fastest kernels)",
                                        flag="--deterministic", cli="on-off")
    workers: int = option(help="loader processes for streamed (ImageNet-size) data (default: with CUDA, the "
                          "cores per local GPU less one; else the cores, at most 4)",
                          default_factory=lambda: default_workers(), flag="--workers", resumable=True)
    # output
    out: str | None = option(None, "run folder (default runs/<model>-<recipe>-<time>)", flag="--out")
    log_every: int = option(50, flag="--log-every", metavar="STEPS", resumable=True)
    # 0: only at epoch ends
    checkpoint_every: int = option(0, "also checkpoint every N steps", flag="--checkpoint-every", metavar="STEPS",
                                   resumable=True)
    eval_every: int = option(1, "evaluate every N epochs (default 1) and after the last", flag="--eval-every",
                             metavar="EPOCHS", resumable=True)
    tensorboard: bool = option(False, "also log to TensorBoard", flag="--tensorboard", cli="on", resumable=True)
    progress: bool = option(True, "a progress bar on a terminal (resnets train --no-progress: none)",
                            resumable=True)
    plots: bool = option(True, "draw the PNG plots when the run ends", resumable=True)
    stop_after_steps: int | None = option(None, "debug: checkpoint and stop once this global step is reached",
                                          flag="--stop-after-steps", metavar="N", cli="hidden", resumable=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def effective_lr(self) -> float:
        """The peak learning rate actually used (after batch-size scaling)."""
        return self.lr * self.batch_size / self.lr_scale_batch if self.lr_scale_batch else self.lr


def options() -> dict[str, Option]:
    """Each TrainConfig field's ``Option``, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(TrainConfig)}


# The settings ``--resume`` may change; every other one is the run's own.
RESUMABLE = frozenset(name for name, opt in options().items() if opt.resumable)


def default_workers() -> int:
    """Loader processes by default. With CUDA: the CPU cores this process may use per local GPU (the local
    processes, ``LOCAL_WORLD_SIZE``, under torchrun; else the GPUs it sees), less one for the main process, at
    least 1 (16 cores and one GPU: 15). Without: those cores, at most 4. ``--workers`` wins."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpus = _local_gpus()
    if gpus:
        return max(1, cores // gpus - 1)
    return max(1, min(4, cores))


def _local_gpus() -> int:
    """The GPUs this host's processes of the run share its cores between (0 without CUDA)."""
    import os

    import torch

    if not torch.cuda.is_available():
        return 0
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(local) if local.isdigit() and int(local) > 0 else max(1, torch.cuda.device_count())


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
    # Ours, for adapting trained weights to a few hundred to a few thousand images: a short warm-up and cosine
    # decay from a tenth of the from-scratch LR, no decay on norms/biases, light label smoothing, no EMA (too
    # few steps for an average to settle).
    "finetune": dict(
        optimizer="sgd", lr=0.01, lr_scale_batch=None, momentum=0.9, nesterov=True, weight_decay=5e-4,
        decay_norm_and_bias=False, batch_size=64, schedule="cosine", schedule_unit="epochs", epochs=30,
        warmup=2, warmup_lr=None, final_lr_fraction=0.0, label_smoothing=0.1, ema=False, pad=4, flip=True,
        zero_init_residual=False,
    ),
    # The CIFAR-10 speed records' tricks (Page 2018, "How to train your ResNet"; Jordan 2024, airbench), for
    # resnet9 and resnet18-cifar: batch 512 at LR 0.4 (linear in the batch), Nesterov, wd 5e-4 on every weight,
    # a short one-cycle (rise over the first 20%), label smoothing 0.2, a fixed patch-whitening first layer,
    # pad-4 translate + alternating flip + 8-px cutout, EMA every 5 steps, flip-translate TTA, one evaluation
    # (--eval-every asks for more).
    "cifar-record": dict(
        optimizer="sgd", lr=0.4, lr_scale_batch=512, momentum=0.9, nesterov=True, weight_decay=5e-4,
        decay_norm_and_bias=True, norm_bias_lr_mult=1.0, batch_size=512, schedule="onecycle",
        schedule_unit="epochs", epochs=10, warmup=0.2, final_lr_fraction=0.0, label_smoothing=0.2, ema=True,
        ema_decay=0.95, ema_every=5, pad=4, flip=True, flip_mode="alternate", cutout=8, whiten=True,
        tta="flip-translate", eval_every=10, zero_init_residual=False,  # evaluated once, after the 10th epoch
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

def default_recipe(model: str, init: str | None = None) -> str:
    """``finetune`` when starting from weights (``init``); else ``cifar-fast`` for CIFAR nets, ``imagenet-fast``
    for ImageNet nets."""
    if init is not None:
        return "finetune"
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


# The settings a file may not give freely: a data spec that runs a command or fetches a URL, a folder elsewhere.
GUARDED = ("data", "out", "cache_dir")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:\ or C:/, a local Windows path


def unsafe_reason(key: str, value: Any) -> str | None:
    """Why the setting ``key=value`` may not come from a file (a phrase: "is a URL; ..."): a ``data`` spec holding
    a ``pipe:`` command or a URL scheme (in any ``::`` part, before or after brace expansion), or an
    ``out``/``cache_dir`` that is absolute, starts with ``~`` or climbs out with ``..``; None if it may."""
    if not isinstance(value, str):
        return None
    if key == "data":
        for part in value.split("::"):
            rest = _DRIVE.sub("", part.removeprefix("file:"), count=1)
            if ":" in rest:  # a scheme, or pieces that brace expansion would join into one
                return ("is a shell command (pipe:); a setting read from a file runs none" if "pipe" in part.lower()
                        else "is a URL; a setting read from a file fetches none")
        return None
    if key in ("out", "cache_dir"):
        path = Path(value)
        if path.expanduser().is_absolute() or value.startswith("~") or ".." in path.parts:
            return ("is outside the current folder (absolute, ~ or '..'); a setting read from a file stays "
                    "inside it")
    return None


def check_file_settings(settings: dict[str, Any], source: str | Path, given: typing.Collection[str] = ()) -> None:
    """UserError naming ``source`` and the first of ``settings`` (read from that file) that ``unsafe_reason``
    refuses, unless the user gave that setting too (a key in ``given``): a file may not make us run a
    command, fetch a URL or write outside the current folder; only a value typed on the command line may."""
    for key in GUARDED:
        reason = unsafe_reason(key, settings.get(key))
        if reason is not None and key not in given:
            flag = options()[key].flag
            raise UserError(f"{source}: {key} {settings[key]!r} {reason}: type {flag} {shlex.quote(settings[key])} "
                            "if you trust it")


def resolve_config(
    typed: dict[str, Any] | None = None,
    *,
    recipe: str | None = None,
    config_file: str | Path | None = None,
    resume: str | Path | None = None,
) -> TrainConfig:
    """Recipe defaults, then ``config_file``, then ``typed`` (the settings the user gave; None values ignored)
    -> a final TrainConfig.

    The recipe comes from ``recipe``, else the typed settings or file, else ``default_recipe(model)``. With
    ``resume`` (a run folder), the run's saved config (its ``last.pt``) takes the recipe's place: a setting
    not in ``RESUMABLE`` may only repeat the run's value, and ``progress`` and ``stop_after_steps`` are this
    invocation's, not the run's. Unknown keys, unknown recipes, invalid values and refused changes raise
    ``UserError``.
    """
    layers: list[dict[str, Any]] = []
    typed = {k: v for k, v in (typed or {}).items() if v is not None}
    if config_file is not None:
        layers.append(load_config_file(config_file))
    layers.append(typed)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for layer in layers:
        unknown = [k for k in layer if k not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key '{unknown[0]}'{hint}")
    for layer in layers:
        check_types(layer)
    if config_file is not None:
        check_file_settings(layers[0], config_file, given=typed)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    if resume is not None:
        values = _saved_config(Path(resume), merged if recipe is None else {**merged, "recipe": recipe})
        recipe = values["recipe"]
    else:
        if merged.get("init") is not None:
            merged = _with_init_architecture(merged)
        model = merged.get("model", TrainConfig.model)
        if model not in MODELS:
            model_family(model)  # raises the registry's UserError with suggestions
        recipe = recipe or merged.get("recipe") or default_recipe(model, merged.get("init"))
        values = _recipe_values(recipe, model, merged)
    # A length given explicitly replaces the recipe's or the run's (and its unit): --epochs wins over iterations.
    if "epochs" in merged and "iterations" not in merged:
        values["iterations"] = None
    if "iterations" in merged and "epochs" not in merged:
        values["epochs"] = None
    values.update(merged)
    values["recipe"] = recipe
    cfg = TrainConfig(**values)
    _validate(cfg)
    return cfg


def _recipe_values(recipe: str, model: str, merged: dict[str, Any]) -> dict[str, Any]:
    """The settings ``recipe`` gives a fresh run of ``model`` with the settings ``merged``."""
    if recipe not in RECIPES:
        close = difflib.get_close_matches(recipe, RECIPES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown recipe '{recipe}'; {hint}choose one of: {', '.join(RECIPES)}")
    values: dict[str, Any] = dict(RECIPES[recipe])
    if values.get("whiten") and not MODELS[model].get("speed"):  # cifar-record on a net without the layer
        values["whiten"] = False
    if recipe == "cifar-paper" and MODELS[model]["family"] == "cifar" \
            and MODELS[model]["depth"] >= PAPER_WARMUP_MIN_DEPTH:
        values.update(PAPER_WARMUP)
    if merged.get("data", TrainConfig.data) == "sample" and "epochs" not in merged and "iterations" not in merged \
            and recipe == "cifar-fast":
        values.update(epochs=SAMPLE_EPOCHS, iterations=None)
    return values


def _with_init_architecture(merged: dict[str, Any]) -> dict[str, Any]:
    """``merged`` with the architecture of the ``init`` weights: a resnets file's own (model, variant, shortcut);
    a plain state dict needs ``model`` given. UserError for a missing file, a ``.pth`` without ``model`` or a
    ``model``/``variant`` other than the file's."""
    from ..pretrained import resolve_name
    from ..weights import read_metadata

    entry = resolve_name(merged["init"], merged.get("model"))
    if entry is not None:  # a known weights name (resnets weights list): its architecture is the table's
        if merged.get("variant", entry.variant) != entry.variant:
            raise UserError(f"--init {entry.name} is a {entry.arch} of variant {entry.variant}, not "
                            f"{merged['variant']!r}: drop --variant")
        shortcut = entry.options.get("shortcut")
        if shortcut and merged.get("shortcut", shortcut) != shortcut:
            raise UserError(f"--init {entry.name} has shortcut {shortcut}, not {merged['shortcut']!r}: drop --shortcut")
        return {"model": entry.arch, "variant": entry.variant, **({"shortcut": shortcut} if shortcut else {}),
                **merged}
    path = Path(merged["init"]).expanduser()
    if not path.is_file():
        raise UserError(f"--init {path}: no such file; give a resnets .safetensors or a torchvision/timm .pth")
    try:
        spec = read_metadata(path)["spec"]
    except UserError:  # not a resnets file: a torchvision/timm/plain state dict, read when the run starts
        if "model" not in merged:
            raise UserError(f"--init {path} is not a resnets weights file; name its architecture with --model NAME "
                            "(e.g. --model resnet18 for torchvision's weights)") from None
        return merged
    for key, flag in (("model", "--model"), ("variant", "--variant"), ("shortcut", "--shortcut")):
        if key in merged and spec.get(key if key != "model" else "name") != merged[key]:
            held = spec.get(key if key != "model" else "name")
            raise UserError(f"--init {path} holds a {spec['name']} ({key} {held!r}), not {merged[key]!r}: "
                            f"drop {flag}, or start from weights of that architecture")
    found = {"model": spec["name"], "variant": spec.get("variant")}
    if spec.get("shortcut"):
        found["shortcut"] = spec["shortcut"]
    return {**found, **merged}


def _saved_config(run_dir: Path, given: dict[str, Any]) -> dict[str, Any]:
    """The settings of the run in ``run_dir`` (from its ``last.pt``), without this invocation's ``progress`` and
    ``stop_after_steps``; UserError naming the first setting in ``given`` it cannot change but ``given`` does."""
    from .checkpoint import load_checkpoint

    path = run_dir / "last.pt"
    settings = load_checkpoint(path).get("config")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(settings, dict) or not settings.keys() <= names:
        raise UserError(f"{path} holds no resnets training config (unknown settings); resume a run that "
                        "resnets train wrote")
    try:
        check_types(settings)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    # the run's folder is the one typed after --resume; its saved ``out`` is never used
    check_file_settings(settings, path, given={*given, "out"})
    saved = TrainConfig(**settings)
    opts = options()
    for key in sorted(given.keys() - RESUMABLE):
        new, old = given[key], getattr(saved, key)
        if key == "out" and Path(new).resolve() == run_dir.resolve():
            continue
        if new != old:
            flag = opts[key].flag or "--" + key.replace("_", "-")
            raise UserError(f"--resume continues {run_dir} with its own settings; its {key} is {old!r}, not "
                            f"{new!r}: drop {flag}, or start a new run with --out")
    return {**saved.to_dict(), "progress": TrainConfig.progress,
            "stop_after_steps": TrainConfig.stop_after_steps}


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
    """UserError naming the first setting of ``cfg`` out of its range or at odds with another."""
    if cfg.shortcut is not None and cfg.shortcut not in options()["shortcut"].choices:  # a message of its own
        raise UserError(f"shortcut must be A (zero padding) or B (projection), not {cfg.shortcut!r}")
    for f in dataclasses.fields(cfg):
        choices, value = f.metadata["option"].choices, getattr(cfg, f.name)
        if choices and value not in choices and not (value is None and f.default is None):
            raise UserError(f"{f.name} must be one of {', '.join(choices)}, not {value!r}")
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
    if cfg.ema_every < 1:
        raise UserError(f"ema_every must be at least 1 (steps), not {cfg.ema_every}")
    if cfg.cutout < 0:
        raise UserError(f"cutout must be >= 0 pixels, not {cfg.cutout}")
    if cfg.norm_bias_lr_mult <= 0:
        raise UserError(f"norm_bias_lr_mult must be positive, not {cfg.norm_bias_lr_mult}")
    if cfg.model == "resnet18-cifar" and (cfg.freeze or cfg.freeze_epochs or cfg.linear_probe or
                                          cfg.backbone_lr_mult is not None or cfg.lr_stage_decay is not None):
        # its four stages (conv2_x .. conv5_x) are not the CIFAR family's three that fine-tuning names
        raise UserError("--freeze, --freeze-epochs, --linear-probe and per-stage learning rates name the CIFAR "
                        "family's three stages; resnet18-cifar has four: train it without them")
    if cfg.whiten and not MODELS[cfg.model].get("speed"):
        raise UserError(f"--whiten is an option of resnet9 and resnet18-cifar, not of {cfg.model}; drop --whiten")
    if cfg.val_split < 0:
        raise UserError("val_split must be >= 0")
    if cfg.shortcut is not None and model_family(cfg.model) != "cifar":
        raise UserError(f"--shortcut is for CIFAR nets; {cfg.model} has projection shortcuts (variant d: "
                        "average-pool then projection); drop --shortcut")
    _validate_finetuning(cfg)


def _validate_finetuning(cfg: TrainConfig) -> None:
    """UserError for fine-tuning settings that name no stage of ``cfg.model`` or cannot work together."""
    from .finetune import stage_names

    stages = stage_names(model_family(cfg.model))
    for name in cfg.freeze:
        if name not in (*stages, "backbone"):
            close = difflib.get_close_matches(name, (*stages, "backbone"), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"unknown stage '{name}' for --freeze; {hint}{cfg.model}'s stages are "
                            f"{', '.join(stages)}, or backbone (all of them)")
    if not cfg.linear_probe and ("backbone" in cfg.freeze or set(stages) <= set(cfg.freeze)):
        raise UserError("--freeze leaves only the head to train: that is a linear probe; use --linear-probe "
                        "(the backbone's features computed once, far faster), or freeze fewer stages")
    if cfg.linear_probe and cfg.init is None:
        raise UserError("--linear-probe trains a head on the features of trained weights: give them with --init FILE")
    if cfg.linear_probe and (cfg.freeze_epochs or cfg.backbone_lr_mult is not None or cfg.lr_stage_decay is not None):
        raise UserError("--linear-probe trains the head alone: drop --freeze-epochs, --backbone-lr-mult and "
                        "--lr-stage-decay")
    if cfg.freeze_epochs < 0:
        raise UserError(f"freeze_epochs must be >= 0, not {cfg.freeze_epochs}")
    if cfg.backbone_lr_mult is not None and cfg.lr_stage_decay is not None:
        raise UserError("give one of --backbone-lr-mult (one factor for the whole backbone) and --lr-stage-decay "
                        "(a factor per stage), not both")
    for key in ("backbone_lr_mult", "lr_stage_decay"):
        value = getattr(cfg, key)
        if value is not None and not 0 < value <= 1:
            raise UserError(f"{key} must be in (0, 1], not {value}")
