"""The fast CPU path: batch norm folding is exact, bf16 stays close to float32; and the inference bench."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets import create_model
from resnets.data import extract_sample, read_rgb
from resnets.infer import FastModel, bench_infer, fold_batchnorm
from resnets.infer.bench import calibrate_batchnorm
from resnets.infer.fastpath import cpu_inference_precision
from resnets.infer.loading import CIFAR_MEAN, CIFAR_STD, preprocess


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def sample_batch() -> torch.Tensor:
    """48 sample test images at 32x32, normalised."""
    root = extract_sample() / "test"
    files = [p for cls in sorted(root.iterdir()) for p in sorted(cls.iterdir())[:5]][:48]
    return torch.stack([preprocess(read_rgb(p), "cifar", CIFAR_MEAN, CIFAR_STD) for p in files])


@pytest.mark.parametrize("name,options,size", [
    ("resnet20", {}, 32),
    ("resnet20", {"shortcut": "B"}, 32),
    ("resnet18", {}, 64),
    ("resnet18", {"variant": "d"}, 64),
    ("resnet18", {"variant": "preact"}, 64),
])
def test_folded_model_equals_unfolded_in_float32(name: str, options: dict, size: int) -> None:
    torch.manual_seed(0)
    model = randomise_batchnorm(create_model(name, **options))
    keys = list(model.state_dict())
    folded = fold_batchnorm(model)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    if options.get("variant") == "preact":
        assert left < sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the stem's is folded
    else:
        assert left == 0
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        ref, got = model(x), folded(x)
        ref_f = model.forward_head(model.forward_features(x), pre_logits=True)
        got_f = folded.forward_head(folded.forward_features(x), pre_logits=True)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert (got_f - ref_f).abs().max() <= 1e-5 * ref_f.abs().max()
    assert list(model.state_dict()) == keys  # the original keeps its batch norms


def trained_like(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """Batch norm statistics measured on real images, random affine parameters, and some near-silent channels
    (variance far below eps, as trained nets have), so a fold that mishandles eps, mean or bias shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[torch.rand(m.out_channels, generator=gen) < 0.15] *= 1e-3
    calibrate_batchnorm(model, images)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
    return model.eval()


@pytest.mark.parametrize("name,options,size", [
    ("resnet20", {}, 32),
    ("resnet20", {"shortcut": "B"}, 32),
    ("resnet18", {}, 64),
    ("resnet18", {"variant": "d"}, 64),
    ("resnet50", {"variant": "v1"}, 64),
    ("resnet18", {"variant": "preact"}, 64),
])
def test_fast_path_fp32_equals_the_unmodified_model_on_real_images(
        sample_batch: torch.Tensor, name: str, options: dict, size: int) -> None:
    """FastModel (BN folded, channels_last, float32) against the eager model it was built from."""
    torch.manual_seed(0)
    x = sample_batch if size == 32 else F.interpolate(sample_batch[:16], size=size, mode="bilinear")
    model = trained_like(create_model(name, **options), x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(x)
        ref_f = model.forward_head(model.forward_features(x), pre_logits=True)
    fast = FastModel(model, "fp32")
    got, got_f = fast(x), fast.embed(x)
    assert fast.precision == "fp32" and got.dtype == torch.float32
    # float32 rounding of the folded weights measured at <= 4e-6 of the largest logit; a fold without eps
    # (or with eps 1e-3) is off by 0.25 to 20 times it
    assert (got - ref).abs().max() <= 2e-5 * ref.abs().max()
    assert (got_f - ref_f).abs().max() <= 2e-5 * ref_f.abs().max()
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the model is untouched


def test_fast_path_fp32_matches_eager(sample_batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20")
    calibrate_batchnorm(model, sample_batch[:32])
    fast = FastModel(model, "fp32")
    with torch.no_grad():
        ref = model(sample_batch)
    got = fast(sample_batch)
    assert got.dtype == torch.float32 and (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert "channels_last" in fast.describe()


def test_fast_path_bf16_close_to_float32(sample_batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20")
    calibrate_batchnorm(model, sample_batch[:32])
    fast = FastModel(model, "bf16")
    with torch.no_grad():
        ref = model(sample_batch)
        ref_f = model.forward_head(model.forward_features(sample_batch), pre_logits=True)
    got, got_f = fast(sample_batch), fast.embed(sample_batch)
    agreement = (got.argmax(1) == ref.argmax(1)).float().mean().item()
    rel = ((got - ref).norm() / ref.norm()).item()
    rel_f = ((got_f - ref_f).norm() / ref_f.norm()).item()
    assert agreement >= 0.9, agreement
    assert rel < 0.05 and rel_f < 0.05, (rel, rel_f)


def test_precision_names() -> None:
    # what "auto" chooses is tested against the probe in test_precision.py
    assert cpu_inference_precision("fp32") == "fp32" and cpu_inference_precision("bf16") == "bf16"
    assert cpu_inference_precision("auto") == "fp32"  # nothing to time without a model
    with pytest.raises(ValueError, match="unknown precision"):
        cpu_inference_precision("int8")


def test_bench_infer_small_run() -> None:
    report = bench_infer("resnet20", batch=4, iters=2, warmup=1, agreement_images=16, matmul_size=256, onnx=False)
    names = [p.name for p in report.paths]
    assert len(names) == 3 and names[0].startswith("resnets resnet20 eager fp32")  # ONNX: see test_export_*
    _ref, fp32, fast = report.paths  # fidelity is measured against the first, eager path
    assert fp32.top1_agreement == 1.0 and fp32.rel_error < 1e-5
    assert fast.rel_error < 0.05 and all(p.images_per_s > 0 and p.p99_ms >= p.p50_ms for p in report.paths)
    assert report.gflop_per_image == pytest.approx(0.0815, rel=0.05) and report.matmul_tflops_bf16 > 0


def test_bench_timing_interleaves_paths_in_rounds() -> None:
    from resnets.infer.bench import time_interleaved

    calls: list[str] = []

    def path(name: str):
        def run(x: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            return x
        return run

    times = time_interleaved([path("a"), path("b")], torch.zeros(1), iters=5, warmup=1, rounds=3)
    assert [len(t) for t in times] == [5, 5] and all(s >= 0 for t in times for s in t)
    # warm-up a, b; then rounds of 2, 2, 1 batches per path, a before b in each round
    assert "".join(calls) == "ab" + "aabb" + "aabb" + "ab"
