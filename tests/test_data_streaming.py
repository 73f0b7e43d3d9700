"""streaming_loader: ImageNet-style crops (uint8, normalised on the device) over the class index, odd modes and
bad images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from resnets.data import BadImageError, streaming_loader


def _folder(root):
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (40, 30), colour).save(root / name / "0.jpg", quality=95)
        Image.new("RGBA", (30, 40), (*colour, 255)).save(root / name / "1.png")
        Image.new("L", (35, 35), 128).save(root / name / "2.png")


def test_eval_loader_shapes_labels_and_uint8_crops(tmp_path):
    _folder(tmp_path)
    loader = streaming_loader(tmp_path, None, train=False, batch_size=6, workers=0, image_size=16, resize=20)
    x, y = next(iter(loader))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.uint8  # normalised on the device, not in the workers
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert (x[0, :, 8, 8].int() - torch.tensor([255, 0, 0])).abs().max() <= 8  # the red JPEG
    assert x[5, :, 8, 8].tolist() == [128, 128, 128]  # grayscale as RGB


def test_train_loader_and_class_index_from_training(tmp_path):
    _folder(tmp_path / "train")
    (tmp_path / "val" / "b").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(tmp_path / "val" / "b" / "x.png")
    loader = streaming_loader(tmp_path / "val", ["a", "b"], train=True, batch_size=1, workers=0, image_size=8)
    x, y = next(iter(loader))
    assert x.shape == (1, 3, 8, 8) and y.tolist() == [1]


def test_bad_image_raises_or_is_skipped(tmp_path):
    _folder(tmp_path)
    (tmp_path / "a" / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    loader = streaming_loader(tmp_path, None, train=False, batch_size=16, workers=0, image_size=8, resize=8)
    with pytest.raises(BadImageError, match="bad.jpg"):
        next(iter(loader))
    loader = streaming_loader(tmp_path, None, train=False, batch_size=16, workers=0, image_size=8, resize=8,
                              skip_bad_images=True)
    x, y = next(iter(loader))
    assert len(y) == 6 and loader.bad_images == [(str(tmp_path / "a" / "bad.jpg"), loader.bad_images[0][1])]


def test_bad_images_found_in_workers_are_listed_once(tmp_path):
    """Skipped in DataLoader worker processes, listed in the main process; two epochs list each file once."""
    _folder(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    loader = streaming_loader(tmp_path, None, train=True, batch_size=2, workers=2, image_size=8, resize=8,
                              skip_bad_images=True, drop_last=False)
    for _ in range(2):
        assert sum(len(y) for _, y in loader) == 6
    assert sorted(p for p, _ in loader.bad_images) == [str(tmp_path / n / "bad.jpg") for n in ("a", "b")]
    assert all("Pillow" in reason or "Error" in reason for _, reason in loader.bad_images)


# ---- streamed training batches: a pure function of (seed, epoch, sample index) ------------------------------


def _open(root, workers: int):
    from resnets.data.sources import TrainDataSpec, open_train

    spec = TrainDataSpec(data=str(root), batch_size=4, image_size=24, resize=28, workers=workers, seed=7,
                         progress=False)
    return open_train(spec, torch.device("cpu"))


def _epoch(train, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    train.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in train.iter_from(start)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True))


def test_streamed_batches_replay_on_textured_images_whatever_the_workers(tmp_path):
    """Noise images (every crop and flip shows): the batches of an epoch are the same with 0 or 2 workers,
    with workers fresh or kept from the epoch before, and ``iter_from(k)`` is the epoch's tail."""
    from test_streamed_resume import noise_folder

    root = noise_folder(tmp_path / "noise")
    state = torch.get_rng_state()
    alone = _open(root, 0)
    try:
        epoch1 = _epoch(alone.train, 1)
        epoch2 = _epoch(alone.train, 2)
    finally:
        alone.close()
    assert len(epoch1) == 4 and not any(torch.equal(x, u) for (x, _), (u, _) in zip(epoch1, epoch2, strict=True))
    workers = _open(root, 2)
    try:
        _epoch(workers.train, 0)  # the persistent workers serve epoch 0 first
        assert _same(_epoch(workers.train, 1), epoch1)
        assert _same(_epoch(workers.train, 2, start=2), epoch2[2:])  # a resumed epoch: its tail
        assert _same(_epoch(workers.train, 1, start=1), epoch1[1:])
    finally:
        workers.close()
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is not what augments


def test_streamed_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    """The same sample, asked for twice, is augmented the same way; in another epoch, differently."""
    from test_streamed_resume import noise_folder

    opened = _open(noise_folder(tmp_path / "noise"), 0)
    loader = opened.train.loader
    sampler, dataset = loader.sampler, loader.dataset
    sampler.set_position(1)
    first = dict(iter(sampler))
    sampler.set_position(2)
    second = dict(iter(sampler))
    assert sorted(first) == sorted(second) == list(range(len(dataset)))
    assert list(first) != list(second)  # another order
    index = 5
    again = dataset[(index, first[index])][0]
    assert torch.equal(dataset[(index, first[index])][0], again)
    assert not torch.equal(dataset[(index, second[index])][0], again)
    opened.close()


def test_a_resumed_streamed_epoch_decodes_only_the_batches_it_yields(tmp_path, monkeypatch):
    """Skipping is free: ``iter_from(3)`` of a 4-batch epoch decodes the last batch's 4 images, not 16."""
    from resnets.data import streaming
    from test_streamed_resume import noise_folder

    decoded: list[str] = []

    def counting(path):
        decoded.append(str(path))
        return read_bytes(path)

    read_bytes = streaming.read_bytes
    monkeypatch.setattr(streaming, "read_bytes", counting)
    opened = _open(noise_folder(tmp_path / "noise"), 0)
    tail = _epoch(opened.train, 1, start=3)
    assert len(tail) == 1 and len(decoded) == 4
    opened.close()
