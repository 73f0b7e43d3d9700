"""The training loop: ``train(config) -> RunResult``, readable top to bottom.

setup (device, precision, seed, data, model, optimiser, schedule, EMA, resume) -> for each epoch: for each
batch: LR, forward/backward (micro-batches), step, EMA, log, callbacks, checkpoint -> evaluate, log, save
last/best -> plots. A run is a directory: config.json, metrics.jsonl/.csv, last.pt, best.pt,
best.safetensors, final.safetensors (once finished), and PNG plots.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.batches import progressive_image_size
from ..errors import UserError
from ..evaluate import evaluate_model
from ..evaluate import limit_images as _limit
from ..models import create_model
from ..models.registry import model_family
from ..outputs import check_out_dir
from ..runtime import (
    autocast_context,
    autocast_dtype,
    choose_precision,
    resolve_device,
    seed_everything,
    use_deterministic,
)
from . import distributed as D
from .checkpoint import CHECKPOINT_VERSION, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .ema import ModelEMA
from .metrics import MetricsLogger
from .optim import LRSchedule, build_optimizer, set_lr
from .plots import lr_curve

# Settings that may change when a run is resumed (everything else comes from the checkpoint).
RESUMABLE_OVERRIDES = ("stop_after_steps", "progress", "tensorboard", "plots", "workers", "log_every",
                       "checkpoint_every", "eval_every", "epochs", "iterations", "device")
MAX_SKIPPED_STEPS = 5  # fp16: stop after this many consecutive non-finite steps
DIST_READ_EVERY = 10  # several processes: agree on stop requests at least this often (steps)


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the run stopped and its last checkpoint is the last good one."""


@dataclass
class RunResult:
    """What a run produced: its directory, the last and best epoch records, and where it stopped."""

    run_dir: Path
    final: dict[str, Any]
    best: dict[str, Any]
    step: int
    interrupted: bool = False
    held_out: str = "test"  # where val_* come from: "validation" (a --val-split) or "test"

    @property
    def best_weights(self) -> Path:
        return self.run_dir / "best.safetensors"

    @property
    def final_weights(self) -> Path:
        """The weights after the last step (written once the run has finished)."""
        return self.run_dir / "final.safetensors"


@dataclass
class TrainState:
    """The live state of a run, handed to callbacks after every optimiser step."""

    cfg: TrainConfig
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0  # optimiser steps done
    epoch: int = 0  # 0-based epoch in progress
    batch: int = 0  # batches of this epoch done
    steps_per_epoch: int = 0
    total_steps: int = 0
    lr: float = 0.0
    loss: float = float("nan")  # mean training loss of the steps up to the last read (log step, epoch end)
    stop: bool = False  # set by a callback (or a signal) to checkpoint and stop after this step
    extra: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[TrainState], None]


@dataclass
class DataBundle:
    """What the loop needs from the data: batch iterables, class names and the input normalisation."""

    train: Any  # len(), set_epoch(e), iter_from(b) -> iterator of (x, y)
    val: Any  # iterable of (x, y)
    classes: list[str]
    mean: list[float]
    std: list[float]
    generator: torch.Generator | None
    description: str
    bad_images: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) skipped
    found_bad: Callable[[], list[tuple[str, str]]] | None = None  # streamed: those skipped so far, while training


class _StreamingBatches:
    """A DataLoader made resumable: its order is seeded by (seed, epoch) and ``iter_from`` skips batches."""

    def __init__(self, loader: Any, generator: torch.Generator, seed: int) -> None:
        self.loader, self.generator, self.seed, self.epoch = loader, generator, seed, 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from ..data.batches import epoch_seed

        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))  # the order and the workers' seeds
        it = iter(self.loader)
        for i, batch in enumerate(it):
            if i >= start:
                yield batch


