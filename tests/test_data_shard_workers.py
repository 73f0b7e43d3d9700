"""Large-image shards: the loader's workers are kept from epoch to epoch (each reading its own shards), exact
resume still holds with workers > 0, and progressive resizing reaches the workers' random-resized crops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnets.data.shards import write_shards
from resnets.data.sources import TrainDataSpec, open_train


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_streamed_resume import noise_folder

    root = tmp_path_factory.mktemp("shard-workers")
    write_shards(noise_folder(root / "noise", train=12, val=2), root / "shards", max_count=4, log=lambda _: None,
                 progress=False)
    return root / "shards"


def _open(shards: Path, workers: int):
    spec = TrainDataSpec(data=str(shards), batch_size=4, image_size=24, resize=28, workers=workers, seed=3,
                         progress=False)
    return open_train(spec, torch.device("cpu"))


def _epoch(train, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    train.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in train.iter_from(start)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True))


def _pids(train) -> list[int]:
    return sorted(w.pid for w in train._loader._iterator._workers)


def test_shard_workers_are_kept_and_resume_is_exact(shards: Path) -> None:
    fresh = _open(shards, 2)
    try:
        epoch1 = _epoch(fresh.train, 1)
    finally:
        fresh.close()
    kept = _open(shards, 2)
    try:
        train = kept.train
        epoch0 = _epoch(train, 0)
        pids = _pids(train)
        assert _same(_epoch(train, 1), epoch1)  # served by the workers of epoch 0
        assert not _same(epoch0, epoch1)
        assert _same(_epoch(train, 1, start=2), epoch1[2:])  # a resumed epoch: its tail
        assert _pids(train) == pids  # the same processes, every epoch
        assert epoch1[0][0].dtype == torch.float32 and epoch1[0][0].is_contiguous(memory_format=torch.channels_last)
    finally:
        kept.close()
    assert kept.train._loader is None


def test_progressive_resizing_reaches_the_shard_workers(shards: Path) -> None:
    opened = _open(shards, 2)
    try:
        train = opened.train
        assert train.resizable and train.full_size == 24
        assert _epoch(train, 0)[0][0].shape[-1] == 24
        train.set_image_size(16)
        assert {x.shape[-1] for x, _ in _epoch(train, 1)} == {16}
        train.set_image_size(None)
        assert {x.shape[-1] for x, _ in _epoch(train, 2)} == {24}
        assert next(iter(opened.val))[0].shape[-1] == 24  # evaluated at the full size
    finally:
        opened.close()
