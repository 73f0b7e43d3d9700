"""uint8 batches normalised on the device (DeviceFeed): the same numbers as the CPU transforms gave, within the
precision's rounding; streamed folders hand uint8 crops to it and get float channels_last batches back."""

from __future__ import annotations

import pytest
import torch

from resnets.data.feed import DeviceFeed, FedBatches
from resnets.data.normalization import IMAGENET_MEAN, IMAGENET_STD


def _cpu_reference(x: torch.Tensor) -> torch.Tensor:
    """What the workers computed before: torchvision's ToDtype(float32, scale) and Normalize, in float64."""
    from torchvision.transforms import v2

    return v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))(v2.ToDtype(torch.float64, scale=True)(x))


def _batch() -> torch.Tensor:
    x = torch.randint(0, 256, (4, 3, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x[0, :, 0, 0] = 0
    x[0, :, 0, 1] = 255  # both ends of the range
    return x


def test_device_normalisation_equals_the_cpu_transform_in_float32():
    x = _batch()
    feed = DeviceFeed("cpu", IMAGENET_MEAN, IMAGENET_STD)
    out = feed.normalise(x)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    ref = _cpu_reference(x)
    assert (out.double() - ref).abs().max() < 4 * torch.finfo(torch.float32).eps * ref.abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_device_normalisation_in_half_precision_is_the_reference_rounded_once(dtype):
    x = _batch()
    out = DeviceFeed("cpu", IMAGENET_MEAN, IMAGENET_STD, dtype=dtype).normalise(x)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    ref = _cpu_reference(x)
    rounded = ref.to(dtype)  # the exact value rounded once to the format
    ulp = torch.finfo(dtype).eps * rounded.double().abs().clamp_min(1.0)
    assert ((out.double() - rounded.double()).abs() <= ulp).all()  # at most a unit off (float32 in between)
    assert (out == rounded).double().mean() > 0.99
    naive = x.to(dtype).div(255).sub(torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1)).div(
        torch.tensor(IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1))  # each step rounded: further off
    assert (naive.double() - ref).abs().max() > (out.double() - ref).abs().max()


def test_feed_moves_labels_and_passes_float_batches_through():
    feed = DeviceFeed("cpu", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), channels_last=False)
    x = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    y = torch.tensor([3, 1])
    (out, labels), = list(feed([(x, y)]))
    assert torch.allclose(out, torch.full((2, 3, 2, 2), 2.0)) and labels.tolist() == [3, 1]
    already = torch.randn(2, 3, 2, 2)
    assert feed.normalise(already) is already


def test_fed_batches_keep_the_loaders_length_and_bad_images():
    class Loader(list):
        bad_images = [("x.jpg", "bad")]
        closed = False

        def close(self):
            self.closed = True

    loader = Loader([(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.tensor([0]))] * 3)
    fed = FedBatches(loader, DeviceFeed("cpu", IMAGENET_MEAN, IMAGENET_STD))
    assert len(fed) == 3 and fed.bad_images == [("x.jpg", "bad")]
    assert all(x.dtype == torch.float32 for x, _ in fed)
    fed.close()
    assert loader.closed


def test_streamed_folder_batches_are_normalised_uint8_crops(tmp_path):
    """The workers' uint8 crops, normalised by the feed, equal the crops normalised by the CPU transform."""
    from resnets.data.sources import TrainDataSpec, open_train
    from test_streamed_resume import noise_folder

    root = noise_folder(tmp_path / "noise")
    opened = open_train(TrainDataSpec(data=str(root), batch_size=4, image_size=24, resize=28, progress=False),
                        torch.device("cpu"))
    try:
        train = opened.train
        train.set_epoch(0)
        x, _ = next(train.iter_from(0))
        raw, _ = next(iter(train.loader))  # the same epoch's first batch, as the workers hand it over
        assert raw.dtype == torch.uint8 and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert (x.double() - _cpu_reference(raw)).abs().max() < 1e-5
        vx, _ = next(iter(opened.val))
        assert vx.dtype == torch.float32 and vx.shape == (4, 3, 24, 24)
    finally:
        opened.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side-stream copy needs CUDA")
def test_cuda_feed_copies_ahead_and_normalises_as_the_cpu_does():
    batches = [(_batch(), torch.arange(4)) for _ in range(3)]
    feed = DeviceFeed("cuda", IMAGENET_MEAN, IMAGENET_STD)
    cpu = DeviceFeed("cpu", IMAGENET_MEAN, IMAGENET_STD)
    for (x, y), (u, v) in zip(feed(batches), cpu(batches), strict=True):
        assert x.is_cuda and y.is_cuda
        assert torch.allclose(x.cpu(), u, atol=1e-6) and torch.equal(y.cpu(), v)
