"""``resnets export --format triton``: the model repository's layout, its config parsed with Triton's own
protobuf, the ONNX model against PyTorch, labels, and the rules for replacing an existing repository."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

from resnets import UserError, create_model
from resnets.cli import main
from resnets.infer import ExportCheckError, export
from resnets.infer.loading import load_for_inference
from resnets.infer.triton import MARKER, model_config_pb2
from resnets.weights import save_weights

export_module = importlib.import_module("resnets.infer.export_file")  # the ONNX/TorchScript check
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "r20.safetensors"
    save_weights(create_model("resnet20"), path, classes=CLASSES, normalization={"mean": MEAN, "std": STD})
    return path


def test_repository_config_parses_and_model_matches_torch(weights: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = export(weights, "triton", out=repo)
    assert result.path == str(repo) and result.format == "triton" and result.max_abs_diff < 1e-4
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert files == ["repo", "repo/resnet20", "repo/resnet20/1", "repo/resnet20/1/model.onnx",
                     "repo/resnet20/config.pbtxt", "repo/resnet20/labels.txt"]  # and no temporary leftovers
    mode = 0o777 & ~_umask()
    assert (repo / "resnet20").stat().st_mode & 0o777 == mode  # not mkdtemp's 0700

    pb2 = model_config_pb2()
    assert pb2 is not None and pb2.__file__.endswith(os.path.join("tritonclient", "grpc", "model_config_pb2.py"))
    text = (repo / "resnet20" / "config.pbtxt").read_text()
    assert text.startswith(MARKER)
    config = text_format.Parse(text, pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == ("resnet20", "onnxruntime_onnx", 64)
    (inp,), (out,) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("images", pb2.TYPE_FP32, [3, 32, 32])
    assert inp.format == pb2.ModelInput.FORMAT_NCHW
    assert (out.name, out.data_type, list(out.dims), out.label_filename) == ("logits", pb2.TYPE_FP32, [10],
                                                                             "labels.txt")
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32, 64]
    assert 0 < config.dynamic_batching.max_queue_delay_microseconds <= 10_000
    assert [(g.kind, g.count) for g in config.instance_group] == [(pb2.ModelInstanceGroup.KIND_CPU, 1)]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert json.loads(params["resnets_mean"]) == pytest.approx(MEAN)
    assert json.loads(params["resnets_std"]) == pytest.approx(STD)
    assert (params["resnets_input_size"], params["resnets_resize"], params["resnets_crop"]) == ("32", "32", "32")

    assert (repo / "resnet20" / "labels.txt").read_text().splitlines() == CLASSES
    session = ort.InferenceSession(str(repo / "resnet20" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_for_inference(weights).model
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(["logits"], {"images": x.numpy()})[0]
        assert got.shape == (batch, 10) and np.abs(got - ref).max() < 1e-4


def test_existing_repository_is_replaced_only_with_force_or_out(weights: Path, tmp_path: Path) -> None:
    local = tmp_path / "r20.safetensors"
    local.write_bytes(weights.read_bytes())
    default = tmp_path / "r20-triton"
    assert export(local, "triton").path == str(default)
    stamp = default / "resnet20" / "stamp"
    stamp.write_text("old")
    with pytest.raises(UserError, match="exists; give --force"):
        export(local, "triton")
    assert stamp.exists()
    export(local, "triton", force=True)
    assert not stamp.exists() and (default / "resnet20" / "1" / "model.onnx").is_file()
    export(local, "triton", out=default)  # an explicit --out is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20-triton", "r20.safetensors"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not written by resnets export"):
        export(local, "triton", out=foreign, force=True)
    assert (foreign / "notes.txt").read_text() == "keep"
    with pytest.raises(UserError, match="is a file"):
        export(local, "triton", out=foreign / "notes.txt")
    inside = default / "resnet20" / "w.safetensors"
    inside.write_bytes(weights.read_bytes())
    with pytest.raises(UserError, match="holds the weights"):
        export(inside, "triton", out=default)
    assert inside.is_file()


def test_failed_check_leaves_no_repository(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "ATOL", -1.0)
    with pytest.raises(ExportCheckError):
        export(weights, "triton", out=tmp_path / "repo")
    assert os.listdir(tmp_path) == []


def test_cli(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    args = ["export", "--format", "triton", "--weights", str(weights), "--out", str(repo)]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"wrote {repo}; onnxruntime vs PyTorch")
    (repo / "resnet20" / "stamp").touch()
    assert main(args) == 0 and not (repo / "resnet20" / "stamp").exists()
    capsys.readouterr()
    local = tmp_path / "r20.safetensors"
    local.write_bytes(weights.read_bytes())
    default = ["export", "--format", "triton", "--weights", str(local)]
    assert main(default) == 0
    assert main(default) == 2
    err = capsys.readouterr().err
    assert err == f"resnets export: error: {tmp_path / 'r20-triton'} exists; give --force to replace it, " \
                  "or choose another --out\n"
    assert main([*default, "--force"]) == 0


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
