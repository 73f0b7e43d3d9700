"""Issue 14, gaps left by the case-by-case fixes: ``eval --max-images`` decodes only its subset, bad images
skipped while streaming are counted and listed, and a refused run leaves no empty run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnets.cli import main

CLASSES = ("ant", "bee", "cat")


def make_folder(root: Path, splits: dict[str, int], *, side: int = 32, classes: tuple[str, ...] = CLASSES) -> Path:
    """``root/<split>/<class>/NNN.png``, ``splits[split]`` images of ``side`` pixels per class."""
    rng = np.random.default_rng(0)
    for split, count in splits.items():
        for ci, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = (rng.random((side, side, 3)) * 80 + ci * 60).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")
    return root


def weights_file(path: Path, classes: tuple[str, ...] = CLASSES) -> Path:
    import torch

    from resnets.models import create_model
    from resnets.weights import save_weights

    torch.manual_seed(0)
    save_weights(create_model("resnet20", num_classes=len(classes)), path, classes=list(classes),
                 normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    return path


# ---- (a) eval --max-images N decodes N files, not the whole split -----------------------------------------


def test_eval_max_images_decodes_only_its_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import resnets.data.folder as folder
    from resnets.data.cache import load_entry

    decoded: list[int] = []
    real = folder.decode_files

    def counting(files: list, **kwargs: object) -> list:
        decoded.append(len(files))
        return real(files, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(folder, "decode_files", counting)
    root = make_folder(tmp_path / "data", {"test": 4})  # 12 files
    w = weights_file(tmp_path / "w.safetensors")
    cache = tmp_path / "cache"

    def run(*extra: str) -> dict:
        out = tmp_path / "out"
        assert main(["eval", "--weights", str(w), "--data", str(root), "--device", "cpu", "--precision", "fp32",
                     "--cache-dir", str(cache), "--out", str(out), "--json", *extra]) == 0
        return json.loads(sorted(out.glob("eval-*.json"))[-1].read_text())

    report = run("--max-images", "2")
    assert decoded == [2] and report["images"] == 2
    assert report["missing_classes"] == []  # a class the subset misses is not "missing" from the data
    entries = sorted((cache / "folders").glob("*.safetensors"))
    assert len(entries) == 1 and load_entry(entries[0])[0]["images"].shape[0] == 2  # cached: the subset alone
    assert run("--max-images", "2")["images"] == 2 and decoded == [2]  # the same subset: from the cache
    assert run("--max-images", "5")["images"] == 5 and decoded == [2, 5]  # another subset, its own entry
    assert run()["images"] == 12 and decoded == [2, 5, 12]


def test_eval_max_images_subset_is_the_same_files_as_before(tmp_path: Path) -> None:
    """The subset is the first N of the permutation seeded 1234 over the split's sorted files, as
    ``limit_images`` took it over the decoded split (and streamed eval takes it over its samples)."""
    import torch

    from resnets.data import load_image_folder
    from resnets.data.splits import limit_images

    root = make_folder(tmp_path / "data", {"test": 5})
    whole, _ = load_image_folder(root / "test", cache_dir=tmp_path / "c1")
    part, report = load_image_folder(root / "test", cache_dir=tmp_path / "c2", limit=6)
    old = limit_images(whole, 6)
    order = torch.argsort(old.labels * 1000 + torch.arange(6))  # compare as sets of (image, label)
    assert report.num_images == 6 and sorted(map(bytes, part.images.flatten(1).numpy())) == \
        sorted(map(bytes, old.images[order].flatten(1).numpy()))


# ---- (b) --skip-bad-images on streamed folders counts and lists what it skipped -----------------------------


def test_streamed_training_lists_skipped_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "big", {"train": 4, "val": 2}, side=80, classes=("c0", "c1"))
    bad = data / "train" / "c0" / "001.png"
    bad.write_bytes(b"this is not an image")
    bad_val = data / "val" / "c1" / "000.png"
    bad_val.write_bytes(b"")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "resnet18", "--image-size", "32", "--batch-size", "4",
                 "--epochs", "1", "--workers", "0", "--no-progress", "--device", "cpu", "--precision", "fp32",
                 "--skip-bad-images", "--out", str(run)]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 bad image(s) so far; listed in " + str(run / "bad_images.txt") in captured.out
    assert "Warning" not in captured.err
    listed = [line.split("\t") for line in (run / "bad_images.txt").read_text().splitlines()]
    assert sorted(p for p, _ in listed) == sorted([str(bad), str(bad_val)])
    assert all(reason for _, reason in listed)


def test_streamed_eval_reports_skipped_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "big", {"test": 2}, side=80, classes=("c0", "c1"))
    bad = data / "test" / "c1" / "001.png"
    bad.write_bytes(b"GIF89a broken")
    w = weights_file(tmp_path / "w.safetensors", ("c0", "c1"))
    out = tmp_path / "out"
    assert main(["eval", "--weights", str(w), "--data", str(data), "--device", "cpu", "--precision", "fp32",
                 "--workers", "0", "--skip-bad-images", "--out", str(out)]) == 0
    assert "skipped 1 bad image(s), listed in the report" in capsys.readouterr().out
    report = json.loads(next(out.glob("eval-*.json")).read_text())
    assert report["images"] == 3 and [p for p, _ in report["bad_images"]] == [str(bad)]


# ---- (c) a run refused after its checks leaves no empty folder --------------------------------------------


def test_refused_run_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", "sample", "--train-images", "16", "--batch-size", "32", "--epochs", "1",
                 "--no-progress", "--device", "cpu", "--precision", "fp32", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is smaller than one batch (32); give a smaller --batch-size" in err and "16 train" in err
    assert not run.exists()
    data = make_folder(tmp_path / "big", {"train": 2, "val": 1}, side=80, classes=("c0", "c1"))
    # a streamed folder (progressive resizing on it is allowed since issue 25) refused once it is opened
    assert main(["train", "--data", str(data), "--model", "resnet18", "--batch-size", "8",
                 "--epochs", "1", "--workers", "0", "--device", "cpu", "--precision", "fp32", "--out", str(run)]) == 2
    assert "smaller than one batch (8)" in capsys.readouterr().err and not run.exists()


# ---- a refusal answers without importing torchvision (seconds of a bad day's every mistake) ----------------


def test_refusals_do_not_import_torchvision(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from resnets.cli import main; "
            f"codes = [main(['train', '--set', 'lr=abc', '--out', {str(tmp_path / 'r')!r}]), "
            "main(['eval', '--weights', 'nope.safetensors', '--max-images', '0'])]; "
            "print(codes, 'torchvision' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["[2,", "2]", "False"], proc.stdout + proc.stderr
    png = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(png)
    code = ("import sys; from resnets.data.decode import decode_files; "
            f"print(decode_files([{str(png)!r}])[0].shape, 'torchvision' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["torch.Size([3,", "4,", "4])", "False"], proc.stdout + proc.stderr  # PNGs
