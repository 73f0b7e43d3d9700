"""DeviceBatches: augmentation is exact, order is a pure function of (seed, epoch), test mode is plain."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnets.data import DeviceBatches, ImageTensors, open_data
from resnets.errors import UserError

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)


def _data(n=10, h=6, w=5) -> ImageTensors:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)  # no zeros: padding shows
    return ImageTensors(images, torch.arange(n) % 3, ["a", "b", "c"])


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def test_train_crops_are_shifted_windows_of_the_padded_image_and_flips_mirror():
    data = _data()
    loader = DeviceBatches(data, 4, train=True, mean=MEAN, std=STD, pad=2, seed=3)
    order, offsets, flips = loader._plan()
    seen = 0
    for b, (x, y) in enumerate(loader):
        assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
        got = _unnormalise(x)
        for k in range(x.shape[0]):
            i = int(order[b * 4 + k])
            assert int(y[k]) == int(data.labels[i])
            # Reference, one image at a time: zero-pad, take the window, mirror if flipped.
            padded = F.pad(data.images[i], (2, 2, 2, 2))
            dy, dx = offsets[b * 4 + k].tolist()
            window = padded[:, dy:dy + 6, dx:dx + 5]
            if flips[b * 4 + k]:
                window = window.flip(-1)
            assert torch.equal(got[k], window)
            seen += 1
    assert seen == 8 and len(loader) == 2  # drop_last in training: 10 // 4
    assert flips.any() and (~flips).any() and (offsets != 2).any()  # both flip states and real shifts occurred


def test_test_mode_is_exactly_the_normalised_images_in_order():
    data = _data(n=7)
    loader = DeviceBatches(data, 3, train=False, mean=MEAN, std=STD)
    xs, ys = zip(*loader, strict=True)
    assert len(loader) == 3 and [len(y) for y in ys] == [3, 3, 1]
    assert torch.allclose(torch.cat(xs), _normalise(data.images), atol=1e-6)
    assert torch.equal(torch.cat(ys), data.labels)


def test_same_seed_and_epoch_same_batches_and_iter_from_is_the_tail():
    data = _data(n=20)

    def epoch(loader, e, start=0):
        loader.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in loader.iter_from(start)]

    a = DeviceBatches(data, 4, train=True, mean=MEAN, std=STD, generator=torch.Generator().manual_seed(7))
    b = DeviceBatches(data, 4, train=True, mean=MEAN, std=STD, generator=torch.Generator().manual_seed(7))
    full = epoch(a, 2)
    again = epoch(b, 2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(full, again, strict=True))
    tail = epoch(b, 2, start=3)
    assert len(tail) == len(full) - 3
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(full[3:], tail, strict=True))
    other = epoch(a, 3)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(full, other, strict=True))
    c = DeviceBatches(data, 4, train=True, mean=MEAN, std=STD, generator=torch.Generator().manual_seed(8))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(full, epoch(c, 2), strict=True))


def test_options_crop_no_flip_dtype_and_errors():
    data = _data(n=4, h=8, w=8)
    loader = DeviceBatches(data, 4, train=True, mean=MEAN, std=STD, pad=0, flip=False, crop=6,
                           channels_last=False, dtype=torch.float64)
    x, _ = next(iter(loader))
    assert x.shape == (4, 3, 6, 6) and x.dtype == torch.float64 and x.is_contiguous()
    evaluation = DeviceBatches(data, 4, train=False, mean=MEAN, std=STD, crop=6)
    x, _ = next(iter(evaluation))
    assert torch.allclose(x, _normalise(data.images[:, :, 1:7, 1:7]), atol=1e-6)
    with pytest.raises(UserError):
        DeviceBatches(data, 0, train=True, mean=MEAN, std=STD)
    with pytest.raises(UserError):
        DeviceBatches(data, 4, train=True, mean=MEAN, std=(0.2, 0.0, 0.1))


def test_shipped_sample_loads_with_ten_classes(tmp_path):
    splits = open_data("sample", cache_dir=tmp_path)
    assert splits.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                              "truck"]
    assert len(splits.train) == 3000 and len(splits.test) == 1000
    assert splits.train.images.shape[1:] == (3, 32, 32)
    assert set(splits.train.class_counts().values()) == {300}
    mean = splits.train.mean()
    assert all(0.4 < m < 0.52 for m in mean)
    again = open_data("sample", cache_dir=tmp_path)
    assert again.report["train"].cache_hit


# ---- progressive resizing -------------------------------------------------------------------------------------

def test_progressive_image_size_grows_to_full_by_the_given_fraction():
    from resnets.data.batches import progressive_image_size

    sizes = [progressive_image_size(e, 12, 32, 16, 0.5) for e in range(12)]
    assert sizes == [16, 20, 20, 24, 28, 28, 32, 32, 32, 32, 32, 32]
    assert [progressive_image_size(e, 4, 32, 32, 0.5) for e in range(4)] == [32] * 4  # start at full: no-op


def test_set_image_size_downscales_the_augmented_batch():
    data = _data(n=8, h=8, w=8)
    full = DeviceBatches(data, 4, train=True, mean=MEAN, std=STD, pad=2, seed=1)
    small = DeviceBatches(data, 4, train=True, mean=MEAN, std=STD, pad=2, seed=1)
    small.set_image_size(4)
    for (xf, yf), (xs, ys) in zip(full, small, strict=True):
        assert xs.shape == (4, 3, 4, 4) and xs.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yf, ys)  # same images, same order: only the resolution changes
        expected = F.interpolate(xf, size=(4, 4), mode="bilinear", antialias=True, align_corners=False)
        torch.testing.assert_close(xs, expected)
    small.set_image_size(8)  # the crop size again: batches are the plain augmented ones
    torch.testing.assert_close(next(iter(small))[0], next(iter(full))[0])
    tall = DeviceBatches(_data(n=4, h=8, w=4), 4, train=True, mean=MEAN, std=STD, pad=1, seed=1)
    tall.set_image_size(4)  # non-square images keep their aspect ratio
    assert next(iter(tall))[0].shape == (4, 3, 4, 2)


def test_out_size_upscales_each_augmented_batch_on_the_device():
    data = _data(n=8, h=8, w=8)
    native = DeviceBatches(data, 4, train=True, mean=MEAN, std=STD, pad=2, seed=1)
    big = DeviceBatches(data, 4, train=True, mean=MEAN, std=STD, pad=2, seed=1, out_size=16)
    assert big.full_size == 16 and big.images.shape[-1] == 8  # held at 8 pixels, fed at 16
    for (xn, yn), (xb, yb) in zip(native, big, strict=True):
        assert xb.shape == (4, 3, 16, 16) and torch.equal(yn, yb)  # the same crops and flips, then upscaled
        torch.testing.assert_close(xb, F.interpolate(xn, size=(16, 16), mode="bilinear", align_corners=False))
    big.set_image_size(12)  # progressive resizing counts from the output size
    assert next(iter(big))[0].shape == (4, 3, 12, 12)
    big.set_image_size(None)
    assert next(iter(big))[0].shape == (4, 3, 16, 16)
    test = DeviceBatches(data, 8, train=False, mean=MEAN, std=STD, out_size=16)
    x, _ = next(test.unaugmented(8))
    torch.testing.assert_close(x, F.interpolate(_normalise(data.images), size=(16, 16), mode="bilinear",
                                                align_corners=False))
