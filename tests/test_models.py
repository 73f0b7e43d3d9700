"""The model family against the paper's numbers, torchvision's and timm's implementations, and its own API."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from resnets import UserError, create_model, load_weights, save_weights, summary
from resnets.models import ModelCard, ResNet, ZeroPadShortcut, list_models, model_family
from resnets.models.registry import CIFAR_DEPTHS, PLAIN_CIFAR_DEPTHS, PLAIN_IMAGENET_DEPTHS
from resnets.models.resnet import VARIANTS

IMAGENET_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
# Multiply-adds at 1x3x224x224, in billions: v1.5 = torchvision's published figures; v1 = the paper's nets.
GMACS_V15 = {18: 1.814, 34: 3.664, 50: 4.089, 101: 7.801, 152: 11.514}
GMACS_V1 = {18: 1.814, 34: 3.664, 50: 3.858, 101: 7.570, 152: 11.282}
# Pre-activation, from v1.5: each BN is sized to the input of the conv it precedes, not to the output of the one
# it followed; the 4 (18/34: 3) projections lose their BN; a final BN-ReLU is added; layer1.0 has no BN before
# its first conv (it uses the stem's). ResNet-18:
# 11,689,512 - 2*(128+256+512) + 2*512 - 2*(64+128+256) - 2*64 = 11,687,720; ResNet-50: 25,557,032
# - 2*(256+512+1024+2048) + 2*2048 - 4*(128+256+512) - 2*(64+192) = 25,549,352.
PREACT_PARAMS = {18: 11_687_720, 34: 21_795_880, 50: 25_549_352, 101: 44_541_480, 152: 60_185_128}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny inputs gain nothing from threads; on shared cores, extra threads only spin. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def meta_model(name: str, **kwargs: object) -> nn.Module:
    """A model without storage: enough for parameter counts, shapes and MACs, at no cost."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics, so a misplaced BN cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 0.5 + 0.75)


def max_logit_diff(ours: nn.Module, ref: nn.Module, size: int = 48) -> float:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (ours.eval()(x) - ref.eval()(x)).abs().max().item()


# --- the paper's numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", IMAGENET_PARAMS)
def test_imagenet_parameter_counts(depth: int) -> None:
    assert n_params(meta_model(f"resnet{depth}")) == IMAGENET_PARAMS[depth]
    assert n_params(meta_model(f"resnet{depth}", variant="v1")) == IMAGENET_PARAMS[depth]  # stride moves only


@pytest.mark.parametrize("depth", CIFAR_PARAMS)
def test_cifar_parameter_counts_option_a(depth: int) -> None:
    assert n_params(meta_model(f"resnet{depth}")) == CIFAR_PARAMS[depth]


@pytest.mark.parametrize("depth", IMAGENET_PARAMS)
def test_macs_at_224_are_counted_exactly(depth: int) -> None:
    v15 = summary(meta_model(f"resnet{depth}"), (1, 3, 224, 224)).total_macs
    v1 = summary(meta_model(f"resnet{depth}", variant="v1"), (1, 3, 224, 224)).total_macs
    assert round(v15 / 1e9, 3) == GMACS_V15[depth]
    assert round(v1 / 1e9, 3) == GMACS_V1[depth]


# --- weight compatibility ----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", IMAGENET_PARAMS)
def test_torchvision_state_dict_loads_strictly_and_logits_agree(depth: int) -> None:
    torch.manual_seed(depth)
    ref = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    randomize_batchnorm(ref, depth)
    ours = meta_model(f"resnet{depth}")  # v1.5, torchvision's layout; assign=True takes the tensors as they are
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    assert max_logit_diff(ours, ref) < 1e-5


