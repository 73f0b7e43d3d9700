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


def test_metadata_is_the_cards_and_a_file_in_that_format_fills_the_card(tmp_path: Path) -> None:
    model = create_model("resnet20", variant="preact", in_chans=1, num_classes=10)
    model.classes, model.normalization = CLASSES, NORM
    path = save_weights(model, tmp_path / "card.safetensors", extra={"trained": {"epoch": 3}})
    assert read_metadata(path) == {
        "format_version": 1, "spec": {"name": "resnet20", "variant": "preact", "num_classes": 10, "in_chans": 1},
        "classes": CLASSES, "normalization": NORM, "trained": {"epoch": 3}}
    from safetensors.torch import save_file

    # written as resnets wrote files before the card, without classes or normalisation
    old = tmp_path / "old.safetensors"
    meta = {"format_version": 1, "spec": {"name": "resnet20", "variant": "v1", "num_classes": 4}}
    save_file({k: v.contiguous() for k, v in create_model("resnet20", num_classes=4).state_dict().items()},
              str(old), metadata={"resnets": json.dumps(meta)})
    card = load_model(old).card
    assert (card.name, card.variant, card.num_classes, card.options) == ("resnet20", "v1", 4, {})
    assert card.classes is None and card.normalization is None


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


def _trained(name: str, **options: object) -> torch.nn.Module:
    """A model whose batch-norm statistics and counters have moved off their defaults."""
    torch.manual_seed(0)
    model = create_model(name, **options).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32) * 2 + 0.5)
    return model.eval()


