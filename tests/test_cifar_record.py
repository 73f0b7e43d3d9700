"""Issue 26: the speed records' nets (resnet9, resnet18-cifar) against their published definitions, the patch
whitening layer, the alternating flip and cutout, flip-translate TTA, and a cifar-record run that resumes
bit-identically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resnets.cli import main
from resnets.data.augment import TTAModel, apply_cutout, tta_views
from resnets.data.batches import DeviceBatches
from resnets.data.tensors import ImageTensors
from resnets.models import create_model
from resnets.models.cifar_speed import PatchWhitening
from resnets.train import resolve_config, train
from resnets.weights import load_model, save_weights


def _conv_bn(cin: int, cout: int) -> int:
    return cin * cout * 9 + 2 * cout  # 3x3 conv without bias, BN scale and shift


def test_resnet9_is_the_dawnbench_net() -> None:
    # Page's ResNet-9: prep 64; layer1 128 + residual(128, 128); layer2 256; layer3 512 + residual(512, 512);
    # a bias-free linear 512 -> 10
    published = (_conv_bn(3, 64) + _conv_bn(64, 128) + 2 * _conv_bn(128, 128) + _conv_bn(128, 256)
                 + _conv_bn(256, 512) + 2 * _conv_bn(512, 512) + 512 * 10)
    model = create_model("resnet9").eval()
    assert sum(p.numel() for p in model.parameters()) == published == 6_573_120
    x = torch.randn(2, 3, 32, 32)
    stages = model.forward_stages(x)
    assert [tuple(t.shape[1:]) for t in stages.values()] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    pooled = stages["layer3"].amax((2, 3))  # a global max pool, then the linear head times 0.125
    torch.testing.assert_close(model(x), 0.125 * model.fc(pooled))
    assert model.fc.bias is None


def test_resnet18_cifar_is_kuangliu_resnet18() -> None:
    model = create_model("resnet18-cifar").eval()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3) and "maxpool" not in model.stem_names
    stages = model.forward_stages(torch.randn(2, 3, 32, 32))
    assert [tuple(t.shape[1:]) for t in stages.values()] == [(64, 32, 32), (64, 32, 32), (128, 16, 16),
                                                           (256, 8, 8), (512, 4, 4)]
    assert create_model("resnet18-cifar", num_classes=100).fc.out_features == 100


def test_summary_shows_the_speed_nets(capsys: pytest.CaptureFixture[str]) -> None:
    for name, params in (("resnet9", "6,573,120"), ("resnet18-cifar", "11,173,962")):
        assert main(["summary", name]) == 0
        out = capsys.readouterr().out
        assert params in out and "conv4_x" in out, out


def test_whitened_net_saves_and_loads_its_whitening(tmp_path: Path) -> None:
    model = create_model("resnet9", whiten=True)
    model.init_whitening(torch.randn(8, 3, 32, 32))
    save_weights(model, tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors")
    assert loaded.spec["whiten"] is True
    torch.testing.assert_close(loaded.whiten.weight, model.whiten.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no whitening layer"):
        create_model("resnet9").init_whitening(torch.randn(2, 3, 32, 32))


def _patches(images: np.ndarray, k: int = 3) -> np.ndarray:
    """Every k x k patch (no padding) of N x C x H x W ``images``, as rows in unfold's (c, dy, dx) order."""
    windows = np.lib.stride_tricks.sliding_window_view(images, (k, k), axis=(2, 3))  # N C H' W' k k
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1] * k * k)


