"""Weights: safetensors round trip with metadata, foreign checkpoints, mismatches, and no code on load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision

import resnets
from resnets import UserError, create_model, load_model, load_weights, read_metadata, save_weights

CLASSES = [f"class{i}" for i in range(10)]
NORM = {"mean": [0.49, 0.48, 0.44], "std": [0.25, 0.24, 0.26]}


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_safetensors_round_trip_rebuilds_model_from_file_alone(tmp_path: Path) -> None:
    model = create_model("resnet20", shortcut="B", zero_init_residual=False)
    path = save_weights(model, tmp_path / "w.safetensors", classes=CLASSES, normalization=NORM)
    meta = read_metadata(path)
    assert meta["spec"] == {"name": "resnet20", "variant": "v1", "num_classes": 10, "shortcut": "B",
                            "zero_init_residual": False}
    assert meta["classes"] == CLASSES and meta["normalization"] == NORM
    rebuilt = load_model(path)
    assert rebuilt.classes == CLASSES and rebuilt.normalization == NORM
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(model, x), _logits(rebuilt, x))
    assert not list(tmp_path.glob(".*tmp")), "no temporary file is left behind"


def test_variant_and_class_count_survive_the_round_trip(tmp_path: Path) -> None:
    model = create_model("resnet18", variant="d", num_classes=7)
    rebuilt = load_model(save_weights(model, tmp_path / "d.safetensors"))
    assert rebuilt.spec["variant"] == "d" and rebuilt.fc.out_features == 7
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_logits(model, x), _logits(rebuilt, x))


def test_torchvision_pth_and_wrapped_checkpoints_load(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    plain = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), plain)
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}},
               wrapped)
    for source in (plain, wrapped, reference.state_dict()):
        ours = load_weights(create_model("resnet18"), source)
        assert torch.allclose(_logits(ours, x), _logits(reference, x), atol=1e-5, rtol=0)


def test_mismatch_names_the_keys_and_shapes(tmp_path: Path) -> None:
    path = save_weights(create_model("resnet20"), tmp_path / "r20.safetensors")
    with pytest.raises(UserError, match=r"weights do not fit resnet32: missing \d+ key\(s\): layer1\.3"):
        load_weights(create_model("resnet32"), path)
    with pytest.raises(UserError, match=r"shape mismatch: conv1.weight \(64, 3, 7, 7\) vs model \(16, 3, 3, 3\)"):
        load_weights(create_model("resnet20", shortcut="A"),
                     {k: v for k, v in create_model("resnet18").state_dict().items()})


def test_class_count_mismatch_needs_reinit_head(tmp_path: Path) -> None:
    source = create_model("resnet20")
    path = save_weights(source, tmp_path / "ten.safetensors")
    target = create_model("resnet20", num_classes=4)
    with pytest.raises(UserError, match="10-class head but the model has 4 classes.*reinit_head=True"):
        load_weights(target, path)
    head_before = target.fc.weight.clone()
    load_weights(target, path, reinit_head=True)
    assert torch.equal(target.fc.weight, head_before)
    assert torch.equal(target.conv1.weight, source.conv1.weight)


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # runs os.system on a plain unpickle
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": Exploit()}, evil)
    with pytest.raises(UserError, match=r"refusing to load .*evil.pth: .*GLOBAL posix.system"):
        load_weights(create_model("resnet20"), evil)
    assert not marker.exists()


def test_bad_paths_and_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="weights file not found"):
        load_model(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a readable weights file"):
        load_weights(create_model("resnet20"), junk)
    bare = tmp_path / "bare.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(UserError, match="has no resnets metadata"):
        load_model(bare)


def test_failed_write_leaves_previous_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("resnet20")
    path = save_weights(model, tmp_path / "w.safetensors", classes=CLASSES)
    before = path.read_bytes()

    def boom(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(resnets.weights, "save_file", boom)
    with pytest.raises(OSError):
        save_weights(create_model("resnet20"), path)
    assert path.read_bytes() == before
    assert json.loads(json.dumps(read_metadata(path)))["classes"] == CLASSES
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_written_weights_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = save_weights(create_model("resnet20"), tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert (Path(path).stat().st_mode & 0o777) == 0o644
