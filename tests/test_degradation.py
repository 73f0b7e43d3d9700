"""The degradation experiment: response statistics, settings, table, and the command end to end with resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from resnets import UserError, create_model
from resnets.cli import main
from resnets.experiments.degradation import (
    PLAIN_NOTE,
    DegradationOptions,
    model_names,
    parse_depths,
    parse_kinds,
    resolve_settings,
    results_table,
    run_degradation,
    train_config,
)
from resnets.experiments.responses import response_stds, sorted_stds


class Tiny(nn.Module):
    """An identity 3x3 conv into a BN (y = 1.5 x + 1), then a 1x1 conv + BN and a BN after a ReLU (not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=0.0)
        self.point = nn.Conv2d(1, 1, 1, bias=False)
        self.bn_point = nn.BatchNorm2d(1)
        self.bn_after_relu = nn.BatchNorm2d(1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
            self.bn.running_mean.fill_(0.0)
            self.bn.running_var.fill_(4.0)
            self.bn.weight.fill_(3.0)  # (x - 0) / 2 * 3 + 1
            self.bn.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        y = self.bn_point(self.point(y))
        return self.bn_after_relu(torch.relu(y))


def test_response_std_against_a_hand_computed_case() -> None:
    model = Tiny().train()
    one = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    two = torch.tensor([[5.0, 6.0], [7.0, 8.0]]).view(1, 1, 2, 2)
    # one batch: responses 2.5, 4, 5.5, 7 -> mean 4.75, population variance (2*2.25^2 + 2*0.75^2) / 4 = 2.8125
    (r,) = response_stds(model, [one])
    assert (r.index, r.layer, r.conv) == (1, "bn", "conv")
    assert r.std == pytest.approx(math.sqrt(2.8125), rel=1e-6)
    # two batches pool every value: 1.5 * std(1..8) = 1.5 * sqrt((8^2 - 1) / 12) = 1.5 * sqrt(5.25)
    (r,) = response_stds(model, [(one, torch.tensor([0])), (two, torch.tensor([0]))])
    assert r.std == pytest.approx(1.5 * math.sqrt(5.25), rel=1e-6)
    assert model.training  # mode restored
    assert not model.bn._forward_hooks and not model.conv._forward_hooks  # hooks removed


def test_responses_of_cifar_nets_are_every_3x3_layer_in_order() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    plain = response_stds(create_model("plain20"), [x])
    res = response_stds(create_model("resnet20"), [x])
    for layers in (plain, res):
        assert len(layers) == 19  # 20 layers = 19 3x3 convs + fc
        assert [r.index for r in layers] == list(range(1, 20))
        assert layers[0].layer == "bn1" and layers[1].layer == "layer1.0.bn1" and layers[2].layer == "layer1.0.bn2"
        assert layers[-1].layer == "layer3.2.bn2" and layers[-1].conv == "layer3.2.conv2"
    assert sorted_stds(res) == sorted((r.std for r in res), reverse=True)
    # a residual block's response is its BN output before the addition: recompute layer1.0.bn2 directly
    model = create_model("resnet20").eval()
    with torch.no_grad():
        stem = model.forward_stem(x)
        block = model.layer1[0]
        expected = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(stem))))).double().std(unbiased=False)
    got = {r.layer: r.std for r in response_stds(model, [x])}["layer1.0.bn2"]
    assert got == pytest.approx(float(expected), rel=1e-5)


def plant_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, choice: str) -> None:
    """A private probe cache saying ``choice`` for training ResNet-56 on this machine."""
    import json

    from resnets.hardware import probe_cache_path, probe_input_shape, probe_key

    monkeypatch.setenv("RESNETS_CACHE_DIR", str(tmp_path))
    probe_cache_path().write_text(json.dumps({probe_key("resnet56", probe_input_shape(32), True): {"choice": choice}}))


