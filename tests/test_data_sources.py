"""Data opened in one place: the seeds, the normalisation table, and ``open_train``/``open_eval``."""

from __future__ import annotations

import hashlib

import pytest

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