def build_data(cfg: TrainConfig, device: torch.device, env: D.DistEnv | None = None) -> DataBundle:
    """Open ``cfg.data``: small images in memory as ``DeviceBatches``; ImageNet-style folders streamed; shards
    streamed. With several processes (``env``) each rank gets its slice of every batch and of the test set."""
    from .. import data as rdata
    from ..data.shards import is_shard_spec
    from ..evaluate import is_streaming_folder

    env = env or D.DistEnv(device=device)
    if cfg.download and cfg.data not in ("cifar10", "cifar100"):
        raise UserError(f"--download fetches cifar10 or cifar100; {cfg.data} is not one of them: drop --download")
    if is_shard_spec(cfg.data):
        return _shard_data(cfg, device, env)
    if env.enabled and is_streaming_folder(cfg.data):
        raise UserError(f"{cfg.data}: several processes stream large images from WebDataset shards; write them "
                        f"with: resnets shard {cfg.data} --out SHARDS, then train with --data SHARDS")
    if is_streaming_folder(cfg.data):
        return _streamed_folder_data(cfg, device)
    splits = rdata.open_data(cfg.data, cache_dir=cfg.cache_dir, skip_bad_images=cfg.skip_bad_images,
                             download=cfg.download, val_split=cfg.val_split, image_size=cfg.fit_images,
                             progress=cfg.progress and env.is_main)
    train_set, test_set = _limit(splits.train, cfg.train_images), _limit(splits.test, cfg.test_images)
    mean, std = list(train_set.mean()), list(train_set.std())
    generator = torch.Generator().manual_seed(cfg.seed)
    train = rdata.DeviceBatches(train_set, cfg.batch_size, train=True, device=device, mean=mean, std=std,
                                pad=cfg.pad, flip=cfg.flip, generator=generator, channels_last=cfg.channels_last)
    if env.enabled:  # each rank: its slice of every global batch, and of the test set
        train = D.RankBatches(train, env.rank, env.world_size)
        test_set = test_set.subset(D.rank_slice(len(test_set), env.rank, env.world_size))
    val = rdata.DeviceBatches(test_set, max(cfg.batch_size, 256), train=False, device=device, mean=mean,
                              std=std, channels_last=cfg.channels_last)
    what = "validation" if cfg.val_split else "test"
    desc = f"{splits.name}: {len(train_set)} train / {len(test_set)} {what} images, {len(splits.classes)} classes"
    missing = [c for r in splits.report.values() if r.source != splits.report["train"].source
               for c in r.missing_classes] if "train" in splits.report else []
    if missing:
        desc += f" ({what} split has no images of {', '.join(missing)})"
    bad = [b for r in splits.report.values() for b in r.bad_images]
    return DataBundle(train, val, list(splits.classes), mean, std, generator, desc, bad)


def _refuse_pad(cfg: TrainConfig, what: str) -> None:
    """Pad-and-crop is for small images; large ones train on random-resized crops."""
    if cfg.pad != TrainConfig.pad:
        raise UserError(f"pad (pad-and-crop) is for small images held in memory; {what} trains on "
                        "random-resized crops: drop pad")


def _streamed_folder_data(cfg: TrainConfig, device: torch.device) -> DataBundle:
    """A folder of large images, streamed: train/ (less a ``val_split`` held out) and val/ or test/; the
    ``train_images``/``test_images`` subsets and ``flip`` apply as for images held in memory."""
    from ..data.folder import find_classes, scan_split
    from ..data.splits import VAL_SPLIT_SEED
    from ..data.streaming import IMAGENET_MEAN, IMAGENET_STD, streaming_loader

    root = Path(cfg.data)
    val_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir():
        raise UserError(f"{root} needs train/ and val/ (or test/) folders of class sub-folders")
    if val_dir is None and not cfg.val_split:
        raise UserError(f"{root} has no val/ or test/ folder next to train/; add one, or hold out training "
                        "images with --val-split N")
    _refuse_pad(cfg, f"{root} (large images, streamed)")
    classes = find_classes(root / "train")
    n = len(scan_split(root / "train", classes))
    train_idx: list[int] = list(range(n))
    val_idx: list[int] | None = None
    if cfg.val_split:  # as hold_out: the last val_split of a fixed seeded permutation
        if not 0 < cfg.val_split < n:
            raise UserError(f"val_split must be between 1 and {n - 1} (the training split has {n} images), "
                            f"got {cfg.val_split}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED)).tolist()
        train_idx, val_idx = order[: n - cfg.val_split], order[n - cfg.val_split:]
        val_dir = root / "train"
    else:
        assert val_dir is not None
        val_idx = list(range(len(scan_split(val_dir, classes))))
    train_idx, val_idx = _pick(train_idx, cfg.train_images), _pick(val_idx, cfg.test_images)
    common = dict(batch_size=cfg.batch_size, workers=cfg.workers, image_size=cfg.image_size, resize=cfg.resize,
                  skip_bad_images=cfg.skip_bad_images, pin_memory=device.type == "cuda")
    loader_gen = torch.Generator()
    train = streaming_loader(root / "train", classes, train=True, generator=loader_gen, flip=cfg.flip,
                             indices=train_idx, **common)  # type: ignore[arg-type]
    val = streaming_loader(val_dir, classes, train=False, indices=val_idx, **common)  # type: ignore[arg-type]
    what = "validation" if cfg.val_split else "test"
    desc = f"{root} (streamed): {len(train_idx)} train / {len(val_idx)} {what} images, {len(classes)} classes"
    return DataBundle(_StreamingBatches(train, loader_gen, cfg.seed), val, classes, list(IMAGENET_MEAN),
                      list(IMAGENET_STD), None, desc, found_bad=lambda: train.bad_images + val.bad_images)


def _pick(indices: list[int], count: int | None) -> list[int]:
    """``count`` of ``indices``: the first of a fixed seeded permutation, as ``limit_images``; all if None."""
    if count is None or count >= len(indices):
        return indices
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(1234))[:count]
    return [indices[i] for i in order.tolist()]