def test_v1_puts_the_stride_on_the_first_1x1_and_v15_on_the_3x3() -> None:
    v1, v15 = meta_model("resnet50", variant="v1"), meta_model("resnet50")
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    for model in (v1, v15):  # the projection strides in both; conv2_x (layer1) never strides
        assert model.layer2[0].downsample[0].stride == (2, 2)
        assert all(m.stride == (1, 1) for m in model.layer1.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", ["resnet18d", "resnet50d"])
def test_d_variant_matches_timm(name: str) -> None:
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False)
    randomize_batchnorm(ref, 1)
    ours = create_model(name.removesuffix("d"), variant="d")
    keys = set(ours.state_dict())
    for key in ("conv1.0.weight", "conv1.1.weight", "conv1.3.weight", "conv1.4.weight", "conv1.6.weight",
                "bn1.weight", "layer2.0.downsample.1.weight", "layer2.0.downsample.2.running_var"):
        assert key in keys
    assert isinstance(ours.layer2[0].downsample[0], nn.AvgPool2d)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert max_logit_diff(ours, ref) < 1e-5


# --- variants and options ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20"])
def test_preact_forward(name: str) -> None:
    model = create_model(name, variant="preact").eval()
    assert model.final_bn is not None
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("depth", PREACT_PARAMS)
def test_preact_parameter_counts(depth: int) -> None:
    assert n_params(meta_model(f"resnet{depth}", variant="preact")) == PREACT_PARAMS[depth]


@pytest.mark.parametrize("depth", [20, 110])
def test_preact_cifar_parameter_counts(depth: int) -> None:
    # Option A: the v1 net's BN channels, moved before the convs (stem BN shared by layer1.0, final BN-ReLU).
    assert n_params(meta_model(f"resnet{depth}", variant="preact")) == CIFAR_PARAMS[depth]
    # Option B: plus the two 1x1 projections, with no BN of their own.
    assert n_params(meta_model(f"resnet{depth}", variant="preact", shortcut="B")) == CIFAR_PARAMS[depth] + 2_560


def test_earlier_preact_weights_with_a_first_unit_bn_are_refused_with_the_reason() -> None:
    model = create_model("resnet20", variant="preact")
    state = dict(model.state_dict())
    bn = nn.BatchNorm2d(16)
    state.update({f"layer1.0.bn1.{k}": v for k, v in bn.state_dict().items()})
    with pytest.raises(UserError, match=r"weights do not fit resnet20: they hold layer1.0.bn1, the extra BN-ReLU"):
        load_weights(model, state)
    del state["layer1.0.bn1.weight"], state["fc.bias"]  # any other mismatch: the usual listing
    with pytest.raises(UserError, match=r"missing 1 key\(s\): fc.bias; unexpected 4 key\(s\): layer1.0.bn1"):
        load_weights(model, state)


# --- pre-activation against an independent reference -------------------------------------------------------
#
# He, Zhang, Ren and Sun 2016, "Identity Mappings in Deep Residual Networks": x_{l+1} = x_l + F(x_l), with
# F = conv(relu(bn(conv(relu(bn(x)))))) (Fig. 4e; the bottleneck: three BN-ReLU-conv). A unit that changes
# the shape projects with a 1x1 convolution (no BN) the same pre-activated input its residual branch gets, as
# the authors' code does (KaimingHe/resnet-1k-layers, "common BN, ReLU"). The first unit's activation is the
# one right after conv1, before the split; the last addition is followed by an extra BN-ReLU (appendix). So
# do fb.resnet.torch's preresnet.lua (stage 1's first unit "no_preact" after a conv-BN-ReLU-maxpool stem for
# ImageNet, "both_preact" right after conv1 for CIFAR) and resnet-1k-layers (conv1, then "common BN, ReLU").
# Written from those equations with its own parameter names, not from resnets.models.blocks.

Params = dict[str, torch.Tensor]


