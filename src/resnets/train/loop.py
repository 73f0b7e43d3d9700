"""The training loop: ``train(config) -> RunResult``, readable top to bottom.

A :class:`~resnets.train.trainer.Trainer` sets the run up (or restores it), then: for each epoch, for each
batch: step, bookkeeping (read the totals, log), callbacks, stop or checkpoint; at the epoch's end: evaluate,
log, checkpoint last and best. A run is a directory: config.json, metrics.jsonl/.csv, last.pt, best.pt,
best.safetensors, final.safetensors (once finished), and PNG plots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .config import TrainConfig
from .trainer import NonFiniteLossError, RunResult, Trainer, TrainState

Callback = Callable[[TrainState], None]

__all__ = ["Callback", "NonFiniteLossError", "RunResult", "TrainState", "train"]


def train(
    config: TrainConfig,
    *,
    resume: str | Path | None = None,
    on_step: Sequence[Callback] = (),
    on_epoch: Sequence[Callback] = (),
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train ``config`` (see ``resolve_config``); with ``resume``, continue the run in that directory exactly:
    its own settings, except those that may change on resume (``config.RESUMABLE``), taken from ``config``.

    ``on_step`` callbacks run after every optimiser step, ``on_epoch`` after every epoch; either may set
    ``state.stop`` to checkpoint and stop, or raise ``KeyboardInterrupt`` (the run checkpoints, then re-raises).
    Ctrl-C or SIGTERM: the step finishes, the run checkpoints and ``KeyboardInterrupt`` is raised.
    """
    trainer = Trainer(config, resume=resume, log=log)
    state = TrainState(trainer)
    stop_reason: str | None = None
    try:
        with trainer.running():
            while stop_reason is None and not trainer.finished:
                for x, y in trainer.epoch_batches():
                    trainer.step(x, y)
                    agreed = trainer.bookkeep()  # reads the totals when due: raises on a non-finite loss
                    for callback in on_step:
                        callback(state)
                    stop_reason = trainer.stop_reason(agreed)
                    if stop_reason is not None:
                        trainer.stop(stop_reason)
                        break
                    if trainer.checkpoint_due():
                        trainer.checkpoint()
                    if trainer.finished:
                        break
                    trainer.clock.restart()  # a checkpoint's time is not training time
                if stop_reason is not None:
                    break
                trainer.end_epoch()  # evaluate when due, log, checkpoint last (and best)
                for callback in on_epoch:
                    callback(state)
                if state.stop:
                    stop_reason = "stopped by a callback"
                    trainer.log(f"stopped by a callback after epoch {state.epoch}")
            if trainer.signalled:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if stop_reason is None:  # from a callback or a second Ctrl-C: checkpoint if the last step is whole
            trainer.stop_interrupted()
        raise
    return trainer.finish(stop_reason)
