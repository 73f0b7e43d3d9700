"""Issue 24 ("A new user's second day"), points 2 and 5, through the ``resnets`` command: no --out is one of the
command's inputs or has the wrong extension (one line, every input byte-identical), a created folder is said;
search takes a run folder; a run shorter than its warm-up, a batch larger than the data and --freeze say so;
ResNet-D weights loaded as v1.5 suggest --variant d; explain names conv4_x; bench infer --images is checked."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnets.cli import main
from resnets.errors import UserError

CLASSES = ("ant", "bee", "cat")


def make_folder(root: Path, per_class: int, *, side: int = 32) -> Path:
    """``root/<class>/NNN.png``: ``per_class`` images of each of CLASSES."""
    rng = np.random.default_rng(0)
    for ci, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((side, side, 3)) * 80 + ci * 60).astype(np.uint8)).save(
                root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A run folder (best.safetensors), a folder of images, one photo as .jpg and as .png."""
    import torch

    from resnets.models import create_model
    from resnets.weights import save_weights

    torch.manual_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    save_weights(create_model("resnet20", num_classes=3), run / "best.safetensors", classes=list(CLASSES),
                 normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    photos = make_folder(tmp_path / "photos", 2)
    Image.open(photos / "cat" / "000.png").save(tmp_path / "cat.jpg")
    shutil.copy(photos / "cat" / "000.png", tmp_path / "cat.png")
    return {"root": tmp_path, "run": run, "weights": run / "best.safetensors", "photos": photos,
            "jpg": tmp_path / "cat.jpg", "png": tmp_path / "cat.png"}


def digests(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a refused command (exit 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"resnets {argv[0]}: error: "), err
    return err[0]


def test_no_out_is_an_input_or_of_the_wrong_kind(files: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    w, jpg, png, photos = (str(files[k]) for k in ("weights", "jpg", "png", "photos"))
    before = digests(files["root"])
    assert "is the image" in refused(["explain", "--weights", w, jpg, "--out", jpg], capsys)
    assert "is the image" in refused(["explain", "--weights", w, png, "--out", png], capsys)
    assert "is the --weights file" in refused(["explain", "--weights", str(files["run"]), png, "--out", w], capsys)
    assert "is the --weights file" in refused(["embed", "--weights", w, photos, "--out", w], capsys)
    assert "is inside the input" in refused(["embed", "--weights", w, photos, "--out", f"{photos}/i.npz"], capsys)
    assert "must end in .png" in refused(["explain", "--weights", w, png, "--out", str(files["root"] / "x.jpg")],
                                         capsys)
    assert ".safetensors or .npz" in refused(["embed", "--weights", w, photos, "--out",
                                              str(files["root"] / "i.txt")], capsys)
    assert "must end in .pt" in refused(["export", "--weights", w, "--format", "torchscript", "--out",
                                         str(files["root"] / "m.onnx")], capsys)
    assert "is the --weights file" in refused(["export", "--weights", w, "--format", "torchscript", "--out",
                                               w], capsys)
    assert "is inside DIR" in refused(["shard", photos, "--out", f"{photos}/shards"], capsys)
    assert "is inside the --data folder" in refused(["eval", "--weights", w, "--data", photos, "--out",
                                                     f"{photos}/cat"], capsys)
    assert "is the --data folder" in refused(["train", "--data", photos, "--out", photos], capsys)
    assert "holds the --init weights" in refused(["train", "--data", photos, "--init", w, "--out",
                                                  str(files["run"])], capsys)
    assert digests(files["root"]) == before  # nothing written, nothing replaced


def test_a_created_folder_is_said(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = files["root"] / "new" / "deeper" / "cam.png"
    assert main(["explain", "--weights", str(files["run"]), str(files["png"]), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert out.is_file() and f"created folder {out.parent}" in captured.err.splitlines()
    assert "Grad-CAM on conv4_x" in captured.out  # the paper's stage name, not layer3
    assert main(["explain", "--weights", str(files["run"]), str(files["png"]), "--out", str(out)]) == 0
    assert "created folder" not in capsys.readouterr().err  # the folder was there


def test_search_takes_a_run_folder(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    index = files["root"] / "index.safetensors"
    assert main(["embed", "--weights", str(files["weights"]), str(files["photos"]), "--out", str(index),
                 "--no-progress", "--precision", "fp32"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--weights", str(files["run"]), str(files["png"]),
                 "--topk", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("cat/000.png")  # itself, the nearest
    message = refused(["search", "--index", str(index), "--weights", str(files["root"] / "nope"),
                       str(files["png"])], capsys)
    assert "weights file" in message and "not found" in message


def test_short_fine_tune_warm_up_freeze_and_batch_are_said(files: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(files["root"] / "tiny" / "train", 4).parent
    make_folder(data / "test", 1)
    common = ["--data", str(data), "--init", str(files["weights"]), "--device", "cpu", "--precision", "fp32",
              "--workers", "0", "--no-progress", "--set", "plots=false"]
    # the finetune recipe warms up for 2 epochs; one epoch of 2 steps ends inside it
    assert main(["train", *common, "--epochs", "1", "--batch-size", "6", "--freeze", "conv1,conv2_x",
                 "--out", str(files["root"] / "ft")]) == 0
    out = capsys.readouterr().out
    assert "is no longer than its warm-up (4 steps): it ends at the warm-up's learning rate" in out
    frozen = next(line for line in out.splitlines() if "frozen conv1, conv2_x" in line)
    from resnets.models import create_model
    from resnets.train.finetune import stage_modules

    model = create_model("resnet20", num_classes=3)
    kept = sum(p.numel() for name in ("conv1", "conv2_x") for m in stage_modules(model)[name] for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert f"{total - kept:,} of {total:,} parameters train" in frozen
    assert main(["train", *common, "--epochs", "3", "--batch-size", "6", "--out", str(files["root"] / "ft3")]) == 0
    assert "warm-up" not in capsys.readouterr().out  # 6 steps, past the 4 of the warm-up: nothing to say
    message = refused(["train", *common, "--batch-size", "64", "--out", str(files["root"] / "big")], capsys)
    assert "smaller than one batch (64); give a smaller --batch-size" in message and "12 train" in message


def test_resnet_d_weights_as_v1_5_suggest_variant_d(tmp_path: Path, files: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from resnets.models import create_model
    from resnets.weights import load_weights

    d_state = create_model("resnet18", variant="d").state_dict()
    with pytest.raises(UserError, match=r"look like ResNet-D weights .*--variant d"):
        load_weights(create_model("resnet18"), d_state)
    with pytest.raises(UserError) as v1:  # v1 weights into v1.5: another mismatch, no ResNet-D hint
        load_weights(create_model("resnet18"), create_model("resnet34").state_dict())
    assert "--variant d" not in str(v1.value)
    pth = tmp_path / "resnet18d.pth"
    torch.save(d_state, pth)
    assert "--variant d" in refused(["predict", "--weights", str(pth), "--model", "resnet18", str(files["png"])],
                                    capsys)
    assert main(["predict", "--weights", str(pth), "--model", "resnet18", "--variant", "d", str(files["png"])]) == 0


def test_bench_infer_images_has_no_machine_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from resnets.infer.bench import images_root

    assert images_root(None).parts[-1] == "test" and "/work/shared" not in str(images_root(None))
    message = refused(["bench", "infer", "--images", str(tmp_path / "nope"), "--no-onnx"], capsys)
    assert "--images" in message and "is not a folder" in message
