"""The Trainer: a run's parts (see :mod:`.parts`) put together, and the steps the loop in :mod:`.loop` calls.

``Trainer(config, resume=RUN)`` sets a run up: its folder, the processes, the data (``data.open_train``),
the network, the optimisation, the meters and the clock, restored from ``RUN/last.pt`` when resuming. The
loop then calls ``epoch_batches``, ``step``, ``bookkeep``, ``stop_reason``, ``stop``, ``checkpoint`` and
``end_epoch``, and ``finish`` at the end. One checkpoint gathers every part's state; one restore gives it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.augment import TTAModel
from ..data.batches import DeviceBatches, progressive_image_size
from ..data.mixing import mix_batch
from ..data.sources import TrainData, TrainDataSpec, open_train
from ..errors import UserError
from ..evaluate import evaluate_model
from ..infer.loading import load_for_inference
from ..models.registry import model_family
from ..outputs import atomic_write, check_out_dir
from ..runtime import autocast_context, choose_precision, resolve_device, seed_everything, use_deterministic
from . import distributed as D
from .checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from .config import RESUMABLE, TrainConfig, check_file_settings
from .finetune import freeze_summary, frozen_stages
from .metrics import MetricsLogger
from .optim import LRSchedule
from .parts import DataPosition, Meters, Network, Optimization, RunClock, Window, total_steps_of
from .plots import lr_curve
from .probe import probe_data
from .stopping import StopControl

MAX_SKIPPED_STEPS = 5  # fp16: stop after this many consecutive non-finite steps


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


class TrainState:
    """What callbacks see after every optimiser step: a live view of the trainer. Set ``stop`` to checkpoint
    and stop after this step (or, from an ``on_epoch`` callback, after this epoch). It refers to the trainer,
    never the other way round, so a finished run is freed (and its loaders with it) without a garbage cycle."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self.extra: dict[str, Any] = {}

    @property
    def stop(self) -> bool:
        return self._trainer.stop_requested

    @stop.setter
    def stop(self, value: bool) -> None:
        self._trainer.stop_requested = bool(value)

    cfg = property(lambda self: self._trainer.cfg)
    run_dir = property(lambda self: self._trainer.run_dir)
    model = property(lambda self: self._trainer.network.model)
    optimizer = property(lambda self: self._trainer.optim.optimizer)
    step = property(lambda self: self._trainer.clock.step, doc="optimiser steps done")
    epoch = property(lambda self: self._trainer.position.epoch, doc="0-based epoch in progress")
    batch = property(lambda self: self._trainer.position.batch, doc="batches of this epoch done")
    steps_per_epoch = property(lambda self: self._trainer.steps_per_epoch)
    total_steps = property(lambda self: self._trainer.total_steps)
    lr = property(lambda self: self._trainer.optim.lr)
    loss = property(lambda self: self._trainer.meters.loss, doc="mean training loss up to the last read")


