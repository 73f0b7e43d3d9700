"""The Trainer's parts: each owns its state, one checkpoint gathers them, one restore gives them back exactly;
checkpoints of the previous format resume; mixup and cutmix runs resume bit-identically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnets.train import resolve_config, train
from resnets.train.checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from resnets.train.trainer import Trainer
from test_train import _assert_same_tensors

TINY = dict(model="resnet20", data="sample", train_images=256, test_images=128, batch_size=64, epochs=2,
            progress=False, log_every=2, seed=3)


def tiny(out: Path, **changes: object):
    return resolve_config({**TINY, "out": str(out), **changes})




def _stop_at(step: int):
    def interrupt(state) -> None:
        if state.step == step:
            raise KeyboardInterrupt
    return [interrupt]


def test_parts_own_disjoint_state_and_the_checkpoint_is_their_union(tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path / "t"), log=lambda _: None)
    keys = [set(part.state_dict()) for part in trainer.parts]
    assert sum(map(len, keys)) == len(set().union(*keys))  # no key owned twice
    assert set().union(*keys) == {"model", "ema", "scaler", "optimizer", "epoch", "batch", "rng", "aug_rng",
                                  "sums", "best", "step", "elapsed_s"}
    trainer.checkpoint()
    saved = load_checkpoint(tmp_path / "t" / "last.pt")
    assert saved["version"] == CHECKPOINT_VERSION == 2 and set(saved) >= set().union(*keys)
    trainer.metrics.close()


def test_a_restore_gives_every_part_back(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "a", ema=True, mixup_alpha=0.2), on_step=_stop_at(3), log=lambda _: None)
    saved = load_checkpoint(tmp_path / "a" / "last.pt")
    restored = Trainer(tiny(tmp_path / "ignored", ema=True, mixup_alpha=0.2), resume=tmp_path / "a",
                       log=lambda _: None)
    for part in restored.parts:
        state = part.state_dict()
        _assert_same_tensors({k: saved[k] for k in state if k != "rng"}, {k: v for k, v in state.items() if k != "rng"},
              type(part).__name__)
    assert (restored.clock.step, restored.position.epoch, restored.position.batch) == (3, 0, 3)
    restored.metrics.close()


@pytest.mark.parametrize("mixing", [dict(mixup_alpha=0.4), dict(cutmix_alpha=1.0),
                                    dict(mixup_alpha=0.2, cutmix_alpha=1.0)])
def test_mixup_and_cutmix_runs_resume_bit_identically(tmp_path: Path, mixing: dict) -> None:
    full = train(tiny(tmp_path / "full", **mixing), log=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "cut", **mixing), on_step=_stop_at(5), log=lambda _: None)
    train(tiny(tmp_path / "ignored", **mixing), resume=tmp_path / "cut", log=lambda _: None)
    a = torch.load(full.run_dir / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for key in ("model", "ema", "optimizer", "aug_rng"):
        _assert_same_tensors(a[key], b[key], key)


def test_a_version_1_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    full = train(tiny(tmp_path / "full"), log=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "old"), on_step=_stop_at(6), log=lambda _: None)
    # rewrite the checkpoint as version 1 wrote it: the sums flat, with epoch_/win_ prefixes
    path = tmp_path / "old" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    sums = ckpt.pop("sums")
    ckpt["sums"] = {f"{prefix}{name}": value for window, prefix in (("epoch", "epoch_"), ("window", "win_"))
                    for name, value in sums[window].items()}
    ckpt["version"] = 1
    save_checkpoint(ckpt, path)
    train(tiny(tmp_path / "ignored"), resume=tmp_path / "old", log=lambda _: None)
    a = torch.load(full.run_dir / "last.pt", weights_only=True)
    b = torch.load(path, weights_only=True)
    for key in ("model", "ema", "optimizer"):
        _assert_same_tensors(a[key], b[key], key)
    assert a["metrics"][-1]["train_loss"] == b["metrics"][-1]["train_loss"]
    assert b["version"] == CHECKPOINT_VERSION


def test_a_checkpoint_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    from resnets import UserError

    save_checkpoint({"version": CHECKPOINT_VERSION + 1, "step": 1}, tmp_path / "last.pt")
    with pytest.raises(UserError, match=f"version {CHECKPOINT_VERSION + 1} checkpoint.*upgrade resnets"):
        load_checkpoint(tmp_path / "last.pt")