def test_whitening_is_the_patch_covariance_inverse_square_root() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 1, 10, 10, generator=g)
    images = torch.cat([base, 0.5 * base + 0.1 * torch.randn(12, 1, 10, 10, generator=g),
                        torch.randn(12, 1, 10, 10, generator=g) + 3.0], 1)  # correlated channels, an offset
    layer = PatchWhitening(3)
    layer.init_from(images)
    w = layer.weight.double().reshape(27, 27).numpy()
    patches = _patches(images.double().numpy())
    cov = np.cov(patches, rowvar=False) + layer.eps * np.eye(27)
    assert np.allclose(w, w.T, atol=1e-6)  # symmetric ...
    assert np.all(np.linalg.eigvalsh(w) > 0)  # ... positive definite ...
    assert np.allclose(w @ w @ cov, np.eye(27), atol=1e-5)  # ... and its square inverts the covariance
    # the layer maps each patch p to W (p - mean): its output at interior pixels is white (up to eps)
    tight = PatchWhitening(3, eps=1e-9)
    tight.init_from(images)
    out = tight(images)[:, :, 1:-1, 1:-1].permute(0, 2, 3, 1).reshape(-1, 27).double()
    assert torch.allclose(out.mean(0), torch.zeros(27, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(torch.cov(out.T), torch.eye(27, dtype=torch.float64), atol=1e-3)


def _marked_images(n: int) -> ImageTensors:
    """n 8x8 images whose left half is bright and right half dark, so a flipped copy is recognisable."""
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[..., :4] = 200
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # which image (read back before normalising)
    return ImageTensors(images, torch.arange(n), [str(i) for i in range(n)])


def _flipped_by_image(batches: DeviceBatches, epoch: int) -> dict[int, bool]:
    batches.set_epoch(epoch)
    seen: dict[int, bool] = {}
    for x, y in batches:
        for image, label in zip(x, y.tolist(), strict=True):
            seen[label] = bool(image[0, :, 4:].mean() > image[0, :, :4].mean())  # bright half on the right
    return seen


@pytest.mark.parametrize("mode", ["alternate", "random"])
def test_alternating_flip_shows_every_image_both_ways_in_two_epochs(mode: str) -> None:
    batches = DeviceBatches(_marked_images(64), 16, train=True, mean=[0.5] * 3, std=[0.25] * 3, pad=0,
                            flip_mode=mode, seed=7)
    for first in (0, 2, 5):
        a, b = _flipped_by_image(batches, first), _flipped_by_image(batches, first + 1)
        assert set(a) == set(b) == set(range(64))
        both_ways = all(a[i] != b[i] for i in range(64))
        assert both_ways == (mode == "alternate")  # random flips show some images the same way twice
        assert 10 < sum(a.values()) < 54  # about half mirrored in each epoch


def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    batch = torch.ones(3, 2, 10, 10)
    corners = torch.tensor([[2, 3], [-2, -2], [8, 0]])  # inside; off the top-left; off the bottom
    out = apply_cutout(batch, corners, 4)
    assert [int((o[0] == 0).sum()) for o in out] == [16, 4, 8]
    assert torch.all(out[0, :, 2:6, 3:7] == 0) and torch.all(out[1, :, :2, :2] == 0)


def test_flip_translate_tta_averages_the_probabilities_of_six_views() -> None:
    model = create_model("resnet9").eval()
    x = torch.randn(2, 3, 32, 32)
    views = tta_views(x, "flip-translate")
    assert len(views) == 6 and abs(sum(w for _, w in views) - 1) < 1e-12
    assert torch.equal(views[2][0][..., :-1, :-1], x[..., 1:, 1:])  # shifted one pixel up-left
    with torch.no_grad():
        expected = sum(w * model(v).softmax(1) for v, w in views)
        torch.testing.assert_close(TTAModel(model, "flip-translate")(x).exp(), expected)


RECORD = dict(model="resnet9", recipe="cifar-record", data="sample", train_images=128, test_images=64,
              batch_size=32, epochs=2, progress=False, log_every=2, seed=5, eval_every=1, device="cpu")


def test_a_cifar_record_run_resumes_bit_identically(tmp_path: Path) -> None:
    full = train(resolve_config({**RECORD, "out": str(tmp_path / "full")}), log=lambda _: None)
    assert full.step == 8 and "val_acc" in full.final
    cut = tmp_path / "cut"
    train(resolve_config({**RECORD, "out": str(cut), "stop_after_steps": 3}), log=lambda _: None)
    train(resolve_config({**RECORD, "out": str(tmp_path / "ignored")}), resume=cut, log=lambda _: None)
    a = torch.load(full.run_dir / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert a["config"]["whiten"] and a["config"]["flip_mode"] == "alternate" and a["config"]["ema_every"] == 5
    assert a["ema"]["updates"] == 1  # steps 5 (of 8): every 5th
    for key in ("model", "ema", "optimizer"):
        _same(a[key], b[key], key)
    assert a["metrics"][-1]["val_acc"] == b["metrics"][-1]["val_acc"]
    assert torch.count_nonzero(a["model"]["whiten.weight"]) > 0  # set from the training patches, then kept


def _same(a: object, b: object, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_norm_and_bias_lr_multiplier_keeps_decay_per_step() -> None:
    from resnets.train.optim import param_groups

    model = create_model("resnet9")
    groups = param_groups(model, 5e-4, True, norm_bias_lr_mult=64.0)
    by_factor = {g["lr_factor"]: g for g in groups}
    assert set(by_factor) == {1.0, 64.0}
    assert all(p.ndim == 1 for p in by_factor[64.0]["params"])
    assert by_factor[64.0]["weight_decay"] * 64 == pytest.approx(5e-4) == by_factor[1.0]["weight_decay"]


@pytest.mark.parametrize("name", ["resnet9", "resnet18-cifar"])
def test_speed_nets_refuse_what_they_do_not_have(name: str) -> None:
    from resnets import UserError

    with pytest.raises(UserError, match="variant"):
        create_model(name, variant="preact")
    with pytest.raises(UserError, match="shortcut"):
        create_model(name, shortcut="B")
    with pytest.raises(UserError, match="--whiten"):
        resolve_config({"model": "resnet20", "whiten": True})
    other = resolve_config({"model": "resnet20", "recipe": "cifar-record"})  # the recipe's whitening is left out
    assert not other.whiten and other.flip_mode == "alternate" and other.tta == "flip-translate"
    if name == "resnet18-cifar":  # four stages: the CIFAR family's stage names would leave conv5_x training
        with pytest.raises(UserError, match="four"):
            resolve_config({"model": name, "freeze": ["conv1"]})


def test_best_checkpoint_is_the_last_one_linked_and_keeps_it_when_last_moves_on(tmp_path: Path) -> None:
    from resnets.train.checkpoint import save_checkpoint
    from resnets.train.trainer import _same_file

    def load_checkpoint(path: Path) -> dict:
        return torch.load(path, weights_only=True)

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint({"step": torch.tensor(1)}, last)
    save_checkpoint({"step": torch.tensor(0)}, best)  # an older best is replaced
    _same_file(last, best)
    save_checkpoint({"step": torch.tensor(2)}, last)  # the next epoch's last.pt: a new file renamed into place
    assert int(load_checkpoint(best)["step"]) == 1 and int(load_checkpoint(last)["step"]) == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_stop_control_answers_for_every_reason_to_stop() -> None:
    from resnets.train.stopping import DIST_READ_EVERY, StopControl

    one = StopControl(stop_after_steps=None, total_steps=100, distributed=False)
    assert not one.must_read(3) and one.reason(3, agreed=False) is None
    one.requested = True  # a callback's state.stop: read now, stop after this step
    assert one.must_read(4) and one.reason(4, agreed=False) == "stopped (on request)"
    ranks = StopControl(stop_after_steps=None, total_steps=100, distributed=True)
    ranks.requested = True  # several ranks: only a request agreed at a read stops
    assert not ranks.must_read(DIST_READ_EVERY + 1) and ranks.must_read(DIST_READ_EVERY)
    assert ranks.reason(DIST_READ_EVERY + 1, agreed=False) is None
    assert ranks.reason(DIST_READ_EVERY, agreed=True) == "stopped (on request)"
    limit = StopControl(stop_after_steps=5, total_steps=5, distributed=False)
    assert limit.reason(5, agreed=False) is None  # the run is finished at its limit: no stop
    limit = StopControl(stop_after_steps=5, total_steps=8, distributed=True)
    assert limit.must_read(5) and limit.reason(5, agreed=False) is not None and limit.reason(4, agreed=False) is None