def _shard_data(cfg: TrainConfig, device: torch.device, env: D.DistEnv) -> DataBundle:
    """WebDataset shards, streamed: this rank's shards for training, its share of the test shards."""
    from ..data import shards as wd
    from ..data.streaming import IMAGENET_MEAN, IMAGENET_STD, imagenet_transforms

    for key, why in (("val_split", "the val/test split beside them is the held-out set; write shards of a "
                                   "folder with val/ (resnets shard DIR --out SHARDS)"),
                     ("train_images", "every sample is streamed; write shards of fewer images, or train "
                                      "fewer steps with --iterations N"),
                     ("test_images", "every test sample is streamed; write shards of fewer images")):
        if getattr(cfg, key):
            raise UserError(f"--{key.replace('_', '-')} does not apply to shards ({cfg.data}): {why}")
    train_set = wd.open_shards(cfg.data)
    test_set = wd.sibling_split(train_set)
    if test_set is None:
        raise UserError(f"{cfg.data}: no val or test split in an index.json beside the shards "
                        "(write them with resnets shard DIR --out SHARDS)")
    small = train_set.small_images
    if not small:
        _refuse_pad(cfg, f"{cfg.data} (large-image shards)")
    mean = list(train_set.mean) if small and train_set.mean else list(IMAGENET_MEAN)
    std = list(train_set.std) if small and train_set.std else list(IMAGENET_STD)
    train_tf = None if small else imagenet_transforms(True, cfg.image_size, cfg.resize, mean, std, cfg.flip)
    eval_tf = wd.eval_transform(mean, std) if small else imagenet_transforms(False, cfg.image_size, cfg.resize,
                                                                             mean, std)
    train = wd.ShardBatches(train_set, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size,
                            workers=cfg.workers, mean=mean, std=std, pad=cfg.pad, flip=cfg.flip,
                            transform=train_tf, skip_bad_images=cfg.skip_bad_images,
                            pin_memory=device.type == "cuda")
    val = wd.eval_loader(test_set, max(cfg.batch_size // env.world_size, 256), rank=env.rank,
                         world_size=env.world_size, workers=min(cfg.workers, 2), transform=eval_tf,
                         skip_bad_images=cfg.skip_bad_images, pin_memory=device.type == "cuda")
    desc = (f"{cfg.data} (streamed shards): {train_set.total} train / {test_set.total} {test_set.split} images, "
            f"{len(train_set.classes)} classes")
    return DataBundle(train, val, list(train_set.classes), mean, std, None, desc)






def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup or CutMix (chosen at random when both are on): mixed x, targets a and b, and a's weight."""
    use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or torch.rand((), generator=gen) < 0.5)
    alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
    lam = _beta(alpha, gen)
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, (), generator=gen)), int(torch.randint(w, (), generator=gen))
        y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x * lam + x[perm] * (1 - lam)
    return x, y, y[perm], lam