class Tracked(dict):
    """A parameter dict that records which names were read."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return super().__getitem__(key)


def _bn_relu(p: Params, name: str, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(F.batch_norm(x, p[f"{name}.mean"], p[f"{name}.var"], p[f"{name}.gamma"], p[f"{name}.beta"],
                                   training=False, eps=1e-5))


def _conv(p: Params, name: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    w = p[name]
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)


def paper_preact_resnet(p: Params, x: torch.Tensor, *, kind: str, stages: list[int], imagenet: bool,
                        projection: bool) -> torch.Tensor:
    """Logits of the full pre-activation ResNet whose parameters are ``p`` (names as in the paper's units)."""
    a = F.conv2d(x, p["conv1"], stride=2 if imagenet else 1, padding=3 if imagenet else 1)
    a = _bn_relu(p, "conv1_bn", a)  # the first unit's activation, after conv1, before splitting
    if imagenet:
        a = F.max_pool2d(a, 3, 2, 1)
    for s, count in enumerate(stages):
        for b in range(count):
            unit, stride = f"conv{s + 2}_{b + 1}", (2 if s > 0 and b == 0 else 1)
            pre = a if s == 0 and b == 0 else _bn_relu(p, f"{unit}.bn_a", a)
            if kind == "basic":
                r = _conv(p, f"{unit}.conv_a", pre, stride)
                r = _conv(p, f"{unit}.conv_b", _bn_relu(p, f"{unit}.bn_b", r))
            else:  # 1x1 reduce, 3x3 (strided), 1x1 expand
                r = _conv(p, f"{unit}.conv_a", pre)
                r = _conv(p, f"{unit}.conv_b", _bn_relu(p, f"{unit}.bn_b", r), stride)
                r = _conv(p, f"{unit}.conv_c", _bn_relu(p, f"{unit}.bn_c", r))
            if r.shape == a.shape:
                shortcut = a  # identity: x_l itself
            elif projection:
                shortcut = F.conv2d(pre, p[f"{unit}.proj"], stride=stride)
            else:  # the 2015 paper's option A, on the same input: subsample, zero channels
                sub = pre[..., ::stride, ::stride]
                shortcut = torch.cat([sub, torch.zeros_like(sub)[:, : r.shape[1] - sub.shape[1]]], 1)
            a = shortcut + r
    a = _bn_relu(p, "final_bn", a)  # the extra activation after the last addition
    return F.linear(a.mean((2, 3)), p["fc.weight"], p["fc.bias"])


def paper_names(ours: dict[str, torch.Tensor]) -> Tracked:
    """Our preact state dict under the reference's names (the stem's ``bn1`` is ``conv1_bn``)."""
    bn = {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"}
    block = {"bn1": "bn_a", "conv1": "conv_a", "bn2": "bn_b", "conv2": "conv_b", "bn3": "bn_c", "conv3": "conv_c"}
    out = Tracked()
    for key, value in ours.items():
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked":
            continue
        if parts[0] == "conv1":
            out["conv1"] = value
        elif parts[0] == "bn1":
            out[f"conv1_bn.{bn[parts[1]]}"] = value
        elif parts[0] == "final_bn":
            out[f"final_bn.{bn[parts[1]]}"] = value
        elif parts[0] == "fc":
            out[key] = value
        else:
            stage, index, layer = int(parts[0].removeprefix("layer")), int(parts[1]), parts[2]
            unit = f"conv{stage + 1}_{index + 1}"
            if layer == "downsample":
                out[f"{unit}.proj"] = value
            elif layer.startswith("bn"):
                out[f"{unit}.{block[layer]}.{bn[parts[3]]}"] = value
            else:
                out[f"{unit}.{block[layer]}"] = value
    return out


PREACT_CASES = [  # name, options, block kind, blocks per stage, ImageNet stem, projection shortcuts, input side
    ("resnet20", {}, "basic", [3, 3, 3], False, False, 32),
    ("resnet20", {"shortcut": "B"}, "basic", [3, 3, 3], False, True, 32),
    ("resnet18", {}, "basic", [2, 2, 2, 2], True, True, 64),
    ("resnet50", {}, "bottleneck", [3, 4, 6, 3], True, True, 64),
]


@pytest.mark.parametrize("name, options, kind, stages, imagenet, projection, size", PREACT_CASES)
def test_preact_matches_the_papers_equations(name: str, options: dict, kind: str, stages: list[int],
                                             imagenet: bool, projection: bool, size: int) -> None:
    torch.manual_seed(0)
    ours = create_model(name, variant="preact", **options)
    randomize_batchnorm(ours, 3)
    with torch.no_grad():
        ours.fc.bias.normal_()
    params = paper_names(ours.state_dict())
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours.eval()(x)
        ref = paper_preact_resnet(params, x, kind=kind, stages=stages, imagenet=imagenet, projection=projection)
    assert params.read == set(params)  # every parameter of ours is used by the reference
    assert got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-4, atol=1e-5), (got - ref).abs().max()


def test_preact_projection_takes_the_pre_activated_input() -> None:
    ours = create_model("resnet18", variant="preact")
    randomize_batchnorm(ours, 4)
    block = ours.eval().layer2[0]
    seen: list[torch.Tensor] = []
    block.downsample.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        block(x)
        assert torch.equal(seen[0], torch.relu(block.bn1(x)))
    assert [type(m) for m in block.downsample] == [nn.Conv2d]  # no BN on the projection


def test_preact_first_unit_shares_the_activation_after_conv1() -> None:
    ours = create_model("resnet20", variant="preact", shortcut="B")
    assert ours.layer1[0].bn1 is None and all(b.bn1 is not None for b in [*ours.layer1[1:], *ours.layer2])
    assert not any(k.startswith("layer1.0.bn1.") for k in ours.state_dict())
    randomize_batchnorm(ours, 5)
    params = paper_names(ours.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours.eval()(x)
        ref = paper_preact_resnet(params, x, kind="basic", stages=[3, 3, 3], imagenet=False, projection=True)
    assert params.read == set(params) and torch.allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_zero_init_residual_zeroes_the_last_layer_of_every_block() -> None:
    r50, r18 = create_model("resnet50", zero_init_residual=True), create_model("resnet18", zero_init_residual=True)
    blocks50 = [b for s in (r50.layer1, r50.layer2, r50.layer3, r50.layer4) for b in s]
    assert len(blocks50) == 16 and all((b.bn3.weight == 0).all() for b in blocks50)
    assert all((b.bn2.weight == 1).all() for b in blocks50)  # only the last BN
    assert all((b.bn2.weight == 0).all() for s in (r18.layer1, r18.layer4) for b in s)
    pre = create_model("resnet50", variant="preact", zero_init_residual=True)
    assert all((b.conv3.weight == 0).all() for s in (pre.layer1, pre.layer4) for b in s)
    pre18 = create_model("resnet18", variant="preact", zero_init_residual=True)
    assert all((b.conv2.weight == 0).all() for b in pre18.layer3)
    default = create_model("resnet18")
    assert (default.layer1[0].bn2.weight == 1).all()
    plain = create_model("plain20", zero_init_residual=True)  # no shortcut: zeroing would cut the signal
    assert (plain.layer1[0].bn2.weight == 1).all()


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return create_model("resnet50").eval()


@pytest.mark.parametrize("height, width, features", [(32, 32, (1, 1)), (33, 47, (2, 2)), (64, 97, (2, 4)),
                                                     (100, 100, (4, 4))])
def test_any_input_size_from_32_works(height: int, width: int, features: tuple[int, int]) -> None:
    model = create_model("resnet18").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, height, width))
        assert feats.shape == (1, 512, *features)  # ceil(side / 32)
        assert model.forward_head(feats).shape == (1, 1000)


