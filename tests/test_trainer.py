"""The Trainer's parts: each owns its state, one checkpoint gathers them, one restore gives them back exactly;
checkpoints of the previous format resume; mixup and cutmix runs resume bit-identically."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
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


def _draw_global_rngs(draws: dict[int, tuple]):
    """A step callback that consumes the global torch, Python and NumPy generators, as user code or a random
    layer would, and records what it drew at each step: a restore that misses any of them changes the draws."""
    def draw(state) -> None:
        draws[state.step] = (torch.rand(3).tolist(), random.random(), float(np.random.rand()))
    return draw


_TIMING = {"images_per_s", "elapsed_s"}


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in records]


def test_an_interrupted_and_restored_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    changes = dict(ema=True, mixup_alpha=0.2)  # EMA weights and the mixup generator are state too
    full_draws: dict[int, tuple] = {}
    full = train(tiny(tmp_path / "full", **changes), on_step=[_draw_global_rngs(full_draws)], log=lambda _: None)
    cut_draws: dict[int, tuple] = {}
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "cut", **changes), on_step=[_draw_global_rngs(cut_draws), *_stop_at(3)],
              log=lambda _: None)
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (saved["step"], saved["epoch"], saved["batch"]) == (3, 0, 3)

    # one checkpoint round trip: every part's state back as saved, random-number states included
    restored = Trainer(tiny(tmp_path / "ignored", **changes), resume=tmp_path / "cut", log=lambda _: None)
    for part in restored.parts:
        state = part.state_dict()
        _assert_same_tensors({k: saved[k] for k in state}, state, type(part).__name__)
    restored.metrics.close()

    # and the resumed run ends where the uninterrupted one did, bit for bit
    train(tiny(tmp_path / "ignored", **changes), resume=tmp_path / "cut", on_step=[_draw_global_rngs(cut_draws)],
          log=lambda _: None)
    a = load_checkpoint(full.run_dir / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert a["step"] == b["step"] == 8
    for key in ("model", "ema", "optimizer", "scaler", "rng", "aug_rng", "sums", "epoch", "batch"):
        _assert_same_tensors(a[key], b[key], key)
    assert _untimed(a["metrics"]) == _untimed(b["metrics"])
    assert cut_draws == full_draws  # steps 4-8 drew after the restore what the uninterrupted run drew
    # not vacuous: between the checkpoint and the end the weights, the EMA and every generator moved on
    assert not torch.equal(saved["model"]["conv1.weight"], b["model"]["conv1.weight"])
    assert not torch.equal(saved["ema"]["module"]["conv1.weight"], b["ema"]["module"]["conv1.weight"])
    assert not torch.equal(saved["rng"]["torch"], b["rng"]["torch"])
    assert not torch.equal(saved["aug_rng"], b["aug_rng"])


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
