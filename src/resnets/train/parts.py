"""The parts a training run is made of, each owning its state (``state_dict``/``load_state_dict``).

* :class:`Network` - the model, its EMA copy, the forward used for training (DDP, compile), the number
  format and the fp16 gradient scaler. State: ``model``, ``ema``, ``scaler``.
* :class:`Optimization` - the optimiser and the LR schedule (a pure function of the step). State: ``optimizer``.
* :class:`DataPosition` - where the run is in its data (epoch, batch) and every random-number state that
  decides what comes next (global, data order, mixup). State: ``epoch``, ``batch``, ``rng``, ``aug_rng``.
* :class:`Meters` - loss, accuracy and speed of the steps since the epoch began and since the last step
  record, and the best epoch so far. State: ``sums``, ``best``.
* :class:`RunClock` - optimiser steps done and training time spent. State: ``step``, ``elapsed_s``.

A checkpoint is the union of the parts' states (their keys are disjoint) plus the run's config and metadata.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..infer.loading import LoadedModel
from ..models import ResNetBase, create_model
from ..runtime import autocast_dtype, choose_precision
from . import distributed as D
from .checkpoint import rng_state, set_rng_state
from .config import TrainConfig
from .ema import ModelEMA
from .finetune import lr_factors, stage_modules
from .optim import LRSchedule, build_optimizer, set_lr


class Network:
    """The model being trained, the weights it ships (EMA if on) and how it runs (device, format, forward,
    frozen stages)."""

    def __init__(self, cfg: TrainConfig, classes: list[str], env: D.DistEnv, image_side: int,
                 init: LoadedModel | None = None, log: Callable[[str], None] = print,
                 whiten_images: torch.Tensor | None = None) -> None:
        self.device, self.env, self.compile = env.device, env, cfg.compile
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if init is None:
            options: dict[str, Any] = {"shortcut": cfg.shortcut} if cfg.shortcut else {}  # in the weights' spec
            if cfg.whiten:
                options["whiten"] = True
            model = create_model(cfg.model, num_classes=len(classes), variant=cfg.variant,
                                 zero_init_residual=cfg.zero_init_residual, **options)
            if whiten_images is not None:  # before the EMA copy is taken (a resumed run loads it instead)
                model.init_whitening(whiten_images.to(torch.float64))  # type: ignore[operator]
        else:
            model = _fit_head(init, classes, log)
        self.model = model.to(self.device, memory_format=self.memory_format)
        if cfg.sync_bn and env.enabled:  # BN statistics of the global batch, not of each rank's slice
            self.model = D.convert_sync_batchnorm(self.model, self.device)
        # precision "auto" on CPU: timed on this model (about a second, cached); rank 0 decides for all ranks
        chosen = choose_precision(cfg.precision, self.device, self.model, image_size=image_side, training=True,
                                  model_key=cfg.model) if env.is_main else None
        self.precision: str = D.broadcast_object(env, chosen)
        self.amp_dtype = autocast_dtype(self.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None  # CUDA only
        self.head_only = cfg.linear_probe  # the batches are the backbone's features: train and evaluate fc
        self.frozen: frozenset[str] = frozenset()
        self.forward = self._forward()
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema else None
        self.ema_every = cfg.ema_every

    def _forward(self) -> nn.Module:
        """What a training step calls: the model (or its head, probing), under DDP with several processes
        (wrapping the parameters that train now), compiled if asked."""
        net = self.model.fc if self.head_only else self.model
        forward = D.wrap_ddp(net, self.env)  # the model itself for one process
        return torch.compile(forward) if self.compile else forward  # type: ignore[return-value]

    @property
    def shipped(self) -> nn.Module:
        """The weights a run ships: the EMA copy if kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def evaluated(self) -> nn.Module:
        """What evaluation runs on its batches: the shipped model, or its head when probing (features in)."""
        return self.shipped.fc if self.head_only else self.shipped

    def set_frozen(self, stages: frozenset[str]) -> None:
        """Keep the weights of ``stages`` (``conv1``, ``conv2_x``...) fixed and train every other one."""
        if stages == self.frozen:
            return
        for name, modules in stage_modules(self.model).items():
            for module in modules:
                module.requires_grad_(name not in stages)
        self.frozen = stages
        if self.env.enabled and not self.head_only:
            self.forward = self._forward()  # DDP reduces the gradients of the parameters that train now

    def train_mode(self) -> None:
        """Training mode, but the batch norms of frozen stages in eval mode (their statistics kept)."""
        self.model.train()
        modules = stage_modules(self.model)
        for name in self.frozen:
            for module in modules[name]:
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()

    def after_update(self, step: int) -> None:
        """Follow optimiser step ``step`` (1-based): the EMA average, every ``ema_every`` steps."""
        if self.ema is not None and step % self.ema_every == 0:
            self.ema.update(self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


def _fit_head(init: LoadedModel, classes: list[str], log: Callable[[str], None]) -> ResNetBase:
    """``init``'s model for ``classes``: its head kept when it classifies the same classes by name, else
    replaced by a fresh one (and said); weights that name no classes (a plain state dict) always get a new head,
    so a head trained on another task is never taken for this one's."""
    model, known = init.model, init.model.card.classes
    if model.num_classes == len(classes) and known is not None and list(known) == list(classes):
        log(f"starting from {init.source} ({init.name}); its {model.num_classes}-class head is kept")
        return model
    old = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "") if known else "unnamed"
    log(f"starting from {init.source} ({init.name}); its {model.num_classes}-class head ({old}) is replaced by a "
        f"new {len(classes)}-class one ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
    model.reset_classifier(len(classes))
    return model


class Optimization:
    """The optimiser and the LR schedule over the run's ``total_steps``."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, total_steps: int, steps_per_epoch: int) -> None:
        factors = lr_factors(model, cfg.backbone_lr_mult, cfg.lr_stage_decay)  # type: ignore[arg-type]
        self.optimizer = build_optimizer(model, cfg, factors)
        self.schedule = LRSchedule.from_config(cfg, total_steps, steps_per_epoch)
        self.lr = 0.0

    def set_step(self, step: int) -> float:
        """Set the LR for the update after ``step`` updates; returns it."""
        self.lr = self.schedule(step)
        set_lr(self.optimizer, self.lr)
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class DataPosition:
    """Where the run stands in its data (0-based epoch in progress, batches of it done) and the random
    states that decide what comes next: the global ones, the data order's (``generator``) and the mixup/cutmix
    generator."""

    def __init__(self, generator: torch.Generator | None, seed: int) -> None:
        self.generator = generator
        self.epoch = 0
        self.batch = 0
        self.aug_gen = torch.Generator().manual_seed(seed + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "rng": rng_state(self.generator),
                "aug_rng": self.aug_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch = state["epoch"], state["batch"]
        set_rng_state(state["rng"], self.generator)
        self.aug_gen.set_state(state["aug_rng"])


@dataclass
class Window:
    """Summed loss, hits, images and seconds over a stretch of steps."""

    loss: float = 0.0
    correct: float = 0.0
    seen: int = 0
    time: float = 0.0

    def record(self) -> dict[str, float]:
        """Mean loss, accuracy (%) and images/s of the stretch."""
        seen = max(1, self.seen)
        return {"train_loss": self.loss / seen, "train_acc": 100.0 * self.correct / seen,
                "images_per_s": self.seen / max(1e-9, self.time)}


class StepTotals:
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


class Meters:
    """The running measures of a run: device totals since the last read, folded at each read into the epoch's
    and the step record's windows; the last mean training loss; the best epoch record."""

    def __init__(self, device: torch.device, guard_streak: int) -> None:
        self.totals = StepTotals(device, guard_streak)
        self.epoch = Window()
        self.window = Window()
        self.loss = float("nan")  # mean training loss of the steps up to the last read
        self.best: dict[str, Any] = {}

    def fold(self, loss: float, hits: float, seen: int) -> None:
        """Add a read's sums to both windows."""
        for w in (self.epoch, self.window):
            w.loss += loss
            w.correct += hits
            w.seen += seen
        if seen:
            self.loss = loss / seen

    def tick(self, seconds: float) -> None:
        """Add a step's wall time to both windows."""
        self.epoch.time += seconds
        self.window.time += seconds

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {"epoch": asdict(self.epoch), "window": asdict(self.window)}, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.window = Window(**state["sums"]["epoch"]), Window(**state["sums"]["window"])
        self.best = state["best"]


class RunClock:
    """Optimiser steps done and seconds spent in training steps (evaluation and checkpoints not counted), across resumes."""

    def __init__(self) -> None:
        self.step = 0
        self.elapsed = 0.0
        self._t0 = time.perf_counter()

    def restart(self) -> None:
        """Start timing from now (the next step's time begins here)."""
        self._t0 = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the last lap or restart, added to ``elapsed``."""
        now = time.perf_counter()
        dt, self._t0 = now - self._t0, now
        self.elapsed += dt
        return dt

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "elapsed_s": self.elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.elapsed = state["step"], state["elapsed_s"]


def total_steps_of(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The run's length in optimiser steps: ``iterations``, or ``epochs`` of ``steps_per_epoch``."""
    return cfg.iterations if cfg.iterations is not None else math.ceil(cfg.epochs * steps_per_epoch)
