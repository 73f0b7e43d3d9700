"""Issue 14, sections 5-6: no option silently ignored, quiet and informative output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from resnets.cli import main
from resnets.weights import load_model

TINY = ["--data", "sample", "--train-images", "64", "--test-images", "32", "--epochs", "1", "--batch-size", "32",
        "--no-progress", "--device", "cpu", "--precision", "fp32"]


def train_cli(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


def test_shortcut_b_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_cli(tmp_path / "run", "--shortcut", "B") == 0
    model = load_model(tmp_path / "run" / "final.safetensors")  # inference rebuilds it from the metadata
    assert model.spec["shortcut"] == "B"
    assert isinstance(model.layer2[0].downsample[0], nn.Conv2d)  # a 1x1 projection, not zero padding
    assert main(["train", *TINY, "--model", "resnet18", "--shortcut", "B", "--out", str(tmp_path / "r18")]) == 2
    assert "--shortcut is for CIFAR nets" in capsys.readouterr().err


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run: 1 epoch of 2 steps."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert train_cli(out, "--log-every", "1") == 0
    return out


def test_resume_refuses_a_changed_model(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (finished / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(finished), "--model", "resnet56"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its model is 'resnet20', not 'resnet56': drop --model" in err
    assert main(["train", "--resume", str(finished), "--set", "lr=0.5"]) == 2  # any setting that cannot change
    assert "its lr is" in capsys.readouterr().err
    assert main(["train", "--resume", str(finished), "--model", "resnet20", "--no-progress"]) == 0  # unchanged: fine
    assert (finished / "last.pt").read_bytes() == before  # finished: nothing to do, nothing rewritten


def test_resume_with_more_epochs_says_what_it_does(finished: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = tmp_path / "longer"
    shutil.copytree(finished, run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "length changed from 2 to 4 steps (run finished): the onecycle LR schedule is recomputed over 4 " \
           "steps, so the LR at step 2 is" in out and "final.safetensors will be replaced" in out
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_json_prints_only_json_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_cli(tmp_path / "run", "--json") == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # the whole of stdout parses
    assert report["run_dir"] == str(tmp_path / "run")
    assert "training resnet20" in captured.err and "epoch 1:" in captured.err


def test_best_accuracy_names_the_test_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_cli(tmp_path / "run") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("best test accuracy ") and "chosen on the test split, so optimistic" in last


def test_head_size_message_names_only_real_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from resnets import UserError, create_model, load_weights

    weights = tmp_path / "cifar100.pth"
    torch.save(create_model("resnet20", num_classes=100).state_dict(), weights)
    with pytest.raises(UserError, match="build the model with num_classes=100, or call load_weights") as info:
        load_weights(create_model("resnet20"), weights)
    assert "--reinit-head" not in str(info.value)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    # a foreign file named with --model: the model is built with the weights' 100 classes
    assert main(["predict", "--weights", str(weights), "--model", "resnet20", "--topk", "1", str(image)]) == 0
    assert "class " in capsys.readouterr().out


def test_eval_cifar10_message_names_a_real_download(finished: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETS_CACHE_DIR", str(tmp_path / "empty-cache"))
    capsys.readouterr()
    assert main(["eval", "--weights", str(finished / "final.safetensors"), "--data", "cifar10",
                 "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert "fetch it once with: resnets train --data cifar10 --download" in err and "(--download)" not in err


def image_folder(root: Path, splits: tuple[str, ...], side: int, per_class: int = 6) -> Path:
    from PIL import Image

    for split in splits:
        for c, colour in enumerate(((200, 20, 20), (20, 20, 200))):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (side, side), (colour[0], i * 20, colour[2])).save(root / split / f"c{c}" / f"{i}.png")
    return root


STREAMED = ["--model", "resnet18", "--image-size", "32", "--batch-size", "2", "--epochs", "1", "--workers", "0",
            "--no-progress", "--device", "cpu", "--precision", "fp32"]


def test_streamed_folder_takes_val_split_subsets_and_flip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_folder(tmp_path / "big", ("train",), side=80)  # train/ only: the held-out images are the test
    assert main(["train", *STREAMED, "--data", str(data), "--val-split", "4", "--train-images", "6",
                 "--test-images", "3", "--set", "flip=false", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"{data} (streamed, 0 loader workers): 6 train / 3 validation images, 2 classes" in out
    assert "3 steps of 2" in out
    import torch

    from resnets.data.sources import TrainDataSpec, open_train
    from resnets.train import resolve_config

    cfg = resolve_config({"model": "resnet18", "data": str(data), "val_split": 4, "flip": False, "workers": 0,
                          "epochs": 1})
    bundle = open_train(TrainDataSpec.of(cfg), torch.device("cpu"))
    dataset = bundle.train.loader.dataset
    assert dataset.train is True and dataset.flip is False  # random-resized crops, never flipped
    held_out = {p for p, _ in bundle.val.loader.dataset.samples}
    assert len(held_out) == 4 and not held_out & {p for p, _ in bundle.train.loader.dataset.samples}


def test_streamed_folder_refuses_pad_and_download(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_folder(tmp_path / "big", ("train", "val"), side=80, per_class=2)
    assert main(["train", *STREAMED, "--data", str(data), "--set", "pad=2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pad (pad-and-crop) is for small images held in memory" in err
    assert main(["train", *TINY, "--download", "--out", str(tmp_path / "b")]) == 2
    assert "--download fetches cifar10 or cifar100; sample is not one of them" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_val_split_on_a_folder_with_only_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_folder(tmp_path / "small", ("train",), side=32, per_class=20)
    assert main(["train", "--data", str(data), "--val-split", "8", "--epochs", "1", "--batch-size", "16",
                 "--no-progress", "--device", "cpu", "--precision", "fp32", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "32 train / 8 validation images, 2 classes" in out and "best validation accuracy" in out
    assert "optimistic" not in out
    assert main(["train", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "no")]) == 2
    assert "add one, or hold out training images with --val-split N" in capsys.readouterr().err


def test_shards_refuse_what_they_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from resnets.data.shards import write_shards

    shards = tmp_path / "shards"
    write_shards(image_folder(tmp_path / "small", ("train", "val"), side=32, per_class=4), shards,
                 log=lambda _: None)
    for flag, value in (("--val-split", "2"), ("--train-images", "4"), ("--test-images", "2")):
        assert main(["train", "--data", str(shards), "--epochs", "1", flag, value, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{flag} does not apply to shards" in err
    assert main(["train", "--data", str(shards), "--epochs", "1", "--batch-size", "4", "--no-progress",
                 "--device", "cpu", "--out", str(tmp_path / "ok")]) == 0
    assert f"{shards} (streamed shards): 8 train / 8 val images" in capsys.readouterr().out


def test_progress_off_a_terminal_is_plain_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for a in TINY if a != "--no-progress"]  # progress on, but stderr is not a terminal here
    assert main(["train", *args, "--log-every", "1", "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
    lines = [ln for ln in captured.out.splitlines() if " step " in ln]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/1 step 1/2", "epoch 1/1 step 2/2"]
    assert "img/s lr " in lines[0]


def test_workers_default_to_the_cores_available() -> None:
    import os

    from resnets.train import TrainConfig

    assert TrainConfig().workers == max(1, min(4, len(os.sched_getaffinity(0))))


def test_one_pixel_wide_image_gives_no_numpy_warning(tmp_path: Path) -> None:
    import warnings

    from PIL import Image

    from resnets.data.images import read_rgb

    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "dot.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_rgb(tmp_path / "dot.png")
    assert image.tolist() == [[[1]], [[2]], [[3]]]


def test_lr_plot_draws_the_schedule_from_step_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnets.train import plots, resolve_config
    from resnets.train.optim import LRSchedule

    drawn: dict[str, object] = {}
    real = plots.plot_metrics

    def spy(records: list, out_dir: Path, **kwargs: object) -> list[Path]:
        drawn.update(kwargs)
        return real(records, out_dir, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plots, "plot_metrics", spy)
    # 6 steps, fewer than --log-every (50); one-cycle warm-up over half of them
    assert train_cli(tmp_path / "run", "--epochs", "3", "--set", "warmup=0.5") == 0
    cfg = resolve_config({"data": "sample", "epochs": 3, "batch_size": 32, "warmup": 0.5})
    schedule = LRSchedule.from_config(cfg, total_steps=6, steps_per_epoch=2)
    assert drawn["lr_curve"] == [(s, pytest.approx(schedule(s))) for s in range(6)]
    assert drawn["lr_curve"][0][1] < max(lr for _, lr in drawn["lr_curve"])  # the warm-up shows
    assert (tmp_path / "run" / "lr.png").stat().st_size > 0
