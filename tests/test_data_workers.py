"""The default number of loader workers is what TrainConfig's --workers help and docs/data.md say: with CUDA the
cores this process may use per local GPU less one, else the cores, at most 4."""

from __future__ import annotations

import os

import pytest
import torch

from resnets.train import config


@pytest.fixture
def machine(monkeypatch):
    def set_up(cores: int, gpus: int, local: str | None = None) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        if local is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)

    return set_up


@pytest.mark.parametrize("cores, gpus, local, expected", [
    (16, 1, None, 15),  # the H200 host: 16 cores, one GPU
    (64, 8, None, 7),  # 8 GPUs seen by one process: its cores per GPU, less one
    (64, 8, "4", 15),  # torchrun with 4 local processes: 16 cores each
    (2, 1, None, 1),  # never below one
    (2, 0, None, 2),  # no CUDA: the cores, at most 4
    (16, 0, None, 4),
])
def test_default_workers_follow_the_cores_per_local_gpu(machine, cores, gpus, local, expected):
    machine(cores, gpus, local)
    assert config.default_workers() == expected
    assert config.TrainConfig().workers == expected
    assert config.TrainConfig(workers=3).workers == 3  # --workers wins


def test_the_default_is_logged_in_the_streamed_data_description(tmp_path):
    from resnets.data.sources import TrainDataSpec, open_train
    from test_streamed_resume import noise_folder

    opened = open_train(TrainDataSpec(data=str(noise_folder(tmp_path / "n")), batch_size=4, image_size=24,
                                      resize=28, workers=0, progress=False), torch.device("cpu"))
    opened.close()
    assert "(streamed, 0 loader workers)" in opened.description