def _pre_041(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as PyTorch before 0.4.1 saved it: no ``num_batches_tracked`` buffers."""
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _counters(model: torch.nn.Module) -> list[int]:
    return [int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]


def test_checkpoint_saved_before_pytorch_041_loads_with_counters_at_zero(tmp_path: Path) -> None:
    source = _trained("resnet20")
    old = _pre_041(source.state_dict())
    assert len(old) < len(source.state_dict())
    path = tmp_path / "old.pth"
    torch.save(old, path)
    target = _trained("resnet20")  # its own counters are 3, not 0
    torch.manual_seed(1)
    for p in target.parameters():
        torch.nn.init.normal_(p)
    load_weights(target, path)
    assert _counters(target) and set(_counters(target)) == {0}
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(target, x), _logits(source, x))


def test_cifar_repository_checkpoint_with_linear_head_loads(tmp_path: Path) -> None:
    # akamaster/pytorch_resnet_cifar10: {'epoch', 'best_prec1', 'state_dict': {'module.conv1.weight', ...,
    # 'module.linear.weight', 'module.linear.bias'}}, saved by PyTorch 0.4 (no num_batches_tracked).
    source = _trained("resnet20")
    state = {"module." + k.replace("fc.", "linear.", 1): v for k, v in _pre_041(source.state_dict()).items()}
    assert "module.linear.weight" in state and not any(".fc." in k or k.startswith("fc.") for k in state)
    path = tmp_path / "resnet20-12fca82f.th"
    torch.save({"epoch": 200, "best_prec1": 91.73, "state_dict": state}, path)
    target = load_weights(create_model("resnet20"), path, say=lambda line: None)
    assert target.card.spec["shortcut_pad"] == "both"  # that repository pads option A on both sides (issue 27)
    for m in source.modules():
        if hasattr(m, "extra_channels"):
            m.pad = "both"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(target, x), _logits(source, x))
    with pytest.raises(UserError, match="10-class head but the model has 100 classes"):
        load_weights(create_model("resnet20", num_classes=100), path)


@pytest.mark.parametrize("form", ["model", "model_state_dict", "net", "examples_imagenet", "nested",
                                  "compiled", "ddp_compiled", "lightning", "pre_041_ddp"])
def test_common_checkpoint_wrappers_and_prefixes_load(tmp_path: Path, form: str) -> None:
    source = _trained("resnet20", shortcut="B")
    sd = source.state_dict()

    def prefixed(prefix: str, state: dict[str, torch.Tensor] = sd) -> dict[str, torch.Tensor]:
        return {prefix + k: v for k, v in state.items()}

    checkpoint = {
        "model": {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
                  "epoch": 7, "args": {"arch": "resnet20"}},
        "model_state_dict": {"epoch": 7, "model_state_dict": sd, "optimizer_state_dict": {"state": {}}, "loss": 0.3},
        "net": {"net": prefixed("module."), "acc": 93.02, "epoch": 180},  # kuangliu/pytorch-cifar
        "examples_imagenet": {"epoch": 90, "arch": "resnet20", "state_dict": prefixed("module."),
                              "best_acc1": torch.tensor(91.5), "optimizer": {"state": {}}},  # pytorch/examples
        "nested": {"model": {"state_dict": sd, "meta": {"step": 5}}},
        "compiled": {"state_dict": prefixed("_orig_mod.")},
        "ddp_compiled": prefixed("_orig_mod.module."),
        "lightning": {"epoch": 3, "global_step": 300, "state_dict": prefixed("model."), "optimizer_states": []},
        "pre_041_ddp": {"state_dict": prefixed("module.", _pre_041(sd))},
    }[form]
    path = tmp_path / f"{form}.pth"
    torch.save(checkpoint, path)
    target = load_weights(create_model("resnet20", shortcut="B"), path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(target, x), _logits(source, x))


def test_ambiguous_foreign_checkpoints_are_refused_with_the_keys_named(tmp_path: Path) -> None:
    model = create_model("resnet20")
    sd = _pre_041(_trained("resnet20").state_dict())

    both_heads = {**sd, "linear.weight": sd["fc.weight"], "linear.bias": sd["fc.bias"]}
    with pytest.raises(UserError, match=r"unexpected 2 key\(s\): linear\.weight, linear\.bias$"):
        load_weights(model, both_heads)

    half_prefixed = {("module." + k if k.startswith("layer1.") else k): v for k, v in sd.items()}
    half_prefixed["conv1.weight"] = torch.zeros_like(sd["conv1.weight"])
    half_prefixed["module.conv1.weight"] = sd["conv1.weight"]
    with pytest.raises(UserError, match=r"missing \d+ key\(s\): layer1\.0\.conv1\.weight.*"
                                        r"unexpected \d+ key\(s\): module\.layer1\.0\.conv1\.weight"):
        load_weights(model, half_prefixed)

    two = tmp_path / "two.pth"
    other = _pre_041(create_model("resnet20").state_dict())
    torch.save({"epoch": 1, "state_dict": sd, "model": other}, two)
    with pytest.raises(UserError, match=r"two\.pth holds different weights under state_dict, model"):
        load_weights(model, two)

    missing = {k: v for k, v in sd.items() if k != "layer2.1.conv2.weight"}
    with pytest.raises(UserError, match=r"weights do not fit resnet20: missing 1 key\(s\): layer2\.1\.conv2\.weight$"):
        load_weights(model, missing)

    no_weights = tmp_path / "optimizer_only.pth"
    torch.save({"epoch": 1, "optimizer": {"state": {}, "param_groups": []}}, no_weights)
    with pytest.raises(UserError, match=r"optimizer_only\.pth holds no state dict \(keys: epoch, optimizer\)"):
        load_weights(model, no_weights)


# ---- an untrusted weights file: bounded before anything is built or allocated -----------------------------


def _craft(path: Path, tensors: dict[str, torch.Tensor], meta: dict | str) -> Path:
    """A safetensors file holding ``tensors`` and the resnets metadata ``meta`` (a string is stored as is)."""
    from safetensors.torch import save_file

    raw = meta if isinstance(meta, str) else json.dumps(meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"resnets": raw})
    return path


def _resnet20_tensors() -> dict[str, torch.Tensor]:
    return dict(create_model("resnet20").state_dict())


def _one_line_error(call, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_spec_of_2049g_parameters_is_refused_in_one_line_before_anything_is_built(tmp_path: Path) -> None:
    # resnet50 with 10^9 classes: 2,049 G parameters (the fc alone is 2048 x 10^9), over 8 TB as float32
    huge = _craft(tmp_path / "huge.safetensors", _resnet20_tensors(),
                  {"format_version": 1, "spec": {"name": "resnet50", "variant": "v1.5", "num_classes": 10**9}})
    from resnets.infer.loading import load_for_inference

    for call in (lambda: load_model(huge), lambda: read_metadata(huge), lambda: load_for_inference(huge)):
        _one_line_error(call, r"huge.safetensors: its spec's num_classes 1000000000 is not a whole number from "
                              r"1 to 100,000; the file is damaged or crafted")
    deep = _craft(tmp_path / "deep.safetensors", _resnet20_tensors(),
                  {"format_version": 1, "spec": {"name": "resnet50", "num_classes": 10, "blocks": [10**6] * 4}})
    _one_line_error(lambda: load_model(deep), r"its spec's blocks \[1000000, .* are not four block counts from "
                                              r"1 to 100")
    for spec, match in (({"name": "resnet20", "in_chans": 10**6}, "in_chans 1000000 is not a whole number"),
                        ({"name": "resnet20", "num_classes": True}, "num_classes True is not a whole number"),
                        ({"name": "resnet20", "widths": [10**6] * 3}, "spec's widths is not a create_model option this "
                                                                     "resnets bounds"),
                        ({"name": "resnet20", "made_up": True}, r"unknown option\(s\) made_up for resnet20"),
                        ({"name": ["resnet20"]}, "name .* is not a model name"),
                        ([1, 2], "its spec is a list, not an object")):
        bad = _craft(tmp_path / "bad.safetensors", _resnet20_tensors(), {"format_version": 1, "spec": spec})
        _one_line_error(lambda: load_model(bad), match)  # noqa: B023 - called at once


def test_a_spec_in_bounds_whose_tensors_differ_is_refused_before_real_memory_is_allocated(tmp_path: Path) -> None:
    # resnet50 with 100,000 classes is 228 M parameters (913 MB as float32); the file holds a resnet20's 1 MB
    crafted = _craft(tmp_path / "big.safetensors", _resnet20_tensors(),
                     {"format_version": 1, "spec": {"name": "resnet50", "num_classes": 100_000}})
    script = f"""
import resnets
load_model = resnets.load_model  # torch and resnets.weights imported before the baseline
def kib(field):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(field + ':'))
before = kib('VmRSS')
try:
    load_model({str(crafted)!r})
