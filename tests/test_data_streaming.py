"""streaming_loader: ImageNet-style transforms over the class index, odd modes and bad images."""

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


def test_eval_loader_shapes_labels_and_normalisation(tmp_path):
    _folder(tmp_path)
    loader = streaming_loader(tmp_path, None, train=False, batch_size=6, workers=0, image_size=16, resize=20,
                              mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x, y = next(iter(loader))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.allclose(x[0, :, 8, 8], torch.tensor([1.0, 0.0, 0.0]), atol=0.03)  # red JPEG, scaled to 0..1
    assert torch.allclose(x[5, :, 8, 8], torch.full((3,), 128 / 255), atol=1e-3)  # grayscale as RGB


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
