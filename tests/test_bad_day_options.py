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
