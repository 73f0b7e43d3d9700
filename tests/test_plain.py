"""The paper's plain baselines: the ResNets' architectures with every shortcut removed."""

from __future__ import annotations

import pytest
import torch

from resnets import create_model, list_models
from resnets.cli import main
from resnets.models.blocks import BasicBlock


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cifar_params(n: int) -> int:
    """Hand count of a 6n+2 CIFAR net with option A: 3x3 convs (no bias) + BN (2 per channel) + fc."""
    stem = 3 * 16 * 9 + 2 * 16
    total = stem
    for c_in, c_out in ((16, 16), (16, 32), (32, 64)):
        first = c_in * c_out * 9 + 2 * c_out
        rest = c_out * c_out * 9 + 2 * c_out
        total += first + (2 * n - 1) * rest
    return total + 64 * 10 + 10


@pytest.mark.parametrize("depth,expected", [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018),
                                            (110, 1_727_962)])
def test_plain_cifar_has_exactly_the_resnets_parameters(depth: int, expected: int) -> None:
    assert cifar_params((depth - 2) // 6) == expected
    plain, res = create_model(f"plain{depth}"), create_model(f"resnet{depth}")
    assert n_params(plain) == n_params(res) == expected
    blocks = [m for m in plain.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == (depth - 2) // 2
    assert all(not b.residual and b.downsample is None for b in blocks)
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # every weighted layer but the fc is a 3x3 conv
    assert all(tuple(c.kernel_size) == (3, 3) for c in convs)


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_plain_cifar_shapes(depth: int) -> None:
    model = create_model(f"plain{depth}").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stages = model.forward_stages(x)
        logits = model(x)
    assert logits.shape == (2, 10)
    assert [tuple(t.shape) for t in stages.values()] == [(2, 16, 32, 32), (2, 16, 32, 32), (2, 32, 16, 16),
                                                         (2, 64, 8, 8)]


@pytest.mark.parametrize("depth,resnet,projections", [
    (18, 11_689_512, 64 * 128 + 256 + 128 * 256 + 512 + 256 * 512 + 1024),
    (34, 21_797_672, 64 * 128 + 256 + 128 * 256 + 512 + 256 * 512 + 1024),
])
def test_plain_imagenet_is_the_resnet_without_projection_shortcuts(depth: int, resnet: int, projections: int) -> None:
    plain = create_model(f"plain{depth}").eval()
    assert n_params(create_model(f"resnet{depth}")) == resnet
    assert n_params(plain) == resnet - projections  # plain-34: 21.6M; its ResNet adds only the 1x1 projections
    assert not any("downsample" in name for name, _ in plain.named_modules())
    with torch.no_grad():
        assert plain(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert create_model(f"plain{depth}", num_classes=7)(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_plain_models_are_listed() -> None:
    names = list_models()
    for name in ("plain20", "plain32", "plain44", "plain56", "plain110", "plain18", "plain34"):
        assert name in names
    assert "plain1202" not in names and "plain50" not in names


def test_summary_of_a_plain_net(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "plain56"]) == 0
    out = capsys.readouterr().out
    assert "853,018" in out and "conv4_x" in out
