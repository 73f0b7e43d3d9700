"""Streamed image folders (issue 23, points 3 and 4): a run with DataLoader workers, stopped mid-epoch and
resumed, ends bit-identical to an uninterrupted one; a run stops its workers and exits when it is done."""

from __future__ import annotations

import gc
import multiprocessing
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.cli import main
from resnets.train import resolve_config
from resnets.train.checkpoint import load_checkpoint
from resnets.train.trainer import Trainer, TrainState
from test_train import _assert_same_tensors


def noise_folder(root: Path, train: int = 8, val: int = 2, size: tuple[int, int] = (72, 88)) -> Path:
    """``root/{train,val}/c<k>/<i>.png``: two classes of random-noise images, large enough to be streamed
    (over 64 pixels), so that every crop and flip changes the pixels."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for c in ("c0", "c1"):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return noise_folder(tmp_path_factory.mktemp("noise"))


def streamed_args(data: Path, out: Path, workers: int = 2) -> list[str]:
    """16 training images in batches of 4: 4 steps an epoch, 2 epochs."""
    return ["train", "--data", str(data), "--model", "resnet18", "--image-size", "32", "--batch-size", "4",
            "--epochs", "2", "--seed", "3", "--workers", str(workers), "--no-progress", "--device", "cpu",
            "--precision", "fp32", "--log-every", "1", "--out", str(out)]


def test_a_streamed_run_with_workers_resumes_bit_identically(noise: Path, tmp_path: Path) -> None:
    """--workers 2, stopped in the middle of the second epoch (the persistent workers already served one),
    resumed with fresh workers: last.pt holds the weights and optimiser state of the uninterrupted run."""
    assert main(streamed_args(noise, tmp_path / "full")) == 0
    assert multiprocessing.active_children() == []  # the run stopped its workers before returning
    assert main([*streamed_args(noise, tmp_path / "cut"), "--stop-after-steps", "6"]) == 0
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (cut["step"], cut["epoch"], cut["batch"]) == (6, 1, 2)  # mid-epoch
    assert main(["train", "--resume", str(tmp_path / "cut"), "--workers", "2", "--no-progress"]) == 0
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert full["step"] == resumed["step"] == 8
    for key in ("model", "optimizer", "epoch", "batch"):
        _assert_same_tensors(full[key], resumed[key], key)
    losses = [[r["train_loss"] for r in ckpt["metrics"] if r["kind"] == "step"] for ckpt in (full, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 8
    assert not torch.equal(cut["model"]["conv1.weight"], resumed["model"]["conv1.weight"])  # it trained on


def _children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (Linux: /proc; empty elsewhere)."""
    listing = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in listing.read_text().split()] if listing.is_file() else []


def test_a_streamed_run_exits_soon_after_its_result(noise: Path, tmp_path: Path) -> None:
    """A 2-worker streamed run, as a command: its loader workers are gone by the time it prints its result,
    and the process ends within 10 s of that line."""
    command = [sys.executable, "-c", "import sys; from resnets.cli import main; sys.exit(main(sys.argv[1:]))",
               *streamed_args(noise, tmp_path / "run")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("best test accuracy"):
                printed = time.monotonic()
                assert _children(proc.pid) == []  # the training and evaluation workers were stopped
                break
        else:
            pytest.fail("the run printed no result line")
        proc.wait(timeout=60)
        waited = time.monotonic() - printed
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and waited < 10, f"exited {waited:.1f} s after its result line"


def test_a_trainer_is_freed_without_the_garbage_collector(noise: Path, tmp_path: Path) -> None:
    """No Trainer <-> TrainState cycle: dropping the last reference frees the trainer (and its loaders)."""
    cfg = resolve_config({"data": str(noise), "model": "resnet18", "image_size": 32, "resize": 36, "batch_size": 4,
                          "workers": 2, "progress": False, "device": "cpu", "precision": "fp32",
                          "out": str(tmp_path / "t")})
    gc.collect()
    gc.disable()
    try:
        trainer = Trainer(cfg, log=lambda _: None)
        state = TrainState(trainer)
        state.stop = True
        assert trainer.stop_requested
        next(trainer.data.train.iter_from(0))  # workers started
        assert len(multiprocessing.active_children()) == 2
        trainer.metrics.close()
        freed = weakref.ref(trainer)
        del trainer, state
        assert freed() is None
    finally:
        gc.enable()
    for _ in range(50):  # the iterator's __del__ asked the workers to stop
        if not multiprocessing.active_children():
            break
        time.sleep(0.1)
    assert multiprocessing.active_children() == []


def test_a_callback_that_sets_stop_checkpoints_and_stops(tmp_path: Path) -> None:
    """``state.stop`` (now the trainer's ``stop_requested``) still ends the run after that step."""
    from resnets.train import train

    cfg = resolve_config({"model": "resnet20", "data": "sample", "train_images": 128, "test_images": 64,
                          "batch_size": 32, "epochs": 2, "progress": False, "out": str(tmp_path / "run")})

    def stop_at_3(state: TrainState) -> None:
        state.stop = state.step == 3

    result = train(cfg, on_step=[stop_at_3], log=lambda _: None)
    assert result.interrupted and result.step == 3
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3
