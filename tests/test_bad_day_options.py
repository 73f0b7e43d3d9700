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