def test_resnet50_at_32_gives_a_1x1_map(resnet50: nn.Module) -> None:
    with torch.no_grad():
        assert resnet50.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 2048, 1, 1)


def test_forward_features_head_and_stages(resnet50: nn.Module) -> None:
    model = resnet50
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 2048, 2, 2)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 2048)
        assert torch.equal(model.forward_head(feats), model(x))
        stages = model.forward_stages(x)
    assert {k: tuple(v.shape[1:]) for k, v in stages.items()} == {
        "stem": (64, 16, 16), "layer1": (256, 16, 16), "layer2": (512, 8, 8),
        "layer3": (1024, 4, 4), "layer4": (2048, 2, 2),
    }
    assert torch.equal(stages["layer4"], feats)

    cifar = create_model("resnet20").eval()
    with torch.no_grad():
        stages = cifar.forward_stages(torch.randn(1, 3, 32, 32))
    assert [tuple(v.shape[1:]) for v in stages.values()] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]


# --- CIFAR shortcuts and plain nets ------------------------------------------------------------------------


def test_shortcut_a_subsamples_and_pads_zero_channels() -> None:
    x = torch.arange(32.0).reshape(1, 2, 4, 4)  # channel 0 holds 0..15, channel 1 holds 16..31, row-major
    shortcut = ZeroPadShortcut(2, 4, stride=2)
    expected = torch.tensor([[[[0.0, 2.0], [8.0, 10.0]],
                              [[16.0, 18.0], [24.0, 26.0]],
                              [[0.0, 0.0], [0.0, 0.0]],
                              [[0.0, 0.0], [0.0, 0.0]]]])
    assert torch.equal(shortcut(x), expected)
    assert list(shortcut.parameters()) == [] and list(shortcut.buffers()) == []