except resnets.UserError as exc:
    print(exc)
print((kib('VmHWM') - before) // 1024)
"""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    message, grown_mib = run.stdout.strip().splitlines()
    assert int(grown_mib) < 100, f"the peak RSS grew by {grown_mib} MiB: the spec's model was allocated"
    assert message.endswith("big.safetensors: its tensors do not match its spec (name='resnet50', "
                            "variant='v1.5', num_classes=100000): tensor conv1.weight is F32 (16, 3, 3, 3), the "
                            "spec's is F32 (64, 3, 7, 7); the file is damaged or crafted"), message


def test_the_first_tensor_that_differs_from_the_spec_is_named(tmp_path: Path) -> None:
    meta = {"format_version": 1, "spec": {"name": "resnet20", "variant": "v1", "num_classes": 10}}
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in _resnet20_tensors().items()}
    _one_line_error(lambda: load_model(_craft(tmp_path / "h.safetensors", half, meta)),
                    r"h.safetensors: its tensors do not match its spec \(name='resnet20', variant='v1', "
                    r"num_classes=10\): tensor conv1.weight is F16 \(16, 3, 3, 3\), the spec's is F32 \(16, 3, 3, 3\)")
    wide = {**_resnet20_tensors(), "fc.weight": torch.zeros(12, 64), "fc.bias": torch.zeros(12)}
    _one_line_error(lambda: load_model(_craft(tmp_path / "w.safetensors", wide, meta)),
                    r"tensor fc.weight is F32 \(12, 64\), the spec's is F32 \(10, 64\)")
    fewer = {k: v for k, v in _resnet20_tensors().items() if k != "layer3.2.bn2.running_var"}
    _one_line_error(lambda: load_model(_craft(tmp_path / "f.safetensors", fewer, meta)),
                    r"tensor layer3.2.bn2.running_var \(F32 \(64,\)\) is missing")
    more = {**_resnet20_tensors(), "payload": torch.zeros(3)}
    _one_line_error(lambda: load_model(_craft(tmp_path / "m.safetensors", more, meta)),
                    r"tensor payload is not in the spec's model")


def test_malformed_metadata_and_headers_are_one_line_errors(tmp_path: Path) -> None:
    tensors = _resnet20_tensors()
    cut = _craft(tmp_path / "cut.safetensors", tensors, '{"format_version": 1, "spec": {"name": "resn')
    _one_line_error(lambda: load_model(cut), r"cut.safetensors: its resnets metadata is not valid JSON \(")
    _one_line_error(lambda: read_metadata(cut), r"its resnets metadata is not valid JSON")
    listed = _craft(tmp_path / "list.safetensors", tensors, "[1, 2]")
    _one_line_error(lambda: load_model(listed), "its resnets metadata is a JSON list, not an object")
    newer = _craft(tmp_path / "v9.safetensors", tensors, {"format_version": 9, "spec": {"name": "resnet20"}})
    _one_line_error(lambda: load_model(newer), "resnets weights format 9 is not one this resnets reads")
    good = {"format_version": 1, "spec": {"name": "resnet20", "variant": "v1", "num_classes": 10}}
    for extra, match in (({"classes": ["a", "b"]}, "its classes are not one name per class"),
                         ({"normalization": {"mean": [0.5], "std": "x"}}, "its normalization is not"),
                         ({"trained": {"image_size": 10**6}}, "its trained image_size 1000000 is not a side from 1"),
                         ({"trained": {"fit_images": "32"}}, "its trained fit_images 32 is not a side"),
                         ({"trained": {"input_size": 224, "resize": 10**5}}, "its trained resize 100000 is not a side")):
        bad = _craft(tmp_path / "bad.safetensors", tensors, {**good, **extra})
        _one_line_error(lambda: load_model(bad), match)  # noqa: B023 - called at once
    ok = _craft(tmp_path / "ok.safetensors", tensors, {**good, "trained": {"image_size": None, "fit_images": 64}})
    assert load_model(ok).num_classes == 10

    def raw_file(name: str, header: bytes, data: bytes = b"") -> Path:
        path = tmp_path / name
        path.write_bytes(len(header).to_bytes(8, "little") + header + data)
        return path

    claims = tmp_path / "claims.safetensors"
    claims.write_bytes((1 << 40).to_bytes(8, "little") + b'{"x": 1}')  # a header of 1 TiB
    _one_line_error(lambda: load_model(claims), r"its header claims 1,099,511,627,776 bytes, over the limit of "
                                                r"16,777,216")
    _one_line_error(lambda: load_weights(create_model("resnet20"), claims), "its header claims")
    _one_line_error(lambda: load_model(raw_file("j.safetensors", b'{"a": [1, 2')), "its header is not valid JSON")
    _one_line_error(lambda: load_model(raw_file("n.safetensors", b"[" * 100_000 + b"]" * 100_000)),
                    "its header is not valid JSON")
    outside = b'{"w": {"dtype": "F32", "shape": [1000000000], "data_offsets": [0, 4000000000]}}'
    _one_line_error(lambda: load_model(raw_file("o.safetensors", outside, b"\0" * 16)),
                    r"tensor w has data offsets \[0, 4000000000\] outside the file's 16 bytes of data")
    _one_line_error(lambda: load_weights(create_model("resnet20"), raw_file("o.safetensors", outside, b"\0" * 16)),
                    "outside the file's 16 bytes")
    short = b'{"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 16]}}'
    _one_line_error(lambda: load_model(raw_file("s.safetensors", short, b"\0" * 16)),
                    r"tensor w holds 16 bytes, not the 32 its F32 shape \(8,\) needs")
