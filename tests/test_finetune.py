"""Fine-tuning: start from trained weights (resnets or torchvision-format), replace the head, follow the
weights' normalisation, freeze stages (BN kept in eval), train the head first, discriminative LRs, the linear
probe; everything resumes bit-identically; bad input is one line."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from resnets import UserError, create_model
from resnets.cli import main
from resnets.data import extract_sample
from resnets.data.images import read_rgb
from resnets.infer import load_for_inference
from resnets.train import resolve_config, train
from resnets.weights import load_model, read_metadata
from test_train import _assert_same_tensors

BASE = dict(batch_size=64, progress=False, log_every=2, seed=3, test_images=96)
TARGET_CLASSES = ["cat", "dog", "frog"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet20 trained one epoch on 256 images of the 10-class sample: the 'pretrained' weights."""
    out = tmp_path_factory.mktemp("ft") / "source"
    result = train(resolve_config({**BASE, "model": "resnet20", "data": "sample", "train_images": 256,
                                   "epochs": 1, "out": str(out)}), log=lambda _: None)
    return result.final_weights


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class image folder (cat, dog, frog of the sample), a new task for the source weights."""
    root = tmp_path_factory.mktemp("target")
    sample = extract_sample()
    for split in ("train", "test"):
        for name in TARGET_CLASSES:
            (root / split).mkdir(exist_ok=True)
            os.symlink(sample / split / name, root / split / name)
    return root


def ft(target: Path, source: Path, out: Path, **changes: object):
    return resolve_config({**BASE, "data": str(target), "init": str(source), "epochs": 2, "train_images": 192,
                           "out": str(out), **changes})


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_init_takes_the_weights_architecture_recipe_and_normalisation(
        source: Path, target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ft(target, source, tmp_path / "a")
    assert (cfg.model, cfg.variant, cfg.recipe) == ("resnet20", "v1", "finetune")
    assert (cfg.schedule, cfg.decay_norm_and_bias, cfg.ema) == ("cosine", False, False)
    lines: list[str] = []
    result = train(cfg, log=lines.append)
    said = next(line for line in lines if line.startswith("starting from"))
    assert "10-class head (airplane, automobile, bird, cat, deer, ...) is replaced by a new 3-class one " \
           "(cat, dog, frog)" in said
    shipped = read_metadata(result.final_weights)
    assert shipped["classes"] == TARGET_CLASSES
    assert shipped["normalization"] == read_metadata(source)["normalization"]  # the weights', not the data's
    model, start = load_model(result.final_weights), load_model(source)
    assert model.fc.out_features == 3 and not torch.equal(model.layer3[0].conv1.weight, start.layer3[0].conv1.weight)
    # the fine-tuned weights are ordinary weights: eval and predict name the new classes
    image = next((target / "test" / "dog").iterdir())
    assert main(["predict", "--weights", str(result.final_weights), str(image), "--format", "json",
                 "--no-progress"]) == 0
    assert {label["label"] for label in json.loads(capsys.readouterr().out)[0]["top"]} == set(TARGET_CLASSES)
    assert main(["eval", "--weights", str(result.final_weights), "--data", str(target), "--out",
                 str(tmp_path / "eval"), "--no-progress"]) == 0
    assert json.loads(next((tmp_path / "eval").glob("eval-*.json")).read_text())["images"] == 300


def test_freeze_keeps_stages_and_their_batch_norm_statistics(source: Path, target: Path, tmp_path: Path) -> None:
    result = train(ft(target, source, tmp_path / "f", freeze=["conv1", "conv2_x"]), log=lambda _: None)
    start, after = _state_of(source), _state(result.run_dir / "last.pt")["model"]
    for key, value in start.items():
        frozen = key.startswith(("conv1.", "bn1.", "layer1."))
        if frozen:
            assert torch.equal(after[key], value), key  # weights and running statistics alike
        elif key.startswith("layer2.") and key.endswith("weight"):
            assert not torch.equal(after[key], value), key


def _state_of(weights: Path) -> dict[str, torch.Tensor]:
    return load_model(weights).state_dict()


def test_head_first_then_unfreeze_with_stage_decay_resumes_bit_identically(source: Path, target: Path,
                                                                           tmp_path: Path) -> None:
    changes = dict(epochs=3, freeze_epochs=1, lr_stage_decay=0.5)
    lines: list[str] = []
    full = train(ft(target, source, tmp_path / "full", **changes), log=lines.append)
    assert any(line.startswith("epoch 2: unfreezing conv1, conv2_x, conv3_x, conv4_x") for line in lines)
    ckpt = _state(full.run_dir / "last.pt")
    lrs = {round(g["lr_factor"], 6) for g in ckpt["optimizer"]["param_groups"]}
    assert lrs == {1.0, 0.5, 0.25, 0.125, 0.0625}  # head; conv4_x; conv3_x; conv2_x; conv1
    for step in (2, 5):  # inside the head-only epoch (3 steps), then after unfreezing
        def interrupt(state, step=step) -> None:
            if state.step == step:
                raise KeyboardInterrupt

        out = tmp_path / f"cut{step}"
        with pytest.raises(KeyboardInterrupt):
            train(ft(target, source, out, **changes), on_step=[interrupt], log=lambda _: None)
        train(ft(target, source, tmp_path / "ignored", **changes), resume=out, log=lambda _: None)
        resumed = _state(out / "last.pt")
        for key in ("model", "optimizer"):
            _assert_same_tensors(ckpt[key], resumed[key], key)




def test_backbone_lr_mult_sets_one_factor_below_the_head(source: Path, target: Path, tmp_path: Path) -> None:
    result = train(ft(target, source, tmp_path / "m", epochs=1, backbone_lr_mult=0.1), log=lambda _: None)
    groups = _state(result.run_dir / "last.pt")["optimizer"]["param_groups"]
    assert sorted({g["lr_factor"] for g in groups}) == [0.1, 1.0]
    head = [g for g in groups if g["lr_factor"] == 1.0]
    assert sum(len(g["params"]) for g in head) == 2  # fc.weight, fc.bias


def test_linear_probe_computes_features_once_and_trains_only_the_head(source: Path, target: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from resnets.train import probe

    calls: list[int] = []
    real = probe.features_of
    monkeypatch.setattr(probe, "features_of", lambda model, batches: calls.append(1) or real(model, batches))
    result = train(ft(target, source, tmp_path / "p", epochs=3, linear_probe=True), log=lambda _: None)
    assert len(calls) == 2  # training and held-out images, once each for three epochs
    start, after = _state_of(source), load_model(result.final_weights).state_dict()
    for key, value in start.items():
        if not key.startswith("fc."):
            assert torch.equal(after[key], value), key
    assert after["fc.weight"].shape == (3, 64) and result.final["val_acc"] > 0

    def interrupt(state) -> None:
        if state.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(ft(target, source, tmp_path / "pc", epochs=3, linear_probe=True), on_step=[interrupt],
              log=lambda _: None)
    train(ft(target, source, tmp_path / "ignored", epochs=3, linear_probe=True), resume=tmp_path / "pc",
          log=lambda _: None)
    _assert_same_tensors(_state(result.run_dir / "last.pt")["model"], _state(tmp_path / "pc" / "last.pt")["model"], "model")


def test_a_torchvision_format_state_dict_starts_a_run(target: Path, tmp_path: Path) -> None:
    plain = create_model("resnet18", num_classes=5)
    torch.save(plain.state_dict(), tmp_path / "r18.pth")
    lines: list[str] = []
    result = train(resolve_config({**BASE, "data": str(target), "init": str(tmp_path / "r18.pth"),
                                   "model": "resnet18", "image_size": 64, "fit_images": 64, "resize": 73,
                                   "iterations": 2, "out": str(tmp_path / "tv")}), log=lines.append)
    assert any("5-class head (unnamed) is replaced by a new 3-class one" in line for line in lines)
    meta = read_metadata(result.final_weights)
    assert meta["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    after = load_model(result.final_weights).layer4[1].conv2.weight
    assert (after - plain.layer4[1].conv2.weight).abs().max() < 1e-2  # two small steps from the .pth's weights
    # predict, embed, explain and serve feed it as it was trained: 32-pixel images upscaled to 64, not 224
    loaded = load_for_inference(result.final_weights)
    assert (loaded.input_size, loaded.resize) == (64, 64)
    image = read_rgb(next((target / "train" / "cat").iterdir()))
    mean, std = torch.tensor(loaded.mean).view(3, 1, 1), torch.tensor(loaded.std).view(3, 1, 1)
    upscaled = torch.nn.functional.interpolate(((image / 255 - mean) / std)[None], size=(64, 64), mode="bilinear")
    torch.testing.assert_close(loaded.preprocess(image), upscaled[0], atol=1e-4, rtol=0)  # the device batches' way


def test_create_model_with_weights(source: Path, tmp_path: Path) -> None:
    same = create_model("resnet20", weights=source)
    assert same.card.classes is not None and same.card.normalization == read_metadata(source)["normalization"]
    new = create_model("resnet20", weights=source, num_classes=3)
    assert new.fc.out_features == 3 and new.card.classes is None
    assert torch.equal(new.layer2[0].conv1.weight, same.layer2[0].conv1.weight)
    with pytest.raises(UserError, match="holds a resnet20 .*not a resnet56"):
        create_model("resnet56", weights=source)


@pytest.mark.parametrize("args, message", [
    (["--freeze", "conv9_x"], "unknown stage 'conv9_x' for --freeze; .*conv1, conv2_x, conv3_x, conv4_x"),
    (["--freeze", "backbone"], "that is a linear probe; use --linear-probe"),
    (["--freeze", "conv1,conv2_x,conv3_x,conv4_x"], "that is a linear probe; use --linear-probe"),
    (["--backbone-lr-mult", "0.1", "--lr-stage-decay", "0.5"], "not both"),
    (["--model", "resnet56"], "holds a resnet20 .*not 'resnet56': drop --model"),
])
def test_bad_fine_tuning_input_is_one_line(source: Path, target: Path, tmp_path: Path, args: list[str],
                                           message: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", "--data", str(target), "--init", str(source), "--epochs", "1", "--no-progress",
               "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "x").exists()


def test_plain_weights_need_a_model_and_probes_need_weights(target: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(create_model("resnet18").state_dict(), tmp_path / "w.pth")
    assert main(["train", "--data", str(target), "--init", str(tmp_path / "w.pth"), "--no-progress"]) == 2
    assert "not a resnets weights file; name its architecture with --model NAME" in capsys.readouterr().err
    assert main(["train", "--data", str(target), "--linear-probe", "--no-progress"]) == 2
    assert "give them with --init FILE" in capsys.readouterr().err
    assert main(["train", "--data", str(target), "--init", str(tmp_path / "w.pth"), "--model", "resnet34",
                 "--iterations", "1", "--no-progress", "--out", str(tmp_path / "y")]) == 2
    assert "weights do not fit resnet34" in capsys.readouterr().err
