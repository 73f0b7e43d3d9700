"""resnets.infer and its commands: predict, embed + search, explain, export, on the shipped sample images."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from resnets import UserError, create_model
from resnets.cli import main
from resnets.data import extract_sample, read_rgb
from resnets.infer import (
    ExportCheckError,
    embed,
    explain,
    export,
    imagenet_classes,
    load_index,
    nearest,
    predict,
    save_index,
    search,
)
from resnets.infer.loading import IMAGENET_MEAN, IMAGENET_STD, load_for_inference, preprocess
from resnets.weights import save_weights

export_module = importlib.import_module("resnets.infer.export_file")  # the ONNX/TorchScript check

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def sample_images() -> list[str]:
    """Twelve sample test images, from four classes."""
    root = extract_sample() / "test"
    files = []
    for cls in ("airplane", "bird", "cat", "ship"):
        files += sorted(str(p) for p in (root / cls).iterdir())[:3]
    return files


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet20")
    path = tmp_path_factory.mktemp("w") / "r20.safetensors"
    save_weights(model, path, classes=CIFAR_CLASSES, normalization={"mean": [0.49, 0.48, 0.45],
                                                                    "std": [0.25, 0.24, 0.26]})
    return path


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, sample_images: list[str]) -> Path:
    """A folder of sample images plus odd ones: RGBA and grey PNGs, a 1x1 and a 3x200 image, in subfolders."""
    root = tmp_path_factory.mktemp("gallery")
    for i, src in enumerate(sample_images):
        (root / ("a" if i % 2 else "b")).mkdir(exist_ok=True)
        shutil.copy(src, root / ("a" if i % 2 else "b") / f"{i:02d}.jpg")
    rng = np.random.default_rng(0)
    odd = root / "odd"
    odd.mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 30, 4), dtype=np.uint8), "RGBA").save(odd / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8), "L").save(odd / "grey.png")
    Image.fromarray(rng.integers(0, 255, (1, 1, 3), dtype=np.uint8)).save(odd / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (3, 200, 3), dtype=np.uint8)).save(odd / "strip.bmp")
    return root


def test_imagenet_class_names_match_torchvision() -> None:
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"
    assert list(names) == torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]


@pytest.mark.parametrize("width, height, family", [
    (200, 150, "imagenet"),  # upscaled, 341.3 -> 341 wide
    (257, 391, "imagenet"),  # downscaled, 389.5 -> 389 tall
    (256, 256, "imagenet"),  # square: centre crop only
    (48, 80, "cifar"),
    (300, 500, "imagenet"),  # 426.7 tall, truncated to 426
    (500, 300, "imagenet"),  # 426.7 wide
    (45, 70, "cifar"),  # 49.8 tall
    (383, 256, "imagenet"),  # no resize; margin 159, half rounded to even (80)
])
def test_preprocess_matches_torchvision_resize_and_center_crop(tmp_path: Path, width: int, height: int,
                                                               family: str) -> None:
    """Ours against torchvision's evaluation transform on PIL images (the one its pretrained weights and our
    streamed eval use): Resize(256) + CenterCrop(224) (CIFAR: 32, 32) + Normalize.

    Tolerance 1.5/255 per pixel, mean 0.5/255: PIL rounds its resized image to uint8 (0.5/255) and its
    fixed-point antialiased bilinear differs from torch's float one by under 1/255. A one-pixel shift of the
    grid or the crop on this textured image costs 20-50/255."""
    rng = np.random.default_rng(width * height)
    base = Image.open(sorted((extract_sample() / "test" / "ship").iterdir())[0]).convert("RGB")
    texture = np.asarray(base.resize((width, height), Image.BICUBIC)).astype(np.int16)
    texture += rng.integers(-20, 21, texture.shape, dtype=np.int16)
    path = tmp_path / "odd.png"
    Image.fromarray(texture.clip(0, 255).astype(np.uint8)).save(path)
    resize, crop = (256, 224) if family == "imagenet" else (32, 32)
    reference = v2.Compose([v2.Resize(resize), v2.CenterCrop(crop), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with Image.open(path) as im:
        ref = reference(im.convert("RGB"))
    ours = preprocess(read_rgb(path), family, IMAGENET_MEAN, IMAGENET_STD)
    assert ours.shape == ref.shape == (3, crop, crop)
    pixels = ((ours - ref) * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255).abs()  # in 0..255 steps
    assert pixels.max() <= 1.5 and pixels.mean() <= 0.5, (float(pixels.max()), float(pixels.mean()))


def test_predict_api_matches_eager_model(weights: Path, sample_images: list[str]) -> None:
    result = predict(weights, sample_images, topk=3, batch_size=5, precision="fp32")
    assert [p.path for p in result.predictions] == sample_images and not result.failures
    loaded = load_for_inference(weights)
    x = torch.stack([loaded.preprocess(read_rgb(p)) for p in sample_images])
    assert x.shape == (12, 3, 32, 32)
    with torch.no_grad():
        probs = torch.softmax(loaded.model(x), 1)
    top = probs.topk(3, 1)
    for pred, vals, idxs in zip(result.predictions, top.values, top.indices, strict=True):
        assert [i for _, i, _ in pred.labels] == idxs.tolist()
        assert [n for n, _, _ in pred.labels] == [CIFAR_CLASSES[i] for i in idxs.tolist()]
        assert np.allclose([v for _, _, v in pred.labels], vals.tolist(), atol=1e-5)


def test_predict_cli_reports_broken_files_and_predicts_the_rest(weights: Path, gallery: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    rc = main(["predict", "--weights", str(weights), str(gallery), str(broken), str(empty),
               str(tmp_path / "missing.jpg"), "--format", "json", "--topk", "2", "--batch-size", "4"])
    out, err = capsys.readouterr()
    assert rc == 1
    rows = json.loads(out)
    assert len(rows) == 16  # 12 sample images + 4 odd ones, all predicted
    assert all(len(r["top"]) == 2 and r["top"][0]["prob"] >= r["top"][1]["prob"] for r in rows)
    assert {Path(r["path"]).name for r in rows} >= {"rgba.png", "grey.png", "tiny.png", "strip.bmp"}
    for bad in (broken, empty, tmp_path / "missing.jpg"):
        assert str(bad) in err
    assert "Traceback" not in err


def test_predict_cli_glob_table_and_csv(weights: Path, gallery: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--weights", str(weights), str(gallery / "a" / "*.jpg"), "--topk", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all(any(c in line for c in CIFAR_CLASSES) for line in lines)
    assert main(["predict", "--weights", str(weights), str(gallery / "odd"), "--format", "csv", "--topk", "2"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "path,rank,label,index,prob" and len(rows) == 1 + 4 * 2


def test_predict_torchvision_pth_uses_imagenet_names(tmp_path: Path, sample_images: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    pth = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), pth)
    result = predict(pth, sample_images[:2], model_name="resnet18", topk=5)
    names = set(imagenet_classes())
    assert len(result.predictions) == 2 and all(n in names for p in result.predictions for n, _, _ in p.labels)
    assert main(["predict", "--weights", str(pth), sample_images[0]]) == 2
    assert "--model" in capsys.readouterr().err


def test_embed_and_search_find_the_query_itself(weights: Path, gallery: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    index = tmp_path / "gallery.safetensors"
    emb = embed(weights, [gallery], out=index, batch_size=5)
    assert emb.vectors.shape == (16, 64) and emb.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    stored = load_index(index)
    assert stored.paths == emb.paths and np.array_equal(stored.vectors, emb.vectors)
    queries = [p for p in emb.paths if p.endswith((".jpg", ".png"))][:4]
    results = search(index, queries, topk=3)
    for r in results:
        assert r.hits[0].path == r.query and r.hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert len(r.hits) == 3 and r.hits[0].score >= r.hits[1].score >= r.hits[2].score
    npz = tmp_path / "gallery.npz"
    save_index(emb, npz)
    with np.load(npz, allow_pickle=False) as z:
        assert z["embeddings"].shape == (16, 64)
    assert search(npz, queries[:1], topk=1)[0].hits[0].path == queries[0]

    cli_index = tmp_path / "cli.safetensors"
    assert main(["embed", "--weights", str(weights), str(gallery / "a"), "--out", str(cli_index)]) == 0
    assert "6 x 64" in capsys.readouterr().out
    assert main(["search", "--index", str(cli_index), queries[1], "--topk", "2", "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["hits"]
    assert hits[0]["path"] == os.path.abspath(queries[1]) and len(hits) == 2


def test_embedding_is_the_pooled_feature_vector(weights: Path, sample_images: list[str]) -> None:
    emb = embed(weights, sample_images[:4], precision="fp32")
    loaded = load_for_inference(weights)
    x = torch.stack([loaded.preprocess(read_rgb(p)) for p in sample_images[:4]])
    with torch.no_grad():
        feats = loaded.model.forward_head(loaded.model.forward_features(x), pre_logits=True)
    ref = torch.nn.functional.normalize(feats, dim=1).numpy()
    assert np.abs(emb.vectors - ref).max() < 1e-5


def test_approximate_search_agrees_with_exact() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 64)).astype(np.float32)
    data = centres[rng.integers(0, 50, 3000)] + 0.5 * rng.standard_normal((3000, 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    gallery, queries = data[:2900], data[2900:]
    _, exact_ids = nearest(gallery, queries, 10, method="exact")
    scores, ann_ids = nearest(gallery, queries, 10, method="ann")
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ann_ids, exact_ids, strict=True)])
    assert recall >= 0.9 and scores.shape == (100, 10)
    _, self_ids = nearest(gallery, gallery[:20], 1, method="exact")
    assert self_ids[:, 0].tolist() == list(range(20))


EXPORT_EXTRA = "ONNX export needs the onnx and onnxruntime packages: pip install 'resnets[export]'"


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_onnx_export_without_its_extra_says_what_to_install(weights: Path, tmp_path: Path, missing: str,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    with pytest.raises(UserError) as exc:
        export(weights, "onnx", out=tmp_path / "r20.onnx")
    assert str(exc.value) == EXPORT_EXTRA
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "r20.onnx"), "--int8"]) == 2
    assert capsys.readouterr().err == f"resnets export: error: {EXPORT_EXTRA}\n"
    assert os.listdir(tmp_path) == []


def test_ann_search_without_faiss_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    gallery = np.eye(4, dtype=np.float32)
    with pytest.raises(UserError) as exc:
        nearest(gallery, gallery[2:3], 1, method="ann")
    assert str(exc.value) == "approximate search needs faiss: pip install 'resnets[ann]'"
    assert nearest(gallery, gallery[2:3], 1, method="auto")[1].tolist() == [[2]]  # auto: exact search


def test_search_errors_are_user_errors(weights: Path, tmp_path: Path, sample_images: list[str]) -> None:
    with pytest.raises(UserError, match="not found"):
        search(tmp_path / "none.safetensors", sample_images[:1])
    not_index = tmp_path / "w.safetensors"
    shutil.copy(weights, not_index)
    with pytest.raises(UserError, match="not a resnets embedding index"):
        load_index(not_index)


def test_explain_grad_cam_png(weights: Path, sample_images: list[str], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cam.png"
    exp = explain(weights, sample_images[0], out=out)
    assert exp.cam.shape == (32, 32) and exp.cam.min() >= 0 and exp.cam.max() == pytest.approx(1.0)
    assert exp.layer == "conv4_x" and exp.class_name in CIFAR_CLASSES  # the paper's name of layer3
    preds = predict(weights, sample_images[:1], topk=1, precision="fp32").predictions[0]
    assert exp.class_index == preds.labels[0][1]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert sorted(os.listdir(tmp_path)) == ["cam.png"]
    named = explain(weights, sample_images[0], class_name="Ship")
    assert named.class_name == "ship" and named.class_index == 8
    with pytest.raises(UserError, match="no class named"):
        explain(weights, sample_images[0], class_name="spaceship")
    assert main(["explain", "--weights", str(weights), sample_images[1], "--out", str(tmp_path / "b.png"),
                 "--class", "cat"]) == 0
    printed = capsys.readouterr().out
    assert "cat" in printed and "Grad-CAM on conv4_x" in printed and (tmp_path / "b.png").is_file()


@pytest.fixture(scope="module")
def prototype_weights(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Path:
    """``weights`` with a nearest-prototype head: class c points at the (centred) features of one sample training
    image of class c, so the sample test images get different top-1 classes, most of them not class 0, with
    probabilities far from 0 and 1."""
    loaded = load_for_inference(weights)
    model = loaded.model.eval()
    train = extract_sample() / "train"
    x = torch.stack([loaded.preprocess(read_rgb(sorted((train / c).iterdir())[0])) for c in CIFAR_CLASSES])
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        centred = feats - feats.mean(0)
        w = centred / centred.norm(dim=1, keepdim=True) * 5.0
        model.fc.weight.copy_(w)
        model.fc.bias.copy_(-(w @ feats.mean(0)))
    path = tmp_path_factory.mktemp("proto") / "r20-proto.safetensors"
    save_weights(model, path, classes=CIFAR_CLASSES, normalization={"mean": list(loaded.mean), "std": list(loaded.std)})
    return path


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_explain_explains_predicts_top1(prototype_weights: Path, sample_images: list[str], precision: str) -> None:
    # Grad-CAM's class and probability are predict's top-1 on the same image and weights, image by image.
    preds = predict(prototype_weights, sample_images, topk=1, batch_size=1, precision=precision).predictions
    tops = [p.labels[0] for p in preds]
    classes = {index for _, index, _ in tops}
    assert len(classes) >= 3 and sum(index != 0 for _, index, _ in tops) >= 6, tops  # not one class, not class 0
    for path, (name, index, prob) in zip(sample_images, tops, strict=True):
        exp = explain(prototype_weights, path, precision=precision)
        assert (exp.class_index, exp.class_name) == (index, name), path
        assert exp.probability == pytest.approx(prob, abs=1e-5), path
        assert 0.1 < prob < 0.99


def test_explain_command_prints_predicts_top1(prototype_weights: Path, sample_images: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    image = sample_images[3]  # a bird; the prototype head does not call it class 0 (frog in fp32)
    assert main(["predict", "--weights", str(prototype_weights), image, "--format", "json", "--topk", "1"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"][0]
    assert top["index"] != 0
    assert main(["explain", "--weights", str(prototype_weights), image, "--out", str(tmp_path / "cam.png")]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{image}: {top['label']} ({top['prob']:.1%}); Grad-CAM on conv4_x"), line


def test_explain_imagenet_net_uses_conv5_x(tmp_path: Path, sample_images: list[str]) -> None:
    torch.manual_seed(0)
    path = tmp_path / "r18.safetensors"
    save_weights(create_model("resnet18", num_classes=10), path, classes=CIFAR_CLASSES)
    exp = explain(path, sample_images[0])
    assert exp.layer == "conv5_x" and exp.cam.shape == (224, 224)  # layer4


def test_export_onnx_dynamic_batch_matches_torch(weights: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r20.onnx"
    result = export(weights, "onnx", out=out)
    assert result.max_abs_diff < 1e-4 and Path(result.path) == out
    proto = onnx.load(out)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == CIFAR_CLASSES and meta["input_size"] == "32"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = load_for_inference(weights).model
    for batch in (2, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == (batch, 10) and np.abs(got - ref).max() < 1e-4
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "cli.onnx")]) == 0
    assert "max abs difference" in capsys.readouterr().out


def test_export_torchscript(weights: Path, tmp_path: Path) -> None:
    result = export(weights, "torchscript", out=tmp_path / "r20.pt")
    assert result.max_abs_diff < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
        scripted = torch.jit.load(result.path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), load_for_inference(weights).model(x), atol=1e-5)


def test_failed_export_check_leaves_no_file(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(export_module, "ATOL", -1.0)
    with pytest.raises(ExportCheckError):
        export(weights, "onnx", out=tmp_path / "bad.onnx")
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "bad.onnx")]) == 1
    assert "check failed" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