def test_cifar_option_a_has_no_shortcut_parameters_and_b_adds_the_projections() -> None:
    a, b = meta_model("resnet20"), meta_model("resnet20", shortcut="B")
    assert isinstance(a.layer2[0].downsample, ZeroPadShortcut) and isinstance(a.layer3[0].downsample, ZeroPadShortcut)
    assert not any("downsample" in k for k in a.state_dict())
    projections = n_params(b.layer2[0].downsample) + n_params(b.layer3[0].downsample)
    assert projections == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1x1 conv + BN, twice
    assert n_params(b) == CIFAR_PARAMS[20] + projections == 272_474
    assert b.layer1[0].downsample is None  # stage 1 keeps its shape: identity


@pytest.mark.parametrize("depth", PLAIN_CIFAR_DEPTHS)
def test_plain_cifar_nets_match_option_a_and_have_no_shortcuts(depth: int) -> None:
    plain = meta_model(f"plain{depth}")
    assert n_params(plain) == CIFAR_PARAMS[depth]
    blocks = [b for s in (plain.layer1, plain.layer2, plain.layer3) for b in s]
    assert len(blocks) == 3 * CIFAR_DEPTHS[depth]
    assert all(b.downsample is None and not b.residual for b in blocks)


@pytest.mark.parametrize("depth", PLAIN_IMAGENET_DEPTHS)
def test_plain_imagenet_nets_are_resnets_without_projections(depth: int) -> None:
    plain, res = meta_model(f"plain{depth}"), meta_model(f"resnet{depth}")
    projections = sum(n_params(m) for name, m in res.named_modules() if name.endswith("downsample"))
    assert n_params(plain) == IMAGENET_PARAMS[depth] - projections
    assert not any(name.endswith("downsample") for name, m in plain.named_modules())


def test_plain_block_adds_no_shortcut() -> None:
    plain = create_model("plain20").eval()
    block = plain.layer1[0]
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
        assert torch.equal(block(x), expected)


# --- layout and model card -----------------------------------------------------------------------------------

# sha256 (first 16 hex digits) of the JSON [[key, shape], ...] of every state dict of the model, over its variants
# (CIFAR: v1, v1.5, preact x shortcut A, B), recorded from the code before ResNet and CifarResNet shared one
# stage builder. Weights files, summary names and torchvision/timm loading depend on these keys.
STATE_DICT_DIGESTS = {
    "resnet18": "0d2ed050d14da58f", "resnet34": "3fbb2b9917967d13", "resnet50": "1743e8d9c68a0192",
    "resnet101": "980bdb47f7eaa9ea", "resnet152": "fe87ae6b12434c20", "plain18": "cb8912e2881f28d6",
    "plain34": "215751f73995d12a", "resnet20": "2cf3a1ad94c343a3", "resnet32": "1ab17086e8f2891b",
    "resnet44": "2dc7ea38d7adc002", "resnet56": "a52c020be8f9ff6d", "resnet110": "d21632c5e2d03f96",
    "resnet1202": "3c7b99617ff3937b", "plain20": "5067aa6a4a21048b", "plain32": "6790cd9c263c54b3",
    "plain44": "a52a8f945ce8a5fe", "plain56": "2115af73b36c0cc3", "plain110": "dc14424aa411396c",
}


# The CIFAR speed-record nets (issue 26) have no variants or shortcut options: one digest of their own layout,
# recorded when they were added.
SPEED_NET_DIGESTS = {"resnet9": "b11badf09a14fc02", "resnet18-cifar": "c07bd9ddb5605158"}


def test_every_registered_net_has_a_recorded_layout() -> None:
    assert set(list_models()) == set(STATE_DICT_DIGESTS) | set(SPEED_NET_DIGESTS)