class Trainer:
    """One training run: set up (or restored) in ``__init__``; driven by :func:`resnets.train.loop.train`."""

    def __init__(self, config: TrainConfig, *, resume: str | Path | None = None,
                 log: Callable[[str], None] = print) -> None:
        ckpt = None
        if resume is None and config.out and D.restart_count() > 0 and (Path(config.out) / "last.pt").is_file():
            resume = config.out  # torchrun restarted the workers (--max-restarts): go on from the last checkpoint
        if resume is not None:  # the run's own settings; those that may change on resume from ``config``
            self.run_dir = Path(resume)
            ckpt = load_checkpoint(self.run_dir / "last.pt")
            # what the run's file says and ``config`` does not repeat: no command, URL or folder elsewhere
            check_file_settings({k: v for k, v in ckpt["config"].items() if getattr(config, k, None) != v},
                                self.run_dir / "last.pt", given={"out"})
            saved = TrainConfig(**ckpt["config"])
            self.cfg = TrainConfig(**{**ckpt["config"], **{k: getattr(config, k) for k in RESUMABLE}})
        else:
            self.cfg = config
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.run_dir = Path(config.out) if config.out else Path("runs") / f"{config.model}-{config.recipe}-{stamp}"
            if D.restart_count() > 0 and not config.out:
                raise UserError("torchrun restarted this run but it has no --out to resume from; give --out")
            if (self.run_dir / "last.pt").exists():
                raise UserError(f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir} "
                                "or pick another --out")
        check_out_dir(self.run_dir, flag="--resume" if resume is not None else "--out")  # before any work
        cfg = self.cfg

        # the processes and the device: one process is rank 0 of 1, nothing joined
        self.env = env = D.init_distributed(resolve_device(cfg.device))
        self.log = log if env.is_main else _quiet
        if env.enabled and not cfg.out and ckpt is None:
            self.run_dir = Path(D.broadcast_object(env, str(self.run_dir)))  # rank 0's timestamped name everywhere
        choose_precision(cfg.precision, env.device)  # fp16 on CPU fails here, before any work
        seed_everything(cfg.seed, use_deterministic(cfg.deterministic, env.device))

        # the parts; a fresh run from trained weights (``init``) takes their normalisation, a resumed one its own
        init = load_for_inference(cfg.init, cfg.model, variant=cfg.variant) if cfg.init and ckpt is None else None
        norm = (init.mean, init.std) if init is not None else \
            (ckpt["normalization"]["mean"], ckpt["normalization"]["std"]) if cfg.init and ckpt is not None else None
        self.data: TrainData = open_train(TrainDataSpec.of(cfg), env.device, rank=env.rank,
                                          world_size=env.world_size, is_main=env.is_main, normalization=norm)
        self.steps_per_epoch = len(self.data.train)
        if self.steps_per_epoch == 0:
            raise UserError(f"the training set ({self.data.description}) is smaller than one batch "
                            f"({cfg.batch_size}); give a smaller --batch-size")
        if cfg.resize_from is not None and not self.data.train.resizable:
            raise UserError("resize_from (progressive resizing) works with images held in memory, streamed folders "
                            "and large-image shards, not with small-image shards; drop it")
        self.total_steps = total_steps_of(cfg, self.steps_per_epoch)
        self.num_epochs = -(-self.total_steps // self.steps_per_epoch)
        whiten = _whitening_images(self.data.train) if cfg.whiten and ckpt is None and init is None else None
        self.network = Network(cfg, self.data.classes, env, self.data.train.full_size, init=init, log=self.log,
                               whiten_images=whiten)
        del whiten
        feed = getattr(self.data.train, "feed", None)  # streamed: uint8 batches normalised on the device
        if feed is not None and env.device.type == "cuda" and self.network.amp_dtype is not None:
            feed.dtype = self.network.amp_dtype  # straight into the step's format (autocast casts to it anyway)
        self.family = model_family(cfg.model)
        self.optim = Optimization(cfg, self.network.model, self.total_steps, self.steps_per_epoch)
        if (note := self.optim.schedule.warmup_note()) is not None:
            self.log(note)
        self.position = DataPosition(self.data.generator, cfg.seed)
        guard = MAX_SKIPPED_STEPS if self.network.scaler is not None else 1
        self.meters = Meters(env.device, guard_streak=guard)
        self.clock = RunClock()
        self.parts = (self.network, self.optim, self.position, self.meters, self.clock)
        if ckpt is not None:
            _say_length_change(saved, cfg, ckpt["step"], self.total_steps, self.steps_per_epoch, self.log)
            for part in self.parts:
                part.load_state_dict(ckpt)
        if cfg.linear_probe:  # the frozen backbone's features, once (after a restore: of the same weights)
            self.data = probe_data(self.data, self.network.model, cfg.batch_size, cfg.seed)

        # the run folder: only now that the run can start
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.data.bad_images:
                _write_bad_images(self.run_dir / "bad_images.txt", self.data.bad_images)
                self.log(f"skipped {len(self.data.bad_images)} bad image(s); listed in "
                         f"{self.run_dir / 'bad_images.txt'}")
            self.metrics: MetricsLogger | _MemoryMetrics = MetricsLogger(
                self.run_dir, tensorboard=cfg.tensorboard, resume_step=self.clock.step if ckpt else None)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        else:
            self.metrics = _MemoryMetrics()
        # every stop request (signals, a callback's ``state.stop``, stop_after_steps) and the ranks' agreement
        self.stopper = StopControl(stop_after_steps=cfg.stop_after_steps, total_steps=self.total_steps,
                                   distributed=env.enabled)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.consistent = True  # False while a step is half done (no checkpoint then)
        self.train_size: int | None = None  # progressive resizing: this epoch's image size
        self.final: dict[str, Any] = {}  # the last epoch record
        self.bar: Any = None  # the progress bar, while ``running``
        self.plain = False  # while ``running`` off a terminal: a plain line per step record
        self.log(f"{'resuming' if ckpt else 'training'} {cfg.model} ({cfg.recipe}) on {self.data.description}; "
                 f"{self.total_steps} steps of {cfg.batch_size} ({self.num_epochs} epochs) on {env.device}"
                 f"{f' x {env.world_size} processes ({env.backend})' if env.enabled else ''}, "
                 f"{self.network.precision}{' (auto)' if cfg.precision == 'auto' else ''}; run dir {self.run_dir}")

    @property
    def finished(self) -> bool:
        return self.clock.step >= self.total_steps

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Ctrl-C/SIGTERM handled (finish the step, checkpoint, stop; a second Ctrl-C aborts at once) and the
        progress bar shown while the run is driven; both put away, the loaders' workers stopped and the metrics
        files closed, however it ends."""
        from tqdm import tqdm

        from ..progress import progress_mode

        self.stopper.listen()
        mode = progress_mode(self.cfg.progress and self.env.is_main)
        self.plain = mode == "plain"  # not a terminal: a plain line per log step
        self.bar = tqdm(total=self.total_steps, initial=self.clock.step, unit="step", disable=mode != "bar",
                        dynamic_ncols=True, leave=True)
        try:
            yield
        finally:
            self.bar.close()
            self.data.close()  # now, not at interpreter exit (persistent, pinned workers can hold it for seconds)
            self.metrics.close()
            self.stopper.restore()

    # ---- one epoch, one step ----------------------------------------------------------------------------------
    def epoch_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Start the epoch in progress (its order, image size, train mode) and yield its batches not yet done."""
        cfg, train, epoch = self.cfg, self.data.train, self.position.epoch
        train.set_epoch(epoch)
        self.train_size = None
        if cfg.resize_from is not None:  # progressive resizing: a pure function of the epoch, so resumable
            self.train_size = progressive_image_size(epoch, self.num_epochs, train.full_size, cfg.resize_from,
                                                     cfg.resize_until)
            train.set_image_size(self.train_size)
        frozen = frozen_stages(cfg.freeze, cfg.freeze_epochs, cfg.linear_probe, epoch, self.family)
        if self.network.frozen and frozen < self.network.frozen:
            self.log(f"epoch {epoch + 1}: unfreezing {', '.join(sorted(self.network.frozen - frozen))}"
                     f"{' (' + ', '.join(sorted(frozen)) + ' stay frozen)' if frozen else ''}")
        elif frozen and frozen != self.network.frozen:
            self.log(f"epoch {epoch + 1}: {freeze_summary(self.network.model, frozen)}")
        self.network.set_frozen(frozen)
        self.network.train_mode()
        self.bar.set_description(f"epoch {epoch + 1}/{self.num_epochs}")
        self.clock.restart()
        if self.position.batch < self.steps_per_epoch:
            yield from train.iter_from(self.position.batch)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimiser step on the batch (x, y): LR, mixing, forward and backward by micro-batches, update,
        EMA; the loss and hits stay on the device (no host sync)."""
        cfg, net, device = self.cfg, self.network, self.network.device
        self.consistent = False
        optimizer = self.optim.optimizer
        self.optim.set_step(self.clock.step)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        y_b, lam = y, 1.0
        if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
            x, y, y_b, lam = mix_batch(x, y, cfg.mixup_alpha, cfg.cutmix_alpha, self.position.aug_gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for xs, ys, ybs in zip(x.chunk(cfg.accum_steps), y.chunk(cfg.accum_steps), y_b.chunk(cfg.accum_steps),
                               strict=True):
            with autocast_context(device, net.amp_dtype):
                logits = net.forward(xs)
                loss = self.criterion(logits, ys)
                if lam < 1.0:
                    loss = lam * loss + (1 - lam) * self.criterion(logits, ybs)
            part = loss * (len(ys) / len(y))
            (net.scaler.scale(part) if net.scaler else part).backward()
            loss_sum += part.detach()
            correct += (logits.detach().argmax(1) == ys).sum()
        if net.scaler is not None:
            net.scaler.step(optimizer)  # skips the update when the gradients overflowed
            net.scaler.update()
        else:
            optimizer.step()  # a non-finite loss is caught at the next read, before any checkpoint
        optimizer.zero_grad(set_to_none=True)
        net.after_update(self.clock.step + 1)
        self.clock.step += 1
        self.position.batch += 1
        self.meters.totals.add(loss_sum, correct, len(y), self.clock.step)
        self.consistent = True

    def bookkeep(self) -> bool:
        """After a step: read the device totals when due (the loop's only host sync; raises on a non-finite
        loss), time the step, write the step record when due. Whether a stop was agreed at this read."""
        cfg, step = self.cfg, self.clock.step
        log_due = step % cfg.log_every == 0 or self.finished
        agreed = False  # several ranks: only a request agreed at a read counts
        if self.stopper.must_read(step) or log_due or self.position.batch >= self.steps_per_epoch \
                or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            agreed = self.read_totals(self.stopper.requested)
        self.meters.tick(self.clock.lap())
        self.bar.update(1)
        if log_due:
            self._log_step()
        return agreed

    def stop_reason(self, agreed: bool) -> str | None:
        """Why the run stops after this step (``agreed`` at the last read, a callback's ``state.stop`` with one
        process, ``stop_after_steps``), or None to go on: the stop part's answer."""
        return self.stopper.reason(self.clock.step, agreed)

    @property
    def stop_requested(self) -> bool:
        """A callback's ``state.stop`` or a signal asked to checkpoint and stop."""
        return self.stopper.requested

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        self.stopper.requested = bool(value)

    def stop(self, reason: str) -> None:
        """Checkpoint and say how to continue."""
        if not self.env.enabled:  # a callback's stop may come between reads (several ranks stop only at reads)
            self.read_totals(False)
        self.checkpoint()
        self.log(f"{reason} at step {self.clock.step} (epoch {self.position.epoch + 1}); checkpoint "
                 f"{self.run_dir / 'last.pt'}; continue with: resnets train --resume {self.run_dir}")

    @property
    def signalled(self) -> bool:
        """Ctrl-C or SIGTERM asked the run to stop."""
        return self.stopper.signalled

    def stop_interrupted(self) -> None:
        """A KeyboardInterrupt came from outside the loop's stop (a callback, a second Ctrl-C): checkpoint if the
        last step is whole and its loss finite (no collective here: a local check)."""
        if self.consistent and self.meters.totals.local_bad() is None:
            self.stop("interrupted")

    def checkpoint_due(self) -> bool:
        """A mid-epoch checkpoint (``checkpoint_every``) is due after this step."""
        every = self.cfg.checkpoint_every
        return bool(every) and self.clock.step % every == 0 and self.position.batch < self.steps_per_epoch \
            and not self.finished

    # ---- the end of an epoch ------------------------------------------------------------------------------
    def end_epoch(self) -> dict[str, Any]:
        """Read, evaluate (every ``eval_every`` epochs, and the last), log the epoch record, checkpoint last.pt
        and, for a new best, best.pt and best.safetensors. Returns the record."""
        cfg, env, meters = self.cfg, self.env, self.meters
        self.read_totals(False)
        evaluate_now = (self.position.epoch + 1) % cfg.eval_every == 0 or self.finished
        record = {"kind": "epoch", "epoch": self.position.epoch + 1, "step": self.clock.step, "lr": self.optim.lr,
                  **meters.epoch.record(), "elapsed_s": self.clock.elapsed}
        if self.train_size is not None:
            record["train_size"] = self.train_size
        summary = ""
        if evaluate_now:
            net = self.network
            evaluated = TTAModel(net.evaluated, cfg.tta) if cfg.tta else net.evaluated
            val = D.combine_eval(env, evaluate_model(evaluated, self.data.val, num_classes=len(self.data.classes),
                                                     device=net.device, autocast_dtype=net.amp_dtype,
                                                     channels_last=cfg.channels_last and not net.head_only))
            record.update(val_loss=val["loss"], val_acc=val["top1"], val_top5=val["top5"])
            summary = (f" | {'val' if cfg.val_split else 'test'} loss {val['loss']:.4f} acc {val['top1']:.2f}% "
                       f"top-5 {val['top5']:.2f}%")
        self.metrics.log(record)
        from tqdm import tqdm

        with tqdm.external_write_mode():  # the bar (on stderr) steps aside for the line
            self.log(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2f}%"
                     f"{summary} | {record['images_per_s']:.0f} img/s")
        self.position.epoch += 1
        self.position.batch = 0
        meters.epoch = Window()
        is_best = evaluate_now and (not meters.best or record["val_acc"] > meters.best["val_acc"])
        if is_best:
            meters.best = dict(record)
        self.checkpoint()
        if self.data.found_bad is not None and env.is_main:
            _list_found_bad(self.run_dir / "bad_images.txt", self.data.found_bad(), self.log)
        if is_best:  # the state just written to last.pt: linked (or copied), not serialised again
            D.on_main(env, _same_file, self.run_dir / "last.pt", self.run_dir / "best.pt")
            D.on_main(env, self._save_shipped, self.run_dir / "best.safetensors", record)
        self.final = record
        return record

    def finish(self, stop_reason: str | None) -> RunResult:
        """Leave the process group, draw the plots, ship final.safetensors if the run is complete."""
        D.shutdown(self.env)
        records = self.metrics.records
        if self.cfg.plots and records and self.env.is_main:
            from .plots import plot_metrics

            plot_metrics(records, self.run_dir, val_label=self.data.held_out,
                         lr_curve=lr_curve(self.optim.schedule, self.total_steps))
        final = self.final or next((r for r in reversed(records) if r["kind"] == "epoch" and "val_acc" in r), {})
        if self.finished and final and self.env.is_main:  # the last weights too, ready to ship
            self._save_shipped(self.run_dir / "final.safetensors", final)
        return RunResult(run_dir=self.run_dir, final=final, best=self.meters.best, step=self.clock.step,
                         interrupted=stop_reason is not None, held_out=self.data.held_out)

    # ---- state in and out ---------------------------------------------------------------------------------
    def checkpoint(self, name: str = "last.pt") -> None:
        """Every part's state, with the config and what the weights need, in ``run_dir/name`` (rank 0 writes:
        every rank holds the same weights)."""
        if not self.env.is_main:
            return
        state: dict[str, Any] = {"version": CHECKPOINT_VERSION, "config": self.cfg.to_dict(),
                                 "metrics": self.metrics.records, "classes": self.data.classes,
                                 "normalization": {"mean": self.data.mean, "std": self.data.std},
                                 "world_size": self.env.world_size}  # epoch/batch count global steps
        for part in self.parts:
            state.update(part.state_dict())
        save_checkpoint(state, self.run_dir / name)

    def read_totals(self, stop: bool) -> bool:
        """Fold the device totals into the meters (all ranks' together); raise on a non-finite loss; whether
        any rank asked to stop. Every rank calls it at the same steps."""
        loss, hits, seen, bad, stop_any = self.meters.totals.read(self.env, stop)
        if bad is not None:
            _raise_non_finite(bad[1], bad[0], self.position.epoch, self.run_dir,
                              f"{MAX_SKIPPED_STEPS} steps in a row" if self.network.scaler is not None else "")
        self.meters.fold(loss, hits, seen)
        return stop_any

    def _log_step(self) -> None:
        """The step record of the steps since the last one: metrics files, the bar, a plain line off a terminal."""
        record = {"kind": "step", "epoch": self.position.epoch + 1, "step": self.clock.step, "lr": self.optim.lr,
                  **self.meters.window.record(), "elapsed_s": self.clock.elapsed}
        self.metrics.log(record)
        self.bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['train_acc']:.1f}%",
                             img_s=f"{record['images_per_s']:.0f}", lr=f"{self.optim.lr:.3g}")
        if self.plain:
            self.log(f"epoch {self.position.epoch + 1}/{self.num_epochs} step {self.clock.step}/{self.total_steps}: "
                     f"loss {record['train_loss']:.3f} acc {record['train_acc']:.1f}% "
                     f"{record['images_per_s']:.0f} img/s lr {self.optim.lr:.3g}")
        self.meters.window = Window()

    def _save_shipped(self, path: Path, record: dict[str, Any]) -> None:
        """The weights with what inference needs; ``input_size``/``resize``: the side the network was fed and
        the shorter side before that centre crop, as the held-out set was (what predict, serve... feed)."""
        from ..weights import save_weights

        cfg, data = self.cfg, self.data
        side = data.train.full_size
        save_weights(self.network.shipped, path, classes=data.classes,
                     normalization={"mean": data.mean, "std": data.std},
                     extra={"trained": {"recipe": cfg.recipe, "data": cfg.data, "epoch": record["epoch"],
                                        "step": record["step"], "val_acc": record["val_acc"],
                                        "input_size": side, "resize": data.resize or side,
                                        "image_size": cfg.image_size if model_family(cfg.model) == "imagenet"
                                        else None, "fit_images": cfg.fit_images}})