def _beta(alpha: float, gen: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw made from ``gen``: g1 / (g1 + g2) with g1, g2 ~ Gamma(alpha)."""
    a = torch._standard_gamma(torch.full((2,), alpha), generator=gen)
    return float(a[0] / a.sum())


def train(
    config: TrainConfig,
    *,
    resume: str | Path | None = None,
    on_step: Sequence[Callback] = (),
    on_epoch: Sequence[Callback] = (),
    log: Callable[[str], None] = print,
    given: Collection[str] | None = None,
) -> RunResult:
    """Train ``config`` (see ``resolve_config``); with ``resume``, continue the run in that directory exactly.

    On resume, the settings in ``RESUMABLE_OVERRIDES`` that ``given`` names (default: those of ``config``
    that differ from ``TrainConfig()``) apply and the others come from the checkpoint; with ``given``, one
    it names that differs from the run's is a ``UserError``. A changed length recomputes the LR schedule over
    the new length, and says so.

    ``on_step`` callbacks run after every optimiser step, ``on_epoch`` after every evaluation; either may set
    ``state.stop`` to checkpoint and stop, or raise ``KeyboardInterrupt`` (the run checkpoints, then re-raises).
    """
    # ---- resume: the checkpoint's config, with the few settings that may change --------------------------
    ckpt: dict[str, Any] | None = None
    if resume is None and config.out and D.restart_count() > 0 and (Path(config.out) / "last.pt").is_file():
        resume = config.out  # torchrun restarted the workers (--max-restarts): go on from the last checkpoint
    if resume is not None:
        run_dir = Path(resume)
        ckpt = load_checkpoint(run_dir / "last.pt")
        cfg = TrainConfig(**ckpt["config"])
        defaults = TrainConfig()
        user_set = set(given) if given is not None else {
            k for k in cfg.to_dict() if getattr(config, k) != getattr(defaults, k)}
        if given is not None:  # the command line: what the user set must be what the run has
            _refuse_changes(config, cfg, user_set, run_dir)
        for key in RESUMABLE_OVERRIDES:
            if key in user_set or key in ("stop_after_steps", "progress"):
                setattr(cfg, key, getattr(config, key))
        if config.epochs is not None or config.iterations is not None:
            cfg.epochs, cfg.iterations = config.epochs, config.iterations
            if cfg.epochs is None and cfg.iterations is None:
                cfg.epochs, cfg.iterations = ckpt["config"]["epochs"], ckpt["config"]["iterations"]
    else:
        cfg = config
        run_dir = Path(cfg.out) if cfg.out else Path("runs") / f"{cfg.model}-{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
        if D.restart_count() > 0 and not cfg.out:
            raise UserError("torchrun restarted this run but it has no --out to resume from; give --out")
        if (run_dir / "last.pt").exists():
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --out")
    check_out_dir(run_dir, flag="--resume" if resume is not None else "--out")  # before any work

    # ---- engine: device, precision, determinism ---------------------------------------------------------
    env = D.init_distributed(resolve_device(cfg.device))  # one process: rank 0 of 1, nothing joined
    device = env.device
    if not env.is_main:
        log = _quiet
    if env.enabled and not cfg.out and ckpt is None:
        run_dir = Path(D.broadcast_object(env, str(run_dir)))  # rank 0's timestamped name everywhere
    choose_precision(cfg.precision, device)  # fp16 on CPU fails here, before any work
    seed_everything(cfg.seed, use_deterministic(cfg.deterministic, device))
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    # ---- data and model ----------------------------------------------------------------------------------
    data = build_data(cfg, device, env)
    options = {"shortcut": cfg.shortcut} if cfg.shortcut else {}  # recorded in the weights' spec
    model = create_model(cfg.model, num_classes=len(data.classes), variant=cfg.variant,
                         zero_init_residual=cfg.zero_init_residual, **options).to(device, memory_format=memory_format)
    if cfg.sync_bn and env.enabled:
        model = D.convert_sync_batchnorm(model, device)  # BN statistics of the global batch, not the rank's
    # precision "auto" on CPU: timed on this model (about a second, cached); rank 0 decides for all ranks
    side = getattr(data.train, "crop", (cfg.image_size,))[0]
    amp_name = choose_precision(cfg.precision, device, model, image_size=side, training=True,
                                model_key=cfg.model) if env.is_main else None
    amp_name = D.broadcast_object(env, amp_name)
    amp_dtype = autocast_dtype(amp_name)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None  # fp16 is CUDA-only
    forward = D.wrap_ddp(model, env)  # the model itself for one process
    forward = torch.compile(forward) if cfg.compile else forward
    optimizer = build_optimizer(model, cfg)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema else None
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)

    steps_per_epoch = len(data.train)
    if steps_per_epoch == 0:
        raise UserError(f"the training set is smaller than one batch ({cfg.batch_size})")
    total_steps = cfg.iterations if cfg.iterations is not None else math.ceil(cfg.epochs * steps_per_epoch)
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    schedule = LRSchedule.from_config(cfg, total_steps, steps_per_epoch)
    if ckpt is not None:
        _say_length_change(TrainConfig(**ckpt["config"]), cfg, ckpt["step"], total_steps, steps_per_epoch, log)
    if cfg.resize_from is not None and not hasattr(data.train, "set_image_size"):
        raise UserError("resize_from (progressive resizing) works with small images held in memory (CIFAR, "
                        "small-image folders), not with streamed data; drop it")
    state = TrainState(cfg, run_dir, model, optimizer, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    # running sums since the epoch began and since the last step record
    sums = {"epoch_loss": 0.0, "epoch_correct": 0.0, "epoch_seen": 0, "epoch_time": 0.0,
            "win_loss": 0.0, "win_correct": 0.0, "win_seen": 0, "win_time": 0.0}
    best: dict[str, Any] = {}
    elapsed = 0.0

    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"], data.generator)
        aug_gen.set_state(ckpt["aug_rng"])
        state.step, state.epoch, state.batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        sums.update(ckpt["sums"])
        best, elapsed = ckpt["best"], ckpt["elapsed_s"]
    if env.is_main:  # the run can start: only now its folder
        run_dir.mkdir(parents=True, exist_ok=True)
        if data.bad_images:
            _write_bad_images(run_dir / "bad_images.txt", data.bad_images)
            log(f"skipped {len(data.bad_images)} bad image(s); listed in {run_dir / 'bad_images.txt'}")
    metrics = MetricsLogger(run_dir, tensorboard=cfg.tensorboard, resume_step=state.step if ckpt else None) \
        if env.is_main else _MemoryMetrics()
    if env.is_main:
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    log(f"{'resuming' if ckpt else 'training'} {cfg.model} ({cfg.recipe}) on {data.description}; "
        f"{total_steps} steps of {cfg.batch_size} ({num_epochs} epochs) on {device}"
        f"{f' x {env.world_size} processes ({env.backend})' if env.enabled else ''}, "
        f"{amp_name}{' (auto)' if cfg.precision == 'auto' else ''}; run dir {run_dir}")

    def checkpoint(path: str = "last.pt") -> None:
        if not env.is_main:  # rank 0 writes; every rank holds the same weights
            return
        save_checkpoint({
            "version": CHECKPOINT_VERSION, "config": cfg.to_dict(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "ema": ema.state_dict() if ema else None, "rng": rng_state(data.generator),
            "aug_rng": aug_gen.get_state(), "step": state.step, "epoch": state.epoch, "batch": state.batch,
            "sums": dict(sums), "best": best, "metrics": metrics.records, "elapsed_s": elapsed,
            "classes": data.classes, "normalization": {"mean": data.mean, "std": data.std},
            "world_size": env.world_size,  # informational: epoch/batch count global steps, for any world size
        }, run_dir / path)

    totals = _StepTotals(device, guard_streak=MAX_SKIPPED_STEPS if scaler is not None else 1)

    def read_totals(stop: bool) -> bool:
        """Fold the device totals into ``sums`` (all ranks' together); raise on a non-finite loss; whether any
        rank asked to stop. Every rank calls it at the same steps."""
        loss, hits, seen, bad, stop_any = totals.read(env, stop)
        if bad is not None:
            _raise_non_finite(bad[1], bad[0], state.epoch, run_dir,
                              f"{MAX_SKIPPED_STEPS} steps in a row" if scaler is not None else "")
        for prefix in ("epoch_", "win_"):
            sums[prefix + "loss"] += loss
            sums[prefix + "correct"] += hits
            sums[prefix + "seen"] += seen
        if seen:
            state.loss = loss / seen
        return stop_any

    def stop_now(reason: str) -> None:
        if not env.enabled:  # a callback's stop may come between reads (several ranks stop only at reads)
            read_totals(False)
        checkpoint()
        log(f"{reason} at step {state.step} (epoch {state.epoch + 1}); checkpoint {run_dir / 'last.pt'}; "
            f"continue with: resnets train --resume {run_dir}")

    # Ctrl-C or SIGTERM: finish the step, checkpoint, stop. A second Ctrl-C aborts at once.
    signals = _StopSignals() if threading.current_thread() is threading.main_thread() else None
    from tqdm import tqdm

    from ..progress import progress_mode

    mode = progress_mode(cfg.progress and env.is_main)
    plain = mode == "plain"  # not a terminal: a plain line per log step
    bar = tqdm(total=total_steps, initial=state.step, unit="step", disable=mode != "bar",
               dynamic_ncols=True, leave=True)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    shipped = ema.module if ema is not None else model
    consistent, interrupted = True, False
    final: dict[str, Any] = {}
    try:
        while state.step < total_steps:
            # ---- one epoch ---------------------------------------------------------------------------
            data.train.set_epoch(state.epoch)
            train_size = None
            if cfg.resize_from is not None:  # progressive resizing: a pure function of the epoch, so resumable
                train_size = progressive_image_size(state.epoch, num_epochs, data.train.crop[0], cfg.resize_from,
                                                    cfg.resize_until)
                data.train.set_image_size(train_size)
            model.train()
            bar.set_description(f"epoch {state.epoch + 1}/{num_epochs}")
            t0 = time.perf_counter()
            batches = data.train.iter_from(state.batch) if state.batch < steps_per_epoch else iter(())
            for x, y in batches:
                consistent = False
                state.lr = schedule(state.step)
                set_lr(optimizer, state.lr)
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                y_b, lam = y, 1.0
                if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
                    x, y, y_b, lam = mix_batch(x, y, cfg, aug_gen)
                loss_sum = torch.zeros((), device=device)  # stays on the device: no host sync per step
                correct = torch.zeros((), device=device)
                for xs, ys, ybs in zip(x.chunk(cfg.accum_steps), y.chunk(cfg.accum_steps),
                                       y_b.chunk(cfg.accum_steps), strict=True):
                    with autocast_context(device, amp_dtype):
                        logits = forward(xs)
                        loss = criterion(logits, ys)
                        if lam < 1.0:
                            loss = lam * loss + (1 - lam) * criterion(logits, ybs)
                    part = loss * (len(ys) / len(y))
                    (scaler.scale(part) if scaler else part).backward()
                    loss_sum += part.detach()
                    correct += (logits.detach().argmax(1) == ys).sum()
                if scaler is not None:
                    scaler.step(optimizer)  # skips the update when the gradients overflowed
                    scaler.update()
                else:
                    optimizer.step()  # a non-finite loss is caught at the next read, before any checkpoint
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
                state.step += 1
                state.batch += 1
                totals.add(loss_sum, correct, len(y), state.step)
                consistent = True

                # ---- bookkeeping: read the totals when due (the loop's only host sync), step record ------
                if signals is not None and signals.requested:
                    state.stop = True
                done = state.step >= total_steps
                log_due = state.step % cfg.log_every == 0 or done
                stop_at = cfg.stop_after_steps is not None and state.step >= cfg.stop_after_steps and not done
                stop_any = state.stop and not env.enabled  # several ranks: only the flag agreed at a read
                if log_due or stop_any or stop_at or state.batch >= steps_per_epoch \
                        or (env.enabled and state.step % DIST_READ_EVERY == 0) \
                        or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0):
                    stop_any = read_totals(state.stop)
                now = time.perf_counter()
                dt, t0 = now - t0, now
                elapsed += dt
                sums["epoch_time"] += dt
                sums["win_time"] += dt
                bar.update(1)
                if log_due:
                    record = {"kind": "step", "epoch": state.epoch + 1, "step": state.step, "lr": state.lr,
                              "train_loss": sums["win_loss"] / max(1, sums["win_seen"]),
                              "train_acc": 100.0 * sums["win_correct"] / max(1, sums["win_seen"]),
                              "images_per_s": sums["win_seen"] / max(1e-9, sums["win_time"]), "elapsed_s": elapsed}
                    metrics.log(record)
                    bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['train_acc']:.1f}%",
                                    img_s=f"{record['images_per_s']:.0f}", lr=f"{state.lr:.3g}")
                    if plain:
                        log(f"epoch {state.epoch + 1}/{num_epochs} step {state.step}/{total_steps}: loss "
                            f"{record['train_loss']:.3f} acc {record['train_acc']:.1f}% "
                            f"{record['images_per_s']:.0f} img/s lr {state.lr:.3g}")
                    sums.update(win_loss=0.0, win_correct=0.0, win_seen=0, win_time=0.0)
                for callback in on_step:
                    callback(state)
                if not env.enabled:  # one process: a callback's stop takes effect at once
                    stop_any = stop_any or state.stop
                # several ranks stop together, on the flag agreed at the last read
                if stop_any or stop_at:
                    stop_now(f"stopped ({signals.name if signals and signals.requested else 'on request'})")
                    interrupted = True
                    break
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 \
                        and state.batch < steps_per_epoch and not done:
                    checkpoint()
                if done:
                    break
                t0 = time.perf_counter()
            if interrupted:
                if signals is not None and signals.requested:
                    raise KeyboardInterrupt
                break

            # ---- end of epoch: evaluate (every eval_every epochs, and the last), log, save last and best ------
            read_totals(False)
            evaluate_now = (state.epoch + 1) % cfg.eval_every == 0 or state.step >= total_steps
            seen = max(1, sums["epoch_seen"])
            final = {"kind": "epoch", "epoch": state.epoch + 1, "step": state.step, "lr": state.lr,
                     "train_loss": sums["epoch_loss"] / seen, "train_acc": 100.0 * sums["epoch_correct"] / seen,
                     "images_per_s": sums["epoch_seen"] / max(1e-9, sums["epoch_time"]), "elapsed_s": elapsed}
            if train_size is not None:
                final["train_size"] = train_size
            summary = ""
            if evaluate_now:
                val = D.combine_eval(env, evaluate_model(shipped, data.val, num_classes=len(data.classes),
                                                         device=device, autocast_dtype=amp_dtype,
                                                         channels_last=cfg.channels_last))
                final.update(val_loss=val["loss"], val_acc=val["top1"], val_top5=val["top5"])
                summary = (f" | {'val' if cfg.val_split else 'test'} loss {val['loss']:.4f} acc {val['top1']:.2f}% "
                           f"top-5 {val['top5']:.2f}%")
            metrics.log(final)
            on_main = log if env.is_main else _quiet
            with tqdm.external_write_mode():  # the bar (on stderr) steps aside for the line
                on_main(f"epoch {final['epoch']}: train loss {final['train_loss']:.4f} acc {final['train_acc']:.2f}%"
                        f"{summary} | {final['images_per_s']:.0f} img/s")
            state.epoch += 1
            state.batch = 0
            sums.update(epoch_loss=0.0, epoch_correct=0.0, epoch_seen=0, epoch_time=0.0)
            is_best = evaluate_now and (not best or final["val_acc"] > best["val_acc"])
            if is_best:
                best = dict(final)
            checkpoint()
            if data.found_bad is not None and env.is_main:
                _list_found_bad(run_dir / "bad_images.txt", data.found_bad(), log)
            if is_best:
                checkpoint("best.pt")
                D.on_main(env, _save_shipped, shipped, run_dir / "best.safetensors", data, cfg, final)
            for callback in on_epoch:
                callback(state)
            if state.stop:
                log(f"stopped by a callback after epoch {state.epoch}")
                interrupted = True
                break
    except KeyboardInterrupt:
        if consistent and not interrupted and totals.local_bad() is None:  # no collective here: local check
            stop_now("interrupted")
        raise
    finally:
        bar.close()
        metrics.close()
        if signals is not None:
            signals.restore()
    D.shutdown(env)
    if cfg.plots and metrics.records and env.is_main:
        from .plots import plot_metrics

        plot_metrics(metrics.records, run_dir, val_label="validation" if cfg.val_split else "test",
                     lr_curve=lr_curve(schedule, total_steps))
    if not final:
        final = next((r for r in reversed(metrics.records) if r["kind"] == "epoch" and "val_acc" in r), {})
    if state.step >= total_steps and final and env.is_main:  # finished: the last weights too, ready to ship
        _save_shipped(shipped, run_dir / "final.safetensors", data, cfg, final)
    return RunResult(run_dir=run_dir, final=final, best=best, step=state.step, interrupted=interrupted,
                     held_out="validation" if cfg.val_split else "test")


def _refuse_changes(config: TrainConfig, saved: TrainConfig, given: set[str], run_dir: Path) -> None:
    """UserError naming the first setting in ``given`` that a resumed run cannot change but ``config`` does."""
    for key in sorted(given - set(RESUMABLE_OVERRIDES)):
        new, old = getattr(config, key), getattr(saved, key)
        if key == "out" and new is not None and Path(new).resolve() == run_dir.resolve():
            continue
        if new != old:
            raise UserError(f"--resume continues {run_dir} with its own settings; its {key} is {old!r}, not "
                            f"{new!r}: drop --{key.replace('_', '-')}, or start a new run with --out")


def _say_length_change(saved: TrainConfig, cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int,
                       log: Callable[[str], None]) -> None:
    """Log what a resume with another --epochs/--iterations does to the run and its LR schedule."""
    old_total = saved.iterations if saved.iterations is not None else math.ceil(saved.epochs * steps_per_epoch)
    if old_total == total_steps:
        return
    if total_steps <= step:
        log(f"the run already did {step} steps, at least the new length ({total_steps} steps); nothing to train")
        return
    old_lr = LRSchedule.from_config(saved, old_total, steps_per_epoch)(min(step, old_total - 1))
    new_lr = LRSchedule.from_config(cfg, total_steps, steps_per_epoch)(step)
    done = "finished" if step >= old_total else f"at step {step} of {old_total}"
    log(f"length changed from {old_total} to {total_steps} steps (run {done}): the {cfg.schedule} LR schedule "
        f"is recomputed over {total_steps} steps, so the LR at step {step} is {new_lr:.4g} (was {old_lr:.4g})"
        f"{'; final.safetensors will be replaced when it ends' if step >= old_total else ''}")


def _quiet(message: str) -> None:
    """The log of ranks other than 0: nothing."""


class _MemoryMetrics:
    """The metrics of ranks other than 0: kept in memory, never written."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


def _save_shipped(model: nn.Module, path: Path, data: DataBundle, cfg: TrainConfig, record: dict[str, Any]) -> None:
    from ..weights import save_weights

    save_weights(model, path, classes=data.classes, normalization={"mean": data.mean, "std": data.std},
                 extra={"trained": {"recipe": cfg.recipe, "data": cfg.data, "epoch": record["epoch"],
                                    "step": record["step"], "val_acc": record["val_acc"],
                                    "image_size": cfg.image_size if model_family(cfg.model) == "imagenet" else None,
                                    "fit_images": cfg.fit_images}})


def _write_bad_images(path: Path, bad: list[tuple[str, str]]) -> None:
    """The skipped images, one ``path<TAB>reason`` line each, written atomically."""
    from ..weights import atomic_write

    text = "".join(f"{p}\t{reason}\n" for p, reason in bad)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _list_found_bad(path: Path, found: list[tuple[str, str]], log: Callable[[str], None]) -> None:
    """Add the bad images ``found`` while streaming to ``path`` (kept across a resume); log when it grows."""
    listed = [tuple(line.split("\t", 1)) for line in path.read_text().splitlines()] if path.is_file() else []
    known = {p for p, *_ in listed}
    new = [(p, reason) for p, reason in found if p not in known]
    if new:
        _write_bad_images(path, [*listed, *new])  # type: ignore[list-item]
        log(f"skipped {len(listed) + len(new)} bad image(s) so far; listed in {path}")




class _StepTotals:
    """Loss, hits and images of the steps since the last read, summed on the device, and the first step whose
    loss tripped the non-finite guard (``guard_streak`` non-finite steps in a row). ``read`` is the loop's
    only host synchronisation: at log steps, epoch ends and checkpoints, not at every step."""

    def __init__(self, device: torch.device, guard_streak: int) -> None:
        self.guard_streak = guard_streak
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, hits, n (finite steps)
        self.streak = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros((), dtype=torch.float32, device=device)

    def add(self, loss: torch.Tensor, hits: torch.Tensor, n: int, step: int) -> None:
        """One step: its mean ``loss`` and ``hits`` over ``n`` images (device tensors; no sync)."""
        finite = torch.isfinite(loss)
        step_sums = torch.stack([loss.double() * n, hits.double(), finite.double() * n])
        self.sums += torch.where(finite, step_sums, 0.0)
        self.streak = torch.where(finite, 0, self.streak + 1)
        first = (self.streak >= self.guard_streak) & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_loss = torch.where(first, loss.float(), self.bad_loss)

    def read(self, env: D.DistEnv, stop: bool) -> tuple[float, float, int, tuple[int, float] | None, bool]:
        """(loss sum, hits, images) over all ranks since the last read, the tripped (step, loss) or None, and
        whether any rank asked to stop; resets the sums."""
        flags = torch.stack([(self.bad_step >= 0).double(), torch.full((), float(stop), dtype=torch.float64,
                                                                         device=self.sums.device)])
        loss, hits, seen, bad_any, stop_any = D.all_reduce_sum(env, torch.cat([self.sums, flags])).tolist()
        self.sums.zero_()
        bad = self.local_bad() or ((-1, float("nan")) if bad_any else None)
        return loss, hits, int(seen), bad, stop_any > 0

    def local_bad(self) -> tuple[int, float] | None:
        """This rank's tripped (step, loss), or None."""
        step = int(self.bad_step)
        return (step, float(self.bad_loss)) if step >= 0 else None


def _raise_non_finite(value: float, step: int, epoch: int, run_dir: Path, detail: str) -> None:
    last = run_dir / "last.pt"
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
    where = f"at step {step}" if step >= 0 else "on another process"
    raise NonFiniteLossError(f"loss became {value} {where} (epoch {epoch + 1})"
                             f"{' for ' + detail if detail else ''}; training stopped and {kept}; "
                             "try a lower --lr or --precision fp32")


class _StopSignals:
    """SIGINT/SIGTERM -> ``requested`` (the loop checkpoints and stops); a second SIGINT raises at once."""

    def __init__(self) -> None:
        self.requested = False
        self.name = ""
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.name = signal.Signals(signum).name

    def restore(self) -> None:
        for s, handler in self._old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, handler)