@pytest.mark.parametrize("name", list(STATE_DICT_DIGESTS))
def test_state_dict_keys_and_shapes_are_unchanged(name: str) -> None:
    cifar = model_family(name) == "cifar"
    digest = hashlib.sha256()
    for variant in ("v1", "v1.5", "preact") if cifar else VARIANTS:
        for options in ({"shortcut": "A"}, {"shortcut": "B"}) if cifar else ({},):
            state = meta_model(name, variant=variant, **options).state_dict()
            digest.update(json.dumps([[k, list(t.shape)] for k, t in state.items()]).encode())
    assert digest.hexdigest()[:16] == STATE_DICT_DIGESTS[name]


@pytest.mark.parametrize("name", list(SPEED_NET_DIGESTS))
def test_speed_net_state_dict_keys_and_shapes_are_unchanged(name: str) -> None:
    state = meta_model(name).state_dict()
    digest = hashlib.sha256(json.dumps([[k, list(t.shape)] for k, t in state.items()]).encode())
    assert digest.hexdigest()[:16] == SPEED_NET_DIGESTS[name]


@pytest.mark.parametrize("name, stem, reductions, channels", [
    ("resnet50", 4, [4, 8, 16, 32], [64, 256, 512, 1024, 2048]),
    ("resnet18", 4, [4, 8, 16, 32], [64, 64, 128, 256, 512]),
    ("resnet20", 1, [1, 2, 4], [16, 16, 32, 64]),
])
def test_feature_info_gives_each_stage_its_channels_and_reduction(name: str, stem: int, reductions: list[int],
                                                                  channels: list[int]) -> None:
    model = meta_model(name)
    assert model.feature_info == [{"module": "stem", "num_chs": channels[0], "reduction": stem}] + [
        {"module": f"layer{i + 1}", "num_chs": c, "reduction": r}
        for i, (c, r) in enumerate(zip(channels[1:], reductions, strict=True))]
    assert model.stage_names == [f"layer{i + 1}" for i in range(len(reductions))]
    assert model.num_features == channels[-1] == model.fc.in_features


def test_model_card_carries_the_spec_classes_and_normalization() -> None:
    model = meta_model("resnet20", variant="preact", shortcut="B", num_classes=3)
    assert model.card == ModelCard("resnet20", "preact", 3, {"shortcut": "B"})
    assert model.spec == {"name": "resnet20", "variant": "preact", "num_classes": 3, "shortcut": "B"}
    assert (model.num_classes, model.variant, model.classes, model.normalization) == (3, "preact", None, None)
    with pytest.raises(AttributeError):
        model.spec = {}  # type: ignore[misc]
    model.classes = ["a", "b", "c"]
    model.normalization = {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert model.card.classes == ["a", "b", "c"] and model.card.normalization == {"mean": [0.5] * 3,
                                                                                  "std": [0.25] * 3}
    assert "card" not in dict(model.named_modules()) and "classes" not in model.state_dict()
    model.reset_classifier(5)
    assert model.spec["num_classes"] == model.num_classes == model.fc.out_features == 5 and model.classes is None


def test_a_net_constructed_directly_has_an_unnamed_card() -> None:
    with torch.device("meta"):
        model = ResNet("basic", (2, 2, 2, 2), 7, variant="d")
    assert model.card == ModelCard(None, "d", 7)
    with pytest.raises(UserError, match="no registry name; build it with resnets.create_model"):
        save_weights(model, "never-written.safetensors")


# --- mistakes ----------------------------------------------------------------------------------------------


def test_unknown_name_variant_and_option_are_one_line_user_errors() -> None:
    with pytest.raises(UserError, match="unknown model 'resnet-50'; did you mean 'resnet50'") as exc:
        create_model("resnet-50")
    assert "\n" not in str(exc.value) and "resnet152" in str(exc.value)
    with pytest.raises(UserError, match="unknown variant 'v2' for resnet50; choose one of v1.5, v1, d, preact"):
        create_model("resnet50", variant="v2")
    with pytest.raises(UserError, match="resnet20: CIFAR ResNets come in variants"):
        create_model("resnet20", variant="d")
    with pytest.raises(UserError, match="unknown option.*shortcut for resnet50; allowed: in_chans, zero_init"):
        create_model("resnet50", shortcut="A")
    with pytest.raises(UserError, match="unknown shortcut 'C'"):
        create_model("resnet20", shortcut="C")
