"""Image folders: class index, label stability, bad images, sizes and the decode cache."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

import resnets.data.folder as folder
from resnets.data import BadImageError, find_classes, load_image_folder, open_data
from resnets.errors import UserError


def _img(path, value, size=(4, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def _make_split(root, counts, size=(4, 4)):
    for ci, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            _img(root / name / f"{k}.png", 10 * ci + k, size)


def test_find_classes_ignores_hidden_and_files(tmp_path):
    _make_split(tmp_path, {"b": 1, "a": 1})
    (tmp_path / ".ipynb_checkpoints").mkdir()
    _img(tmp_path / ".ipynb_checkpoints" / "x.png", 0)
    (tmp_path / "notes.txt").write_text("x")
    assert find_classes(tmp_path) == ["a", "b"]


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    _make_split(tmp_path, {"a": 1})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        find_classes(tmp_path)
    assert find_classes(tmp_path, allow_empty=True) == ["a", "empty"]


def test_val_reuses_train_index_missing_class_ok_extra_class_error(tmp_path):
    _make_split(tmp_path / "train", {"cat": 2, "dog": 2, "eel": 2})
    _make_split(tmp_path / "val", {"cat": 1, "eel": 1})  # no dog: eel must keep label 2
    train, _ = load_image_folder(tmp_path / "train", cache_dir=tmp_path / "c")
    val, report = load_image_folder(tmp_path / "val", train.classes, cache_dir=tmp_path / "c")
    assert val.classes == ["cat", "dog", "eel"]
    assert val.labels.tolist() == [0, 2]
    assert report.missing_classes == ["dog"]
    _make_split(tmp_path / "val", {"fox": 1})
    with pytest.raises(UserError, match="fox"):
        load_image_folder(tmp_path / "val", train.classes, cache_dir=tmp_path / "c")


def test_open_data_folder_with_val(tmp_path):
    _make_split(tmp_path / "d" / "train", {"a": 3, "b": 3})
    _make_split(tmp_path / "d" / "val", {"b": 2})
    splits = open_data(tmp_path / "d", cache_dir=tmp_path / "c")
    assert splits.classes == ["a", "b"] and len(splits.train) == 6 and splits.test.labels.tolist() == [1, 1]
    held = open_data(tmp_path / "d", cache_dir=tmp_path / "c", val_split=2)
    assert len(held.train) == 4 and len(held.test) == 2
    again = open_data(tmp_path / "d", cache_dir=tmp_path / "c", val_split=2)
    assert torch.equal(held.test.images, again.test.images)  # fixed seeded permutation


def test_bad_image_stops_with_path_or_is_skipped_and_counted(tmp_path):
    _make_split(tmp_path / "s", {"a": 2, "b": 2})
    bad = tmp_path / "s" / "b" / "zz.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(BadImageError, match="zz.jpg"):
        load_image_folder(tmp_path / "s", cache_dir=tmp_path / "c")
    data, report = load_image_folder(tmp_path / "s", skip_bad_images=True, cache_dir=tmp_path / "c")
    assert len(data) == 4 and [p for p, _ in report.bad_images] == [str(bad)]
    _, report = load_image_folder(tmp_path / "s", skip_bad_images=True, cache_dir=tmp_path / "c")
    assert report.cache_hit and len(report.bad_images) == 1
    with pytest.raises(BadImageError, match="zz.jpg"):  # a cached skip does not hide the bad file
        load_image_folder(tmp_path / "s", cache_dir=tmp_path / "c")


def test_mixed_sizes_need_a_size(tmp_path):
    _make_split(tmp_path / "s", {"a": 1})
    _img(tmp_path / "s" / "a" / "big.png", 7, (8, 6))
    with pytest.raises(UserError, match="pass a size"):
        load_image_folder(tmp_path / "s", cache_dir=tmp_path / "c")
    data, report = load_image_folder(tmp_path / "s", size=4, cache_dir=tmp_path / "c")
    assert data.images.shape == (2, 3, 4, 4) and report.resized == 1


def test_cache_hit_invalidation_and_never_beside_data(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    _make_split(data_dir, {"a": 2, "b": 1})
    cache = tmp_path / "cache"
    for path in [data_dir, *data_dir.rglob("*")]:  # the data is read-only: nothing may be written there
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        first, report = load_image_folder(data_dir, cache_dir=cache)
        assert not report.cache_hit and report.cache_path.startswith(str(cache))
        assert sorted(p.name for p in data_dir.rglob("*")) == ["0.png", "0.png", "1.png", "a", "b"]

        calls = []
        real = folder.decode_files
        monkeypatch.setattr(folder, "decode_files", lambda *a, **k: calls.append(1) or real(*a, **k))
        second, report = load_image_folder(data_dir, cache_dir=cache)
        assert report.cache_hit and calls == []
        assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)

        target = data_dir / "a" / "0.png"
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: decoded again
        _, report = load_image_folder(data_dir, cache_dir=cache)
        assert not report.cache_hit and calls == [1]
        target.chmod(0o644)
        Image.new("RGB", (4, 4), (200, 0, 0)).save(target)  # changed content: decoded again, new pixels
        third, report = load_image_folder(data_dir, cache_dir=cache)
        assert not report.cache_hit and third.images[0, :, 0, 0].tolist() == [200, 0, 0]
    finally:
        for path in [data_dir, *data_dir.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_default_cache_dir_is_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("RESNETS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _make_split(tmp_path / "s", {"a": 1})
    _, report = load_image_folder(tmp_path / "s")
    assert report.cache_path.startswith(str(tmp_path / "xdg" / "resnets"))
    assert not list((tmp_path / "xdg").rglob("*.tmp"))  # written atomically, no leftovers


def test_mean_std_per_channel(tmp_path):
    _make_split(tmp_path / "s", {"a": 2})
    data, _ = load_image_folder(tmp_path / "s", cache_dir=tmp_path / "c")
    pixels = data.images.double() / 255
    assert np.allclose(data.mean(), pixels.mean(dim=(0, 2, 3)).tolist())
    assert np.allclose(data.std(), pixels.std(dim=(0, 2, 3), unbiased=False).tolist())
