"""Data opened in one place: the seeds, the normalisation table, and ``open_train``/``open_eval``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from resnets.data.batches import DeviceBatches, RankBatches
from resnets.data.shards import ShardBatches
from resnets.data.sources import StreamedBatches, TrainBatches, TrainDataSpec, open_eval, open_train
from resnets.data.splits import limit_images, subset_indices
from resnets.errors import UserError
from resnets.runtime import derive_seed


@pytest.mark.parametrize("parts", [(0, 0), (7, 3), (123456789, 41)])
def test_derived_seeds_are_the_ones_batches_and_shards_drew_before(parts: tuple[int, int]) -> None:
    """``derive_seed`` replaced ``batches.epoch_seed`` and ``shards.mix_seed``: same seeds, so the same runs."""

    def old(text: str) -> int:  # the two functions it replaced, as they were
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)

    seed, epoch = parts
    assert derive_seed("batches", seed, epoch) == old(f"resnets-batches:{seed}:{epoch}")  # epoch_seed
    for shard_parts in ((seed, epoch), (seed, "batch", epoch), (seed, epoch, 1)):  # mix_seed(*parts)
        assert derive_seed("shards", *shard_parts) == old(":".join(map(str, ("resnets-shards", *shard_parts))))


def test_one_normalisation_table() -> None:
    from resnets.data.normalization import CIFAR_MEAN, IMAGENET_STD, NORMALIZATION
    from resnets.data.streaming import IMAGENET_MEAN
    from resnets.infer import loading

    assert IMAGENET_MEAN is NORMALIZATION["imagenet"]["mean"] is loading.IMAGENET_MEAN
    assert IMAGENET_STD == (0.229, 0.224, 0.225) and CIFAR_MEAN is loading.CIFAR_MEAN


# ---- open_train / open_eval: every source, behind one batches protocol ------------------------------------


def image_folder(root: Path, splits: tuple[str, ...], side: int, per_class: int = 4) -> Path:
    """``root/<split>/c<k>/<i>.png``: two classes of flat-colour ``side``-pixel images."""
    from PIL import Image

    for split in splits:
        for c, colour in enumerate(((200, 20, 20), (20, 20, 200))):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (side, side), (colour[0], i * 20, colour[2])).save(root / split / f"c{c}" / f"{i}.png")
    return root


def source(kind: str, tmp_path: Path) -> str:
    """A ``--data`` spec of ``kind``: small images in memory, a large-image folder (streamed), or shards."""
    if kind == "memory":
        return str(image_folder(tmp_path / "small", ("train", "test"), side=8))
    if kind == "streamed":  # noise, not flat colours: a replayed batch with other crops or flips differs
        from test_streamed_resume import noise_folder

        return str(noise_folder(tmp_path / "large", train=4, val=4))
    from resnets.data.shards import write_shards

    write_shards(image_folder(tmp_path / "small", ("train", "test"), side=8), tmp_path / "shards", max_count=3,
                 log=lambda _: None, progress=False)
    return str(tmp_path / "shards")


@pytest.mark.parametrize("kind, batches, full_size, resizable",
                         [("memory", DeviceBatches, 8, True), ("streamed", StreamedBatches, 32, True),
                          ("shards", ShardBatches, 8, False)])
def test_train_and_eval_read_every_source(tmp_path: Path, kind: str, batches: type, full_size: int,
                                          resizable: bool) -> None:
    data = source(kind, tmp_path)
    spec = TrainDataSpec(data=data, batch_size=4, image_size=32, resize=36, progress=False)
    opened = open_train(spec, torch.device("cpu"))
    train = opened.train
    assert type(train) is batches and TrainBatches in type(train).__mro__
    assert (len(train), train.full_size, train.resizable) == (2, full_size, resizable)
    assert opened.classes == ["c0", "c1"] and opened.held_out == "test"
    train.set_epoch(1)
    first, second = list(train.iter_from(0)), list(train.iter_from(1))
    assert first[0][0].shape == (4, 3, full_size, full_size) and torch.equal(first[1][0], second[0][0])
    if resizable:
        train.set_image_size(4)
        assert next(train.iter_from(0))[0].shape[-1] == 4
    else:
        with pytest.raises(UserError, match="progressive resizing"):
            train.set_image_size(4)
    assert sum(len(y) for _, y in opened.val) == 8

    evaluated = open_eval(data, torch.device("cpu"), mean=opened.mean, std=opened.std, batch_size=3,
                          image_size=32, progress=False)
    assert evaluated.classes == ["c0", "c1"] and evaluated.missing_classes == [] and evaluated.crop is None
    assert sum(len(y) for _, y in evaluated.batches) == 8
    ten_crop = open_eval(data, torch.device("cpu"), mean=opened.mean, std=opened.std, batch_size=3,
                         image_size=32, tta="10crop", progress=False)
    assert ten_crop.crop == (32 if kind == "streamed" else None)  # large images: crops of the larger resize


def test_ranks_take_their_slice_of_in_memory_data(tmp_path: Path) -> None:
    spec = TrainDataSpec(data=source("memory", tmp_path), batch_size=4, progress=False)
    ranks = [open_train(spec, torch.device("cpu"), rank=r, world_size=2, is_main=r == 0) for r in range(2)]
    assert all(isinstance(d.train, RankBatches) and len(d.train) == 2 for d in ranks)
    assert [sum(len(y) for _, y in d.val) for d in ranks] == [4, 4]
    whole = open_train(spec, torch.device("cpu"))
    x = torch.cat([next(d.train.iter_from(1))[0] for d in ranks])
    assert torch.equal(x, next(whole.train.iter_from(1))[0])  # the ranks' slices make the single-process batch


def test_spec_is_the_train_configs_data_settings() -> None:
    from resnets.train.config import TrainConfig

    cfg = TrainConfig()
    assert TrainDataSpec.of(cfg) == TrainDataSpec(workers=cfg.workers)  # same names, same defaults


def test_open_train_refusals_are_one_line(tmp_path: Path) -> None:
    large = source("streamed", tmp_path)
    with pytest.raises(UserError, match="^--download fetches cifar10 or cifar100; sample is not one of them"):
        open_train(TrainDataSpec(download=True), torch.device("cpu"))
    with pytest.raises(UserError, match="pad \\(pad-and-crop\\) is for small images held in memory"):
        open_train(TrainDataSpec(data=large, pad=2), torch.device("cpu"))
    with pytest.raises(UserError, match="several processes stream large images from WebDataset shards"):
        open_train(TrainDataSpec(data=large), torch.device("cpu"), rank=0, world_size=2)
    with pytest.raises(UserError, match="^--train-images does not apply to shards"):
        open_train(TrainDataSpec(data=source("shards", tmp_path), train_images=2), torch.device("cpu"))


def test_one_seeded_subset_serves_every_limit() -> None:
    from resnets.data import ImageTensors

    assert subset_indices(5, None) == subset_indices(5, 9) == [0, 1, 2, 3, 4]
    picked = subset_indices(50, 7)
    assert picked == torch.randperm(50, generator=torch.Generator().manual_seed(1234))[:7].tolist()
    data = ImageTensors(torch.zeros(50, 3, 2, 2, dtype=torch.uint8), torch.arange(50) % 10, list("abcdefghij"))
    assert limit_images(data, 7).labels.tolist() == [i % 10 for i in picked] and limit_images(data, None) is data


def test_small_square_images_are_kept_small_and_upscaled_on_the_device(tmp_path: Path) -> None:
    """``--image-size 16`` on 8-pixel images: held at 8 pixels (a quarter of the memory), batches of 16."""
    data = str(image_folder(tmp_path / "small", ("train", "test"), side=8))
    spec = TrainDataSpec(data=data, batch_size=4, fit_images=16, cache_dir=str(tmp_path / "cache"), progress=False)
    opened = open_train(spec, torch.device("cpu"))
    assert isinstance(opened.train, DeviceBatches) and opened.train.images.shape[-2:] == (8, 8)
    assert opened.train.full_size == 16 and next(opened.train.iter_from(0))[0].shape == (4, 3, 16, 16)
    assert next(iter(opened.val))[0].shape[-2:] == (16, 16)
    ev = open_eval(data, torch.device("cpu"), mean=opened.mean, std=opened.std, batch_size=8, image_size=16,
                   cache_dir=str(tmp_path / "cache"), progress=False)
    assert next(iter(ev.batches))[0].shape[-2:] == (16, 16)
    shrunk = open_train(TrainDataSpec(data=data, batch_size=4, fit_images=6, cache_dir=str(tmp_path / "cache"),
                                      progress=False), torch.device("cpu"))
    assert shrunk.train.images.shape[-2:] == (6, 6)  # a smaller size is still fitted once, at load
