"""Progress on stderr (``resnets.progress``): a tqdm bar on a terminal, a few plain lines off one, nothing for
tiny jobs or with ``--no-progress``; stdout keeps only the results. pytest's capture is not a terminal."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from resnets import create_model, progress, save_weights
from resnets.cli import main
from resnets.data import extract_sample

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PLAIN = re.compile(r"^[a-z]+( \w+)?: \d+/\d+ (images|batches) \(\d+%\), \d+ s$")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "best.safetensors"
    save_weights(create_model("resnet20"), path, classes=CLASSES,
                 normalization={"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]})
    return path


@pytest.fixture(scope="module")
def images() -> list[str]:
    """Twenty sample test images, two from each class."""
    root = extract_sample() / "test"
    return [str(p) for c in CLASSES for p in sorted((root / c).iterdir())[:2]]


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Show progress from the first item, however fast the job (tiny jobs show nothing otherwise)."""
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(progress, "MIN_GAP_S", 0.0)


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch, eager: None) -> None:
    """Make stderr count as a terminal."""
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)


def plain_lines(err: str, what: str) -> list[str]:
    """The progress lines of ``what`` in ``err``, each checked to be a plain line; at most one per tenth."""
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(what + ":")]
    assert all(PLAIN.match(ln) for ln in lines), lines
    assert 1 <= len(lines) <= 10
    return lines


def test_predict_json_off_a_terminal(weights: Path, images: list[str], eager: None,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--weights", str(weights), *images, "--batch-size", "2", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert [p["path"] for p in json.loads(out)] == images  # stdout: the JSON alone
    lines = plain_lines(err, "predicting")
    assert lines[-1].startswith("predicting: 20/20 images (100%)")


def test_tiny_jobs_and_no_progress_show_nothing(weights: Path, images: list[str], terminal: None,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["predict", "--weights", str(weights), "--format", "csv"]
    assert main([*base, images[0]]) == 0  # one image
    assert main([*base, *images, "--no-progress"]) == 0
    monkeypatch.setattr(progress, "DELAY_S", 60.0)  # a job shorter than the delay
    assert main([*base, *images]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.count("\n") == 3 + 5 * (1 + 20 + 20)  # three headers, five rows an image


def test_eval_decoding_and_batches_off_a_terminal(weights: Path, tmp_path: Path, eager: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--weights", str(weights), "--data", "sample", "--max-images", "64", "--batch-size", "16",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path), "--device", "cpu", "--precision", "fp32",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["images"] == 64
    assert re.match(r"decoding test: (\d+)/\1 images \(100%\)", plain_lines(err, "decoding test")[-1])
    assert plain_lines(err, "evaluating")[-1].startswith("evaluating: 4/4 batches (100%)")


def test_shard_off_a_terminal(tmp_path: Path, images: list[str], eager: None,
                              capsys: pytest.CaptureFixture[str]) -> None:
    for path in images:
        (tmp_path / "in" / Path(path).parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "in" / Path(path).parent.name)
    assert main(["shard", str(tmp_path / "in"), "--out", str(tmp_path / "shards")]) == 0
    out, err = capsys.readouterr()
    assert plain_lines(err, "sharding train")[-1].startswith("sharding train: 20/20 images (100%)")
    assert "train: 20 images in 1 shard(s)" in out and "sharding" not in out


def test_a_terminal_shows_a_tqdm_bar(weights: Path, images: list[str], tmp_path: Path, terminal: None,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert main(["predict", "--weights", str(weights), *images, str(tmp_path / "broken.jpg"), "--batch-size", "4",
                 "--format", "json"]) == 1
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 20
    assert "\r" in err and "predicting:" in err and "/21 " in err and "|" in err  # tqdm's bar, redrawn in place
    assert any(ln.startswith("resnets predict: skipped ") for ln in err.split("\r"))  # the bar steps aside
    assert main(["embed", "--weights", str(weights), *images, "--out", str(tmp_path / "index.safetensors")]) == 0
    out, err = capsys.readouterr()
    assert "\r" in err and "embedding:" in err and "wrote 20 x 64 embeddings" in out


def test_training_takes_the_same_decision(tmp_path: Path, terminal: None,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", "sample", "--train-images", "64", "--test-images", "32", "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu", "--precision", "fp32", "--workers", "0", "--set", "plots=false",
                 "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "\r" in captured.err and "2/2" in captured.err  # the loop's step bar
    assert " step " not in captured.out  # and no plain step lines


def test_plain_lines_are_few(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    with progress.Progress(1000, "counting") as bar:  # fast: only the last line is far enough from the start
        for _ in range(1000):
            bar.update()
    assert capsys.readouterr().err.splitlines() == ["counting: 1000/1000 images (100%), 0 s"]
    monkeypatch.setattr(progress, "MIN_GAP_S", 0.0)
    with progress.Progress(1000, "counting") as bar:  # one line a tenth, at most
        for _ in range(1000):
            bar.update()
    assert [ln.split(" (")[0] for ln in capsys.readouterr().err.splitlines()] == \
        [f"counting: {n}/1000 images" for n in range(100, 1001, 100)]
