"""akamaster/pytorch_resnet_cifar10's checkpoints compute what that repository's code computes: its option A pads
the new channels with planes//4 zeros on both sides of the subsampled identity. Checked against an independent
definition of its network written here from its published equations (plain tensor functions, no resnets blocks),
with random weights and batch-norm statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import resnets
from resnets.infer.loading import load_for_inference

DEPTHS = {20: 3, 32: 5}


def akamaster_forward(state: dict[str, torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    """akamaster's ResNet for CIFAR (resnet.py): conv3x3(16)-BN-ReLU, three stages of n BasicBlocks (16, 32, 64
    planes, the first of stages 2 and 3 strided), each relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)) with
    shortcut(x) = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)) where the shape changes; then
    avg_pool2d over the whole map and ``linear``."""
    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(t, state[p + ".running_mean"], state[p + ".running_var"], state[p + ".weight"],
                            state[p + ".bias"], training=False, eps=1e-5)

    out = F.relu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"))
    in_planes = 16
    for stage, planes in enumerate((16, 32, 64), start=1):
        for i in range(n):
            stride = 2 if stage > 1 and i == 0 else 1
            p = f"layer{stage}.{i}"
            y = F.relu(bn(F.conv2d(out, state[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
            y = bn(F.conv2d(y, state[p + ".conv2.weight"], padding=1), p + ".bn2")
            short = out
            if stride != 1 or in_planes != planes:
                short = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0)
            out = F.relu(y + short)
            in_planes = planes
    out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
    return F.linear(out, state["linear.weight"], state["linear.bias"])


def akamaster_state(depth: int, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under akamaster's names (``linear.`` head), BN statistics and affine terms random too."""
    g = torch.Generator().manual_seed(seed)
    shapes = {k.replace("fc.", "linear."): v.shape for k, v in resnets.create_model(f"resnet{depth}").state_dict()
              .items() if not k.endswith("num_batches_tracked")}
    state = {}
    for k, shape in shapes.items():
        if k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bias")):
            state[k] = torch.randn(shape, generator=g) * 0.3
        elif k.endswith("bn2.weight"):  # the residual branch's scale: small, so the sum stays near 1 in size
            state[k] = torch.rand(shape, generator=g) * 0.2 + 0.1
        elif k.endswith("bn1.weight"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
            state[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return state


def _inputs() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def test_checkpoint_with_best_prec1_computes_as_akamaster(tmp_path, capsys):
    for depth, n in DEPTHS.items():
        state = akamaster_state(depth, depth)
        path = tmp_path / f"resnet{depth}-12345678.th"
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "best_prec1": 91.5}, path)
        model = resnets.create_model(f"resnet{depth}", weights=path).eval()
        x = _inputs()
        with torch.no_grad():
            want, got = akamaster_forward(state, x, n), model(x)
        assert (got - want).abs().max().item() < 1e-5
        assert model.card.spec["shortcut_pad"] == "both"  # in the card, so saved weights rebuild it
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "akamaster/pytorch_resnet_cifar10" in err[0] and "best_prec1" in err[0]
        assert str(path) in err[0]
        forced = resnets.create_model(f"resnet{depth}", weights=path, shortcut_pad="after").eval()
        with torch.no_grad():
            assert (forced(x) - want).abs().max().item() > 1e-2  # resnets' own placement computes another net
        assert capsys.readouterr().err == ""  # forced: nothing detected, nothing said


def test_plain_state_dict_with_linear_head_detected_by_layout(tmp_path, capsys):
    state = akamaster_state(20, 1)
    path = tmp_path / "aka.pth"
    torch.save(state, path)
    loaded = load_for_inference(path, "resnet20")  # what predict/eval/serve --model resnet20 do
    x = _inputs()
    with torch.no_grad():
        assert (loaded.model(x) - akamaster_forward(state, x, 3)).abs().max().item() < 1e-5
    assert "a linear. head" in capsys.readouterr().err
    out = resnets.save_weights(loaded.model, tmp_path / "aka.safetensors")
    again = resnets.load_model(out)
    with torch.no_grad():
        assert (again(x) - akamaster_forward(state, x, 3)).abs().max().item() < 1e-5


def test_resnets_own_option_a_weights_stay_padded_after(tmp_path, capsys):
    model = resnets.create_model("resnet20")
    path = tmp_path / "own.pth"
    torch.save(model.state_dict(), path)  # fc. head, no best_prec1: resnets' (or another) layout
    again = resnets.create_model("resnet20", weights=path)
    assert "shortcut_pad" not in again.card.spec and again.layer2[0].downsample.pad == "after"
    assert capsys.readouterr().err == ""


def test_predict_detects_or_forces_the_placement(tmp_path, capsys):
    import json

    from PIL import Image

    from resnets.cli import main
    from resnets.data import read_rgb

    state = akamaster_state(20, 5)
    path = tmp_path / "resnet20-12fca82f.th"
    torch.save({"state_dict": state, "best_prec1": 90.0}, path)
    image = tmp_path / "x.png"
    g = torch.Generator().manual_seed(2)
    Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()).save(image)

    def probs(*extra: str) -> list[float]:
        assert main(["predict", "--weights", str(path), "--model", "resnet20", str(image), "--format", "json",
                     "--topk", "10", "--precision", "fp32", *extra]) == 0
        top = json.loads(capsys.readouterr().out)[0]["top"]
        return [p for _, p in sorted((t["index"], t["prob"]) for t in top)]

    loaded = load_for_inference(path, "resnet20")
    x = loaded.preprocess(read_rgb(str(image)))[None]
    with torch.no_grad():
        want = torch.softmax(akamaster_forward(state, x, 3), 1)[0].tolist()
    capsys.readouterr()
    assert max(abs(a - b) for a, b in zip(probs(), want, strict=True)) < 1e-5
    assert max(abs(a - b) for a, b in zip(probs("--shortcut-pad", "both"), want, strict=True)) < 1e-5
    assert max(abs(a - b) for a, b in zip(probs("--shortcut-pad", "after"), want, strict=True)) > 1e-3
