"""The README's main command, end to end: summary, training on the shipped sample, evaluation, prediction."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnets.cli import main


def test_demo_runs_the_whole_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "56x56x256" in out and "Total params: 25,557,032" in out  # the ResNet-50 summary
    assert "top-1" in out and (tmp_path / "demo" / "best.safetensors").is_file()
    predicted = [line for line in out.splitlines() if line.endswith("%") and ".jpg" in line]
    assert len(predicted) == 4  # one line of top-3 labels per sample image
