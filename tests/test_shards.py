"""WebDataset shards: writing an image folder, locating shards, and streaming them split over ranks and workers."""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnets.cli import main
from resnets.data.images import MAX_IMAGE_PIXELS, BadImageError
from resnets.data.shards import (
    ShardBatches,
    ShardLimits,
    ShardSet,
    eval_loader,
    eval_transform,
    is_shard_spec,
    open_shards,
    sibling_split,
    write_shards,
)
from resnets.errors import UserError

CLASSES = ("cat", "dog", "emu")


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """train/ with 3 classes x 8 images, test/ with 3 x 2; each image one flat colour coding (class, index)."""
    root = tmp_path / "images"
    for split, count in (("train", 8), ("test", 2)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(count):
                (d / f"{i:03d}.png").write_bytes(_png((40 * c, 10 * i, 150 + 3 * i + c if split == "train" else 100)))
    return root


def _members(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_write_shards_keeps_bytes_labels_and_counts(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    index = write_shards(folder, out, max_count=5, log=lambda _: None)
    train = index["splits"]["train"]
    assert index["classes"] == list(CLASSES)
    assert train["counts"] == [5, 5, 5, 5, 4] and train["total"] == 24
    assert train["pattern"] == "train-{000000..000004}.tar" and train["image_size"] == [8, 8]
    assert index["splits"]["test"]["counts"] == [5, 1]
    assert json.loads((out / "index.json").read_text()) == index
    originals = {p.read_bytes(): CLASSES.index(p.parent.name) for p in (folder / "train").rglob("*.png")}
    seen = []
    for shard in train["shards"]:
        members = _members(out / shard)
        keys = sorted({name.split(".")[0] for name in members})
        for key in keys:
            data, label = members[f"{key}.png"], int(members[f"{key}.cls"])
            assert originals[data] == label  # original bytes, right class index
            seen.append(data)
    assert sorted(seen) == sorted(originals)  # every image exactly once
    # the training split is shuffled before cutting (first shard is not all one class), the test split is not
    first = [int(v) for k, v in _members(out / train["shards"][0]).items() if k.endswith(".cls")]
    assert len(set(first)) > 1
    with pytest.raises(UserError, match="already holds shards"):
        write_shards(folder, out, log=lambda _: None)


def test_bad_image_raises_or_is_skipped(folder: Path, tmp_path: Path) -> None:
    (folder / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(BadImageError, match="broken.png"):
        write_shards(folder, tmp_path / "a", log=lambda _: None)
    index = write_shards(folder, tmp_path / "b", skip_bad_images=True, log=lambda _: None)
    assert index["splits"]["train"]["total"] == 24
    assert index["splits"]["train"]["bad_images"][0][0].endswith("broken.png")


def test_specs_pattern_folder_single_tar_pipe_and_scan(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_shards(folder, out, max_count=10, log=lambda _: None)
    by_pattern = open_shards(str(out / "train-{000000..000002}.tar"))
    by_folder = open_shards(str(out))
    assert by_pattern.urls == by_folder.urls and by_pattern.total == 24 and by_pattern.classes == list(CLASSES)
    assert by_pattern.small_images and by_pattern.mean is not None
    test = sibling_split(by_pattern)
    assert test is not None and test.split == "test" and test.total == 6
    assert open_shards(str(out / "train-000001.tar")).total == 10
    for spec in (str(out / "train-{000000..000002}.tar"), str(out), "pipe:cat x.tar", "http://h/d-{0..3}.tar"):
        assert is_shard_spec(spec)
    assert not is_shard_spec(str(folder)) and not is_shard_spec("sample")
    # without index.json: one reading pass counts samples and finds the labels
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(out / "train-000000.tar", bare)
    scanned = open_shards(str(bare / "train-000000.tar"))
    assert scanned.total == 10 and scanned.classes == ["0", "1", "2"] and scanned.mean is None
    # a pipe: URL streams the same samples as the file
    piped = open_shards(f"pipe:cat {bare / 'train-000000.tar'}")
    assert piped.total == 10


def _all_labels_and_pixels(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[int, float]]:
    return sorted((int(y), round(float(x[1].mean()), 4)) for xs, ys in batches for x, y in zip(xs, ys, strict=True))


def test_stream_split_over_ranks_and_workers_resumes_exactly(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_shards(folder, out, max_count=3, log=lambda _: None)  # 8 train shards of 3
    shards = open_shards(str(out))
    # global batch 6 over 2 ranks: 4 steps per epoch, 3 images per rank per step
    epochs = {}
    for rank in range(2):
        b = ShardBatches(shards, 6, seed=7, rank=rank, world_size=2, workers=2, pad=0, flip=False)
        assert len(b) == 4
        b.set_epoch(1)
        epochs[rank] = list(b)
        assert [len(y) for _, y in epochs[rank]] == [3, 3, 3, 3]
        assert list(b.iter_from(0))[0][1].tolist() == epochs[rank][0][1].tolist()  # same epoch, same order
        resumed = list(b.iter_from(3))
        assert len(resumed) == 1 and torch.equal(resumed[0][0], epochs[rank][3][0])
        single = ShardBatches(shards, 6, seed=7, rank=rank, world_size=2, workers=0, pad=0, flip=False)
        single.set_epoch(1)
        assert len(list(single)) == 4
    # the two ranks read different shards: 24 distinct images over the epoch (each shard once)
    images = _all_labels_and_pixels(epochs[0] + epochs[1])
    assert len(set(images)) == 24
    other = ShardBatches(shards, 6, seed=7, rank=0, world_size=2, workers=2, pad=0, flip=False)
    other.set_epoch(2)
    assert [y.tolist() for _, y in other] != [y.tolist() for _, y in epochs[0]]  # a new order each epoch


def test_eval_loader_gives_each_sample_to_one_rank(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_shards(folder, out, max_count=4, log=lambda _: None)
    test = sibling_split(open_shards(str(out)))
    assert test is not None
    transform = eval_transform([0.5] * 3, [0.25] * 3)
    parts = [list(eval_loader(test, 4, rank=r, world_size=2, workers=w, transform=transform))
             for r, w in ((0, 0), (1, 2))]
    labels = sorted(int(y) for part in parts for _, ys in part for y in ys)
    assert labels == [0, 0, 1, 1, 2, 2]


def test_cli_shard(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shard", str(folder / "train"), "--out", str(tmp_path / "s"), "--max-count", "10"]) == 0
    assert "train: 24 images in 3 shard(s)" in capsys.readouterr().out
    assert main(["shard", str(tmp_path / "missing"), "--out", str(tmp_path / "t")]) == 2


# ---- untrusted names and members ----------------------------------------------------------------------------


def _rewrite_index(out: Path, split: str, position: int, name: object) -> None:
    index = json.loads((out / "index.json").read_text())
    index["splits"][split]["shards"][position] = name
    (out / "index.json").write_text(json.dumps(index))


def _read_all(spec: str, **kw: object) -> None:
    """Open ``spec`` and read every sample of its split and the split beside it."""
    shards = open_shards(spec)
    for part in (shards, sibling_split(shards)):
        if part is not None:
            list(eval_loader(part, 4, transform=eval_transform([0.5] * 3, [0.25] * 3), **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("spec", [".", "train-{000000..000002}.tar"])
def test_index_pipe_entry_is_refused_and_runs_nothing(folder: Path, tmp_path: Path, split: str, spec: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "shards"
    write_shards(folder, out, max_count=10, log=lambda _: None)
    marker = out / "marker"
    # no "/" in the command, so Path(name).name is the name and the unchecked counts lookup finds it
    _rewrite_index(out, split, 0, f"pipe:touch {marker.name}; cat {split}-000000.tar")
    monkeypatch.chdir(out)  # base "." used to hand the name to WebDataset unchanged
    with pytest.raises(UserError, match=r"^index\.json: shard entry 'pipe:touch .*not a plain file name") as err:
        _read_all(spec)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["../outside.tar", "ABSOLUTE", "file:ABSOLUTE", "http://127.0.0.1:9/x.tar",
                                   "sub/../train-000000.tar", "a b.tar", "$(true).tar", "x.tar;true", "", 7])
def test_index_path_entries_are_refused_before_any_shard_opens(folder: Path, tmp_path: Path, entry: object) -> None:
    out = tmp_path / "shards"
    write_shards(folder, out, max_count=10, log=lambda _: None)
    outside = tmp_path / "outside.tar"  # a real shard outside the shard folder
    shutil.copy(out / "train-000000.tar", outside)
    if isinstance(entry, str):
        entry = entry.replace("ABSOLUTE", str(outside))
    _rewrite_index(out, "train", 1, entry)
    source = str(out / "index.json")
    with pytest.raises(UserError, match=f"^{re.escape(source)}: shard entry {re.escape(repr(entry))} ") as err:
        _read_all(str(out))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=re.escape(repr(entry))):
        _read_all(str(out / "train-000000.tar"))  # a shard spec beside the index reads the index too


def _noise_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(0).randbytes(3 * side * side)).save(buf, format="PNG")
    return buf.getvalue()


def test_oversized_member_is_refused_or_skipped(folder: Path, tmp_path: Path) -> None:
    (folder / "train" / "dog" / "big.png").write_bytes(_noise_png(48))  # about 7 kB, the others under 100 bytes
    out = tmp_path / "shards"
    write_shards(folder, out, max_count=100, shuffle_seed=None, log=lambda _: None)
    shards = open_shards(str(out))
    assert shards.total == 25
    transform = eval_transform([0.5] * 3, [0.25] * 3)
    pattern = r"^bad image .*train-000000\.tar:\d+\.png: member of \d+ bytes exceeds the limit of 4096 bytes"
    with pytest.raises(BadImageError, match=pattern) as err:
        list(eval_loader(shards, 4, transform=transform, limits=ShardLimits(member_bytes=4096)))
    assert "\n" not in str(err.value)
    with pytest.raises(BadImageError, match=pattern):
        list(ShardBatches(shards, 5, pad=0, flip=False, limits=ShardLimits(member_bytes=4096)))
    loader = eval_loader(shards, 4, transform=transform, limits=ShardLimits(member_bytes=4096), skip_bad_images=True)
    with pytest.warns(UserWarning, match="skipping bad image .*exceeds the limit of 4096 bytes"):
        labels = [int(y) for _, ys in loader for y in ys]
    assert len(labels) == 24 and loader.dataset.skipped == 1
    with pytest.warns(UserWarning, match="exceeds the limit"):
        batches = list(ShardBatches(shards, 5, pad=0, flip=False, limits=ShardLimits(member_bytes=4096), skip_bad_images=True))
    assert [len(y) for _, y in batches] == [5] * 5  # the stream refills each batch
    assert len(list(eval_loader(shards, 1, transform=transform))) == 25  # the default limit takes it


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_member_names_outside_the_shard_and_pixel_bombs_are_refused_or_skipped(tmp_path: Path) -> None:
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")  # 81 M pixels in 10 kB
    members = [("000.png", _png((1, 2, 3))), ("000.cls", b"0"), ("../evil.png", _png((4, 5, 6))),
               ("../evil.cls", b"0"), ("/abs/evil.png", _png((7, 8, 9))), ("/abs/evil.cls", b"0"),
               ("002.png", bomb.getvalue()), ("002.cls", b"0"), ("003.png", _png((1, 1, 1))), ("003.cls", b"0")]
    shard = _tar(tmp_path / "crafted.tar", members)
    shards = ShardSet([str(shard)], "train", ["a"], 5, [5])
    transform = eval_transform([0.5] * 3, [0.25] * 3)
    with pytest.raises(BadImageError, match=r"crafted\.tar:\.\./evil\.png: member name is not a relative path"):
        list(eval_loader(shards, 8, transform=transform))
    loader = eval_loader(shards, 8, transform=transform, skip_bad_images=True)
    with pytest.warns(UserWarning) as caught:
        labels = [int(y) for _, ys in loader for y in ys]
    assert labels == [0, 0] and loader.dataset.skipped == 3
    messages = " ".join(str(w.message) for w in caught)
    assert "../evil.png" in messages and "/abs/evil.png" in messages
    assert f"exceeds the limit of {MAX_IMAGE_PIXELS}" in messages  # the image-folder pixel limit
    assert not (tmp_path.parent / "evil.png").exists() and not Path("/abs").exists()


def test_oversized_tar_header_is_refused(tmp_path: Path) -> None:
    shard = tmp_path / "pax.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("000.png")
        data = _png((1, 2, 3))
        info.size, info.pax_headers = len(data), {"comment": "x" * (2 << 20)}  # read whole by tarfile
        t.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("000.cls")
        info.size = 1
        t.addfile(info, io.BytesIO(b"0"))
    with pytest.raises(UserError, match=r"^shard .*pax\.tar: a \d+-byte tar header exceeds the limit of 1048576"):
        open_shards(str(shard))


@pytest.mark.parametrize("device, pinned", [("cuda", True), ("cpu", False)])
def test_shard_loaders_pin_memory_for_cuda(folder: Path, tmp_path: Path, device: str, pinned: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import resnets.data.shards as shards_module
    from resnets.data.feed import DeviceFeed
    from resnets.data.sources import TrainDataSpec, open_train
    from resnets.train import resolve_config

    out = tmp_path / "shards"
    write_shards(folder, out, max_count=4, log=lambda _: None)
    cfg = resolve_config({"data": str(out), "batch_size": 6, "workers": 1, "epochs": 1})
    bundle = open_train(TrainDataSpec.of(cfg), torch.device(device))  # builds, runs nothing
    assert bundle.train.pin_memory is pinned and bundle.val.loader.pin_memory is pinned
    assert bundle.train.feed.device.type == device  # the batches are normalised there
    bundle.train.feed = DeviceFeed("cpu", bundle.mean, bundle.std)  # no CUDA here to copy to
    made: list[bool] = []
    real = shards_module.DataLoader

    def spy(*args: object, **kwargs: object) -> object:
        made.append(bool(kwargs.get("pin_memory")))
        kwargs["pin_memory"] = False  # no CUDA here to pin for
        return real(*args, **kwargs)

    monkeypatch.setattr(shards_module, "DataLoader", spy)
    x, y = next(iter(bundle.train.iter_from(0)))
    assert made == [pinned] and x.shape[0] == 6 and x.dtype == torch.float32 and len(y) == 6


# ---- what a crafted shard may cost: members, samples, decompressed bytes, the shuffle buffer, index.json ----


def _compressed_tar(path: Path, members: list[tuple[str, bytes]], compression: str = "gz") -> Path:
    with tarfile.open(path, f"w:{compression}") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_a_member_or_a_sample_over_the_member_cap_is_a_bad_image_naming_shard_member_and_flag(tmp_path: Path) -> None:
    big = random.Random(1).randbytes(3 << 20)  # 3 MiB, incompressible
    members = [("000.png", _png((1, 2, 3))), ("000.cls", b"0"), ("001.png", big), ("001.cls", b"0"),
               ("002.png", big[: 600 << 10]), ("002.jpg", big[: 600 << 10]), ("002.cls", b"0"),
               ("003.png", _png((4, 5, 6))), ("003.cls", b"0")]
    shard = _compressed_tar(tmp_path / "big.tar.gz", members)
    shards = ShardSet([str(shard)], "train", ["a"], 4, [4])
    transform = eval_transform([0.5] * 3, [0.25] * 3)
    limits = ShardLimits(member_bytes=1 << 20)
    with pytest.raises(BadImageError, match=r"^bad image .*big\.tar\.gz:001\.png: member of 3145728 bytes exceeds "
                                            r"the limit of 1048576 bytes \(raise it with --max-member-mb\)$") as err:
        list(eval_loader(shards, 8, transform=transform, limits=limits))
    assert "\n" not in str(err.value)
    loader = eval_loader(shards, 8, transform=transform, limits=limits, skip_bad_images=True)
    with pytest.warns(UserWarning) as caught:
        labels = [int(y) for _, ys in loader for y in ys]
    assert labels == [0, 0] and loader.dataset.skipped == 2
    messages = [str(w.message) for w in caught]
    assert any(re.search(r"big\.tar\.gz:002\.jpg: the sample's members reach \d+ bytes, over the limit of 1048576 "
                         r"bytes for one sample \(raise it with --max-member-mb\)", m) for m in messages), messages


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_shard_decompressing_past_the_shard_cap_is_refused_before_the_member_is_read(
        tmp_path: Path, compression: str) -> None:
    # 8 MiB of zeros compress to a few kB; the WebDataset-metadata member is skipped, yet was decompressed
    members = [("000.png", _png((1, 2, 3))), ("000.cls", b"0"), ("__bomb__", bytes(8 << 20)),
               ("001.png", _png((4, 5, 6))), ("001.cls", b"0")]
    shard = _compressed_tar(tmp_path / f"bomb.tar.{compression}", members, compression)
    assert shard.stat().st_size < 64 << 10
    limits = ShardLimits(shard_bytes=4 << 20)
    pattern = (rf"^shard .*bomb\.tar\.{compression}: member __bomb__ ends 8,39\d,\d{{3}} bytes into the decompressed tar, "
               r"over the limit of 4,194,304 bytes per shard; the shard is damaged or crafted, or raise the limit "
               r"with --max-shard-gb$")
    shards = ShardSet([str(shard)], "train", ["a"], 2, [2])
    transform = eval_transform([0.5] * 3, [0.25] * 3)
    with pytest.raises(UserError, match=pattern):
        list(eval_loader(shards, 8, transform=transform, limits=limits, skip_bad_images=True))
    with pytest.raises(UserError, match=pattern):
        open_shards(str(shard), limits)  # no index.json: the counting scan is capped too
    with pytest.raises(UserError, match=pattern):
        list(ShardBatches(shards, 2, pad=0, flip=False, limits=limits))
    assert [int(y) for _, ys in eval_loader(shards, 8, transform=transform) for y in ys] == [0, 0]  # default: 4 GiB


def test_the_shuffle_buffer_holds_at_most_its_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import resnets.data.shards as shards_module

    rng = random.Random(2)
    small = [(f"{i:03d}.png", rng.randbytes(100)) for i in range(20)]
    large = [(f"{i:03d}.png", rng.randbytes(10_000)) for i in range(20, 60)]  # after the small ones
    members = [m for name, data in small + large for m in ((name, data), (name[:3] + ".cls", b"0"))]
    shard = _compressed_tar(tmp_path / "mixed.tar.gz", members)
    real = shards_module._samples
    read: list[int] = []

    def counting(urls: object, limits: object = None) -> object:
        for sample in real(urls, limits):  # type: ignore[arg-type]
            read.append(shards_module._sample_bytes(sample))
            yield sample

    monkeypatch.setattr(shards_module, "_samples", counting)

    def peak_held(limits: ShardLimits | None) -> int:
        read.clear()
        stream = shards_module.stream_samples([str(shard)], seed=3, limits=limits)
        peak, given, keys = 0, 0, []
        for _ in range(60):
            sample = next(stream)
            keys.append(sample["__key__"])
            given += shards_module._sample_bytes(sample)
            peak = max(peak, sum(read) - given)  # read from the shard, not yet handed on: in the buffer
        assert sorted(keys) == [f"{i:03d}" for i in range(60)]  # every sample once per pass
        return peak

    assert peak_held(None) > 300_000  # the default 256 MiB holds the whole shard (512 samples)
    assert peak_held(ShardLimits(buffer_bytes=30_000)) <= 30_000 + 10_011  # the cap and one sample


def test_index_json_reads_are_capped(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_shards(folder, out, max_count=10, log=lambda _: None)
    index = json.loads((out / "index.json").read_text())
    index["padding"] = "x" * (17 << 20)  # 17 MiB, over the 16 MiB cap
    (out / "index.json").write_text(json.dumps(index))
    for spec in (str(out), str(out / "train-{000000..000002}.tar")):
        with pytest.raises(UserError, match=r"index\.json is larger than 16,777,216 bytes, the limit for a shard "
                                            r"index .*write the shards again$"):
            open_shards(spec)
    (out / "index.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match=r"index\.json is not valid JSON: ") as err:
        open_shards(str(out))
    assert "\n" not in str(err.value)


def test_train_flags_set_the_shard_limits(folder: Path, tmp_path: Path) -> None:
    from resnets.cli import build_parser
    from resnets.data.sources import TrainDataSpec, open_train
    from resnets.train import resolve_config

    args = build_parser().parse_args(["train", "--max-member-mb", "2", "--shuffle-buffer-mb", "8",
                                      "--max-shard-gb", "1"])
    assert (args.max_member_mb, args.shuffle_buffer_mb, args.max_shard_gb) == (2, 8, 1)
    out = tmp_path / "shards"
    write_shards(folder, out, max_count=4, log=lambda _: None)
    cfg = resolve_config({"data": str(out), "batch_size": 6, "epochs": 1, "max_member_mb": 2, "shuffle_buffer_mb": 8,
                          "max_shard_gb": 1})
    bundle = open_train(TrainDataSpec.of(cfg), torch.device("cpu"))
    want = ShardLimits(member_bytes=2 << 20, buffer_bytes=8 << 20, shard_bytes=1 << 30)
    assert bundle.train.limits == want and bundle.val.loader.dataset.limits == want
    assert ShardLimits.of(resolve_config({})) == ShardLimits()  # the documented defaults
    with pytest.raises(UserError, match=r"^--max-member-mb must be a whole number of at least 1, not 0$"):
        ShardLimits.of(TrainDataSpec(max_member_mb=0))