def test_short_recipe_runs_three_times_longer_where_bf16_is_fast(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    plant_probe(monkeypatch, tmp_path, "bf16")
    fast = resolve_settings(DegradationOptions(device="cpu"))
    assert (fast["epochs"], fast["batch_size"], fast["precision"]) == (36.0, 128, "bf16")
    cfg = train_config("plain20", fast, 10000, Path("unused"), DegradationOptions(device="cpu"))
    assert (cfg.iterations, cfg.batch_size, cfg.precision) == (2808, 128, "bf16")  # 78 steps x 36 epochs
    # an explicit format or length wins over the probe
    forced = resolve_settings(DegradationOptions(device="cpu", precision="fp32"))
    assert (forced["epochs"], forced["batch_size"], forced["precision"]) == (12.0, 64, "fp32")
    assert resolve_settings(DegradationOptions(device="cpu", epochs=5, batch_size=32))["epochs"] == 5
    plant_probe(monkeypatch, tmp_path, "fp32")
    slow = resolve_settings(DegradationOptions(device="cpu"))
    assert (slow["epochs"], slow["batch_size"], slow["precision"]) == (12.0, 64, "fp32")


def test_settings_schedules_and_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plant_probe(monkeypatch, tmp_path, "fp32")  # float32 faster here: the 12-epoch short recipe
    assert parse_depths("56, 20") == (20, 56)
    assert parse_kinds("resnet") == ("resnet",) and parse_kinds("resnet,plain") == ("plain", "resnet")
    with pytest.raises(UserError, match="--kinds"):
        parse_kinds("residual")
    assert model_names((56, 20)) == ["plain20", "resnet20", "plain56", "resnet56"]
    assert model_names((56, 20), ("resnet",)) == ["resnet20", "resnet56"]
    for bad in ("20,1202", "x", ""):
        with pytest.raises(UserError):
            parse_depths(bad)
    short = resolve_settings(DegradationOptions())
    assert (short["base_recipe"], short["epochs"], short["train_images"], short["batch_size"]) == \
        ("cifar-paper", 12.0, 10000, 64)
    opts = DegradationOptions()
    for name in ("plain20", "resnet56"):  # one recipe for every net, warm-up included
        cfg = train_config(name, short, 10000, Path("unused"), opts)
        assert (cfg.iterations, cfg.milestones, cfg.lr, cfg.momentum, cfg.weight_decay) == \
            (1872, [936, 1404], 0.1, 0.9, 1e-4)
        assert (cfg.batch_size, cfg.warmup, cfg.warmup_lr) == (64, 187, None)  # linear ramp
        assert (cfg.train_images, cfg.test_images, cfg.precision, cfg.data) == (10000, 2000, "fp32", "sample")
    longer_warmup = resolve_settings(DegradationOptions(warmup=0.3))
    assert longer_warmup["warmup_fraction"] == 0.3
    assert train_config("resnet56", longer_warmup, 10000, Path("unused"), opts).warmup == 562
    assert train_config("resnet56", resolve_settings(DegradationOptions(warmup=0)), 10000, Path("unused"),
                        opts).warmup == 0
    for bad in (DegradationOptions(warmup=1.0), DegradationOptions(warmup=-0.1),
                DegradationOptions(recipe="cifar-paper", warmup=0.1)):
        with pytest.raises(UserError):
            resolve_settings(bad)
    paper = resolve_settings(DegradationOptions(recipe="cifar-paper"))
    cfg = train_config("resnet110", paper, 50000, Path("unused"), opts)
    assert (cfg.iterations, cfg.milestones, cfg.batch_size, cfg.warmup, cfg.warmup_lr) == \
        (64000, [32000, 48000], 128, 400, 0.01)
    cfg = train_config("resnet20", resolve_settings(DegradationOptions(recipe="cifar-paper", epochs=10)),
                       50000, Path("unused"), opts)
    assert (cfg.iterations, cfg.milestones) == (3900, [1950, 2925])  # 390 steps an epoch, same shape

    rows = [{"model": f"{k}{d}", "kind": k, "depth": d, "train_error": e, "test_error": e + 1}
            for k, d, e in (("plain", 20, 10.0), ("resnet", 20, 9.0), ("plain", 56, 14.0), ("resnet", 56, 7.5))]
    table = results_table(rows)
    assert "| 20 | 10.00% | 11.00% | 9.00% | 10.00% | 8.75% |" in table
    assert "| 56 | 14.00% | 15.00% | 7.50% | 8.50% | 6.97% |" in table
    assert PLAIN_NOTE in table
    assert "plain-56 ends with higher training error than plain-20" in table
    assert "ResNet-56 ends with lower training error than ResNet-20" in table


def test_experiment_end_to_end_with_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = tmp_path / "exp", tmp_path / "cache"
    args = dict(depths=(20,), data="sample", out=str(out), epochs=2, train_images=48, test_images=20, batch_size=16,
                response_images=10, cache_dir=str(cache), device="cpu", progress=False)

    def interrupt(state: object) -> None:
        if state.cfg.model == "resnet20" and state.step == 2:  # type: ignore[attr-defined]
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_degradation(DegradationOptions(**args), on_step=[interrupt])
    assert (out / "plain20" / "done.json").is_file()
    assert (out / "resnet20" / "last.pt").is_file() and not (out / "resnet20" / "done.json").exists()
    assert not (out / "table.md").exists()
    plain_metrics = (out / "plain20" / "metrics.jsonl").read_text()

    # the same command again: plain20 is skipped, resnet20 resumes from step 2
    cli = ["experiment", "degradation", "--depths", "20", "--data", "sample", "--out", str(out), "--epochs", "2",
           "--train-images", "48", "--test-images", "20", "--batch-size", "16", "--response-images", "10",
           "--cache-dir", str(cache), "--device", "cpu", "--no-progress"]
    capsys.readouterr()
    assert main(cli) == 0
    log = capsys.readouterr().out
    assert "plain20: finished earlier, skipped" in log and "resuming resnet20" in log
    assert (out / "plain20" / "metrics.jsonl").read_text() == plain_metrics
    records = [json.loads(line) for line in (out / "resnet20" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "epoch"] == [3, 6]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 6

    # figure 6, the table, the response analysis
    for png in ("fig6_errors.png", "fig7_responses.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    assert "| 20 |" in table and "8.75%" in table and PLAIN_NOTE in table
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["model"], r["steps"], r["paper_test_error"]) for r in rows] == [("plain20", 6, None),
                                                                               ("resnet20", 6, 8.75)]
    assert all(0 <= r["train_error"] <= 100 and 0 <= r["test_error"] <= 100 for r in rows)
    responses = json.loads((out / "responses.json").read_text())["models"]
    assert sorted(responses) == ["plain20", "resnet20"]
    assert all(len(m["layers"]) == 19 and all(x["std"] > 0 for x in m["layers"]) for m in responses.values())
    assert len((out / "responses.csv").read_text().splitlines()) == 1 + 2 * 19

    # only the ResNets, in the same folder: nothing retrained, results and figures for resnet20 alone
    capsys.readouterr()
    assert main([*cli, "--kinds", "resnet"]) == 0
    assert "resnet20: finished earlier, skipped" in capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["resnet20"]
    assert sorted(json.loads((out / "responses.json").read_text())["models"]) == ["resnet20"]

    # a different recipe in the same folder is refused rather than mixed in
    with pytest.raises(UserError, match="other settings"):
        run_degradation(DegradationOptions(**{**args, "epochs": 3}))