def _say_length_change(saved: TrainConfig, cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int,
                       log: Callable[[str], None]) -> None:
    """Log what a resume with another --epochs/--iterations does to the run and its LR schedule."""
    old_total = total_steps_of(saved, steps_per_epoch)
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


WHITEN_IMAGES = 2000  # the training images whose 3x3 patches set the whitening layer


def _whitening_images(train: Any) -> torch.Tensor:
    """The first ``WHITEN_IMAGES`` training images, normalised and unaugmented (those of every rank: the whole
    set is held by each), for the whitening layer; UserError for streamed data."""
    batches = getattr(train, "inner", train)
    if not isinstance(batches, DeviceBatches):
        raise UserError("--whiten sets its layer from training images held in memory (CIFAR, small-image "
                        "folders), not from streamed data; drop --whiten")
    return next(iter(batches.unaugmented(WHITEN_IMAGES)))[0]


def _same_file(src: Path, dst: Path) -> None:
    """``dst`` atomically replaced by a hard link to ``src`` (a copy where links fail); a later atomic write of
    ``src`` renames a new file into place, so ``dst`` keeps this content."""
    def link(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    atomic_write(dst, link)


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


def _write_bad_images(path: Path, bad: list[tuple[str, str]]) -> None:
    """The skipped images, one ``path<TAB>reason`` line each, written atomically."""
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


def _raise_non_finite(value: float, step: int, epoch: int, run_dir: Path, detail: str) -> None:
    last = run_dir / "last.pt"
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
    where = f"at step {step}" if step >= 0 else "on another process"
    raise NonFiniteLossError(f"loss became {value} {where} (epoch {epoch + 1})"
                             f"{' for ' + detail if detail else ''}; training stopped and {kept}; "
                             "try a lower --lr or --precision fp32")
