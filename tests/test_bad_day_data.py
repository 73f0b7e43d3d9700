"""Issue 14, sections 3-4: evaluation takes the data people have; folders as people have them.

Every case runs the real command (``resnets.cli.main``) on small image folders written in ``tmp_path``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from resnets.cli import main
from resnets.data.sources import is_streaming_folder
from resnets.models import create_model
from resnets.weights import save_weights

# the folders the scripted bad day builds (scripts/bad_day.py), so both exercise the same fixtures
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bad_day import CLASSES, corrupt  # noqa: E402
from bad_day import image_folder as make_folder  # noqa: E402


def weights_file(path: Path, classes: tuple[str, ...] = CLASSES, **extra: object) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=len(classes))
    save_weights(model, path, classes=list(classes), normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
                 extra={"trained": extra} if extra else None)
    return path


def cache_sources(cache: Path) -> list[str]:
    """The ``source`` folder of every image-folder cache entry in ``cache``."""
    from resnets.data.cache import load_entry

    out = []
    for f in sorted((cache / "folders").glob("*.safetensors")) if (cache / "folders").is_dir() else []:
        entry = load_entry(f)
        assert entry is not None
        out.append(entry[1]["source"])
    return out


def run_eval(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "eval-out"
    rc = main(["eval", "--device", "cpu", "--precision", "fp32", "--cache-dir", str(tmp_path / "cache"),
               "--out", str(out), "--json", *args])
    reports = sorted(out.glob("eval-*.json"))
    return rc, (json.loads(reports[-1].read_text()) if rc == 0 else {})


# ---- 3. evaluation takes what people have ------------------------------------------------------------------


def test_eval_reads_only_the_test_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", splits={"train": 4, "test": 2})
    corrupt(root / "train" / "ant" / "000.png")  # a bad image in a split eval never reads
    w = weights_file(tmp_path / "w.safetensors")
    for data in (root, root / "test"):  # the data set, and its test/ folder given directly
        rc, report = run_eval(tmp_path, "--weights", str(w), "--data", str(data))
        assert rc == 0 and report["images"] == 6 and report["classes"] == list(CLASSES)
    test_only = tmp_path / "test-only"
    (root / "test").rename(test_only)  # a test set alone: class folders, no train/
    rc, report = run_eval(tmp_path, "--weights", str(w), "--data", str(test_only))
    assert rc == 0 and report["images"] == 6
    sources = cache_sources(tmp_path / "cache")
    assert sources and not any(Path(s).name == "train" for s in sources)


def test_eval_max_images_refuses_zero_and_negatives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "data", splits={"test": 2})
    w = weights_file(tmp_path / "w.safetensors")
    for bad in ("0", "-3"):
        rc, _ = run_eval(tmp_path, "--weights", str(w), "--data", str(root), "--max-images", bad)
        assert rc == 2
        assert f"--max-images must be at least 1, got {bad}" in capsys.readouterr().err
    rc, report = run_eval(tmp_path, "--weights", str(w), "--data", str(root), "--max-images", "4")
    assert rc == 0 and report["images"] == 4


def test_eval_on_shards(tmp_path: Path) -> None:
    from resnets.data.shards import write_shards

    root = make_folder(tmp_path / "data", splits={"train": 2, "test": 3})
    write_shards(root, tmp_path / "shards", log=lambda _: None)
    w = weights_file(tmp_path / "w.safetensors")
    rc, report = run_eval(tmp_path, "--weights", str(w), "--data", str(tmp_path / "shards"), "--workers", "0")
    assert rc == 0 and report["images"] == 9


def test_eval_reports_a_class_missing_from_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "data", splits={"test": 2}, skip=(("test", "bee"),))
    w = weights_file(tmp_path / "w.safetensors")
    rc = main(["eval", "--weights", str(w), "--data", str(root), "--device", "cpu", "--precision", "fp32",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "(4 images)" in out and "classes with no images in" in out and out.rstrip().count("bee") >= 2


def test_foreign_pth_with_model_and_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    pth = tmp_path / "preact.pth"
    torch.save(create_model("resnet20", variant="preact").state_dict(), pth)  # 10 classes, no metadata
    classes = tuple(f"c{i}" for i in range(10))
    root = make_folder(tmp_path / "data", splits={"test": 1}, classes=classes)
    rc, _ = run_eval(tmp_path, "--weights", str(pth), "--data", str(root))
    assert rc == 2 and "--model NAME" in capsys.readouterr().err
    rc, _ = run_eval(tmp_path, "--weights", str(pth), "--data", str(root), "--model", "resnet20")
    assert rc == 2  # the v1 layout does not fit preact weights
    capsys.readouterr()
    rc, report = run_eval(tmp_path, "--weights", str(pth), "--data", str(root), "--model", "resnet20",
                          "--variant", "preact")
    assert rc == 0 and report["images"] == 10
    image = str(root / "test" / "c3" / "000.png")
    for cmd in (["predict", image], ["explain", image, "--out", str(tmp_path / "cam.png")],
                ["embed", image, "--out", str(tmp_path / "index.safetensors")]):
        assert main([cmd[0], "--weights", str(pth), "--model", "resnet20", "--variant", "preact", *cmd[1:]]) == 0


def test_weights_run_folder_and_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    weights_file(run / "best.safetensors")
    torch.save({"model": {}, "step": 1}, run / "last.pt")
    image = make_folder(tmp_path / "data", splits={"test": 1}) / "test" / "bee" / "000.png"
    assert main(["predict", "--weights", str(run / "last.pt"), str(image)]) == 2
    err = capsys.readouterr().err
    assert "training checkpoint" in err and f"--weights {run / 'best.safetensors'}" in err
    assert main(["predict", "--weights", str(run), str(image), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == str(image)
    rc, report = run_eval(tmp_path, "--weights", str(run), "--data", str(tmp_path / "data"))
    assert rc == 0 and report["weights"] == str((run / "best.safetensors").resolve())


# ---- 4. folders as people have them ------------------------------------------------------------------------


def train_args(tmp_path: Path, data: Path, *more: str) -> list[str]:
    return ["train", "--data", str(data), "--iterations", "1", "--batch-size", "6", "--device", "cpu",
            "--precision", "fp32", "--no-progress", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "run"), "--workers", "0", *more]


def test_mixed_sizes_train_with_image_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "data", splits={"train": 3, "test": 2}, sizes=((32, 32), (40, 36), (30, 44)))
    assert main(train_args(tmp_path, root)) == 2
    assert "pass --image-size N" in capsys.readouterr().err
    assert main(train_args(tmp_path, root, "--image-size", "24")) == 0
    rc, report = run_eval(tmp_path, "--weights", str(tmp_path / "run"), "--data", str(root))
    assert rc == 0 and report["images"] == 6  # evaluated at the trained --image-size, from the weights


def test_fit_square_is_shorter_side_then_centre_crop(tmp_path: Path) -> None:
    from resnets.data import load_image_folder

    root = make_folder(tmp_path / "data", splits={"train": 2}, sizes=((40, 60), (24, 24)))
    data, report = load_image_folder(root / "train", image_size=24, cache_dir=tmp_path / "cache")
    assert data.image_size == (24, 24) and report.resized == 3  # the 40x60 ones; 24x24 kept
    from torchvision.transforms.v2 import functional as TF

    from resnets.data import read_rgb

    first = read_rgb(root / "train" / "ant" / "000.png")
    expected = TF.center_crop(TF.resize(first, 24, antialias=True), [24, 24])
    assert torch.equal(data.images[0], expected)


def test_corrupt_first_image_trains_and_is_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "data", splits={"train": 3, "test": 1}, skip=(("test", "cat"),))
    bad = corrupt(root / "train" / "ant" / "000.png")
    assert main(train_args(tmp_path, root)) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(train_args(tmp_path, root, "--skip-bad-images")) == 0
    log = capsys.readouterr().out
    assert "skipped 1 bad image(s)" in log and "test split has no images of cat" in log
    listed = (tmp_path / "run" / "bad_images.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == [str(bad)]


def test_stream_or_memory_is_decided_from_a_sample(tmp_path: Path) -> None:
    big = make_folder(tmp_path / "big", splits={"train": 3}, sizes=((96, 128), (80, 100)))
    corrupt(big / "train" / "ant" / "000.png")
    assert is_streaming_folder(big)  # the corrupt first file is skipped, not fatal
    small = make_folder(tmp_path / "small", splits={"train": 3})
    corrupt(small / "train" / "ant" / "000.png")
    assert not is_streaming_folder(small)
    assert is_streaming_folder(big / "train")  # a folder of class folders alone
