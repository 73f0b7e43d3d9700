"""``resnets eval`` and ``resnets.evaluate``: report fields, TTA, confusion matrix, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resnets import UserError, create_model, save_weights
from resnets.cli import main
from resnets.evaluate import evaluate, evaluate_model, ten_crop_views, tta_views

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
NORM = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "best.safetensors"
    save_weights(create_model("resnet20"), path, classes=CLASSES, normalization=NORM)
    return path


def test_report_fields_and_files(weights: Path, tmp_path: Path) -> None:
    report = evaluate(weights, "sample", out_dir=tmp_path, max_images=64, device="cpu")
    assert report["images"] == 64 and 0 <= report["top1"] <= report["top5"] <= 100
    assert report["classes"] == CLASSES and set(report["per_class"]) == set(CLASSES)
    confusion = torch.tensor(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 64
    assert report["top1"] == pytest.approx(100 * confusion.diag().sum().item() / 64)
    saved = json.loads((tmp_path / "eval-sample.json").read_text())
    assert saved["top1"] == report["top1"] and Path(report["confusion_png"]).stat().st_size > 1000
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


@pytest.mark.parametrize("tta, views", [("flip", 2), ("10crop", 10)])
def test_tta(weights: Path, tmp_path: Path, tta: str, views: int) -> None:
    x = torch.randn(2, 3, 32, 32)
    assert len(tta_views(x, tta)) == views and all(v.shape == x.shape for v in tta_views(x, tta))
    report = evaluate(weights, "sample", tta=tta, out_dir=tmp_path, max_images=32, device="cpu")
    assert report["tta"] == tta and report["images"] == 32
    assert (tmp_path / f"eval-sample-{tta}.json").is_file()
    plain = evaluate(weights, "sample", out_dir=tmp_path / "plain", max_images=32, device="cpu")
    assert report["loss"] != pytest.approx(plain["loss"], rel=1e-4)  # the views reached the model


def test_ten_crop_views_are_corners_centre_and_mirrors() -> None:
    x = torch.arange(36.0).view(1, 1, 6, 6)
    views = ten_crop_views(x, 4)
    assert torch.equal(views[0], x[..., :4, :4]) and torch.equal(views[3], x[..., 2:, 2:])
    assert torch.equal(views[4], x[..., 1:5, 1:5]) and torch.equal(views[9], views[4].flip(-1))


def expected_scores(probs: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, object]:
    """Loss (NLL of ``probs``), top-1, top-5 and confusion computed by hand."""
    return {"loss": float(F.nll_loss(probs.log(), y)),
            "top1": 100.0 * float((probs.argmax(1) == y).float().mean()),
            "top5": 100.0 * float((probs.topk(5, 1).indices == y[:, None]).any(1).float().mean()),
            "confusion": torch.bincount(y * num_classes + probs.argmax(1), minlength=num_classes**2).view(
                num_classes, num_classes)}


def test_flip_tta_averages_the_softmax_of_the_image_and_its_mirror() -> None:
    """A model that tells left from right (and top from bottom): flip TTA must average its class
    probabilities on each image and on its left-right mirror, no other view."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 5, 10))
    with torch.no_grad():
        model[1].weight.mul_(8)  # confident outputs: averaging probabilities and logits then differ
    x, y = torch.randn(64, 3, 6, 5), torch.randint(0, 10, (64,))
    batches = [(x[:40], y[:40]), (x[40:], y[40:])]
    with torch.no_grad():
        plain_probs = model(x).softmax(1)
        tta_probs = (plain_probs + model(x.flip(-1)).softmax(1)) / 2
        logit_mean = ((model(x) + model(x.flip(-1))) / 2).softmax(1)
    plain = evaluate_model(model, batches, num_classes=10)
    flipped = evaluate_model(model, batches, num_classes=10, tta="flip")
    for got, probs in ((plain, plain_probs), (flipped, tta_probs)):
        want = expected_scores(probs, y, 10)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5) and got["n"] == 64
        assert got["top1"] == pytest.approx(want["top1"]) and got["top5"] == pytest.approx(want["top5"])
        assert torch.equal(got["confusion"], want["confusion"])
    assert not torch.equal(flipped["confusion"], plain["confusion"])  # the mirror changed some predictions
    assert flipped["loss"] != pytest.approx(plain["loss"], rel=1e-3)
    assert flipped["loss"] != pytest.approx(expected_scores(logit_mean, y, 10)["loss"], rel=1e-3)


def test_cli_eval(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--weights", str(weights), "--data", "sample", "--max-images", "32",
                 "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "airplane" in out and "confusion matrix" in out


def test_user_errors(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError):
        evaluate(tmp_path / "missing.safetensors", "sample")
    other = tmp_path / "five.safetensors"
    save_weights(create_model("resnet20", num_classes=5), other)
    with pytest.raises(UserError, match="classify 5 classes but sample has 10"):
        evaluate(other, "sample", max_images=8)
    assert main(["eval", "--weights", str(weights), "--data", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
