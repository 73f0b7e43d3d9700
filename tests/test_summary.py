"""``summary()`` and ``resnets summary``: the paper's table, counted from the model itself."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from resnets import UserError, create_model, summary
from resnets.cli import main
from resnets.summary import ModelSummary, format_macs

RESNET50_STAGES = [
    ("conv1", (64, 112, 112), "112x112x64"),
    ("pool", (64, 56, 56), "56x56x64"),
    ("conv2_x", (256, 56, 56), "56x56x256"),
    ("conv3_x", (512, 28, 28), "28x28x512"),
    ("conv4_x", (1024, 14, 14), "14x14x1024"),
    ("conv5_x", (2048, 7, 7), "7x7x2048"),
    ("pool", (2048,), "2048"),
    ("fc", (1000,), "1000"),
]


def meta_model(name: str, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.fixture(scope="module")
def r50_blocks() -> ModelSummary:
    return summary(meta_model("resnet50"), depth="blocks")


def test_resnet50_stage_rows_and_totals() -> None:
    s = summary(meta_model("resnet50"))
    assert [(r.name, r.output_shape, r.output_size) for r in s.rows] == RESNET50_STAGES
    assert s.total_params == 25_557_032 == sum(r.params for r in s.rows)
    assert s.total_macs == 4_089_184_256 == sum(r.macs for r in s.rows)
    rows = {r.name: r for r in s.rows if r.name != "pool"}
    assert rows["conv1"].params == 7 * 7 * 3 * 64 + 2 * 64 and rows["conv1"].macs == 7 * 7 * 3 * 64 * 112 * 112
    assert rows["fc"].params == 2048 * 1000 + 1000 and rows["fc"].macs == 2048 * 1000
    assert all(r.params == 0 and r.macs == 0 for r in s.rows if r.name == "pool")


def test_summary_runs_a_real_model_and_restores_its_mode() -> None:
    model = create_model("resnet20").train()
    s = summary(model, (2, 3, 32, 32))
    assert model.training
    assert [(r.name, r.output_size) for r in s.rows] == [
        ("conv1", "32x32x16"), ("conv2_x", "32x32x16"), ("conv3_x", "16x16x32"), ("conv4_x", "8x8x64"),
        ("pool", "64"), ("fc", "10"),
    ]
    assert s.total_params == 269_722
    assert s.total_macs == 2 * summary(model, 32).total_macs  # counts are for the whole batch


def test_v1_moves_macs_into_the_first_block_of_each_stage() -> None:
    v1, v15 = summary(meta_model("resnet50", variant="v1")), summary(meta_model("resnet50"))
    assert [r.output_shape for r in v1.rows] == [r.output_shape for r in v15.rows]
    assert v1.total_params == v15.total_params and v1.total_macs < v15.total_macs
    assert v1.rows[2].macs == v15.rows[2].macs  # conv2_x does not stride: the variants agree there


def test_blocks_depth_shows_16_bottlenecks_projection_first(r50_blocks: ModelSummary) -> None:
    blocks = [r for r in r50_blocks.rows if r.kind == "block"]
    assert len(blocks) == 16 and {r.block for r in blocks} == {"bottleneck"}
    for stage, n in zip(("conv2_x", "conv3_x", "conv4_x", "conv5_x"), (3, 4, 6, 3), strict=True):
        in_stage = [r for r in blocks if r.name.startswith(stage + " ")]
        assert [r.name for r in in_stage] == [f"{stage} block{i}" for i in range(1, n + 1)]
        assert [r.shortcut for r in in_stage] == ["projection"] + ["identity"] * (n - 1)
        stage_row = next(r for r in r50_blocks.rows if r.name == stage)
        assert sum(r.params for r in in_stage) == stage_row.params
        assert sum(r.macs for r in in_stage) == stage_row.macs
    assert r50_blocks.total_params == sum(r.params for r in r50_blocks.rows if r.kind != "block")


def test_blocks_name_every_shortcut_kind() -> None:
    def shortcuts(name: str, **kwargs: object) -> list[str]:
        s = summary(meta_model(name, **kwargs), (1, 3, 32, 32), depth="blocks")
        return [r.shortcut for r in s.rows if r.kind == "block"]

    assert shortcuts("resnet20") == ["identity"] * 3 + (["zero-pad"] + ["identity"] * 2) * 2
    assert shortcuts("resnet20", shortcut="B")[3] == "projection"
    assert shortcuts("plain20") == ["none"] * 9
    assert shortcuts("resnet18")[:3] == ["identity", "identity", "projection"]  # 18's conv2_x keeps 64 channels
    assert shortcuts("resnet50", variant="d")[:4] == ["projection", "identity", "identity", "avgpool projection"]
    pre = summary(meta_model("resnet18", variant="preact"), 64, depth="blocks")
    assert {r.block for r in pre.rows if r.kind == "block"} == {"preact basic"}
    assert "final_bn" in next(r for r in pre.rows if r.name == "conv5_x").modules
    assert pre.total_params == sum(r.params for r in pre.rows if r.kind != "block")


def test_json_round_trips(r50_blocks: ModelSummary) -> None:
    data = json.loads(r50_blocks.to_json())
    assert data == r50_blocks.to_dict()
    assert data["model"] == "resnet50" and data["variant"] == "v1.5" and data["input_size"] == [1, 3, 224, 224]
    assert next(r for r in data["rows"] if r["name"] == "conv3_x")["output_shape"] == [512, 28, 28]
    assert ModelSummary.from_dict(data) == r50_blocks


def test_text_table() -> None:
    text = str(summary(meta_model("resnet50")))
    lines = text.splitlines()
    assert lines[0] == "resnet50 (v1.5), input 1x3x224x224"
    for _, _, size in RESNET50_STAGES:
        assert size in text
    assert "Total params: 25,557,032" in text and "4.089G" in text and "14,964,736" in text
    table = [line for line in lines if line.startswith(("conv", "pool", "fc"))]
    assert len(table) == 8 and len({len(line) for line in table}) == 1  # aligned columns
    assert format_macs(0) == "-" and format_macs(640) == "640" and format_macs(2_048_000) == "2.0M"


def test_bad_arguments_are_user_errors() -> None:
    model = meta_model("resnet18")
    with pytest.raises(UserError, match="unknown depth 'layers'"):
        summary(model, depth="layers")
    with pytest.raises(UserError, match="N x C x H x W"):
        summary(model, (3, 224, 224))


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "resnet50"]) == 0
    out = capsys.readouterr().out
    for name, _, size in RESNET50_STAGES:
        assert any(line.split()[:2] == [name, size] for line in out.splitlines())
    assert "25,557,032" in out


def test_cli_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["summary", "resnet18", "--variant", "d", "--input-size", "64", "--num-classes", "7", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["variant"] == "d" and data["input_size"] == [1, 3, 64, 64]
    assert data["rows"][-1]["output_shape"] == [7] and data["rows"][5]["output_shape"] == [512, 2, 2]
    assert main(["summary", "resnet56", "--depth", "blocks"]) == 0
    out = capsys.readouterr().out
    assert "conv4_x block9" in out and "zero-pad" in out and "8x8x64" in out


@pytest.mark.parametrize("argv, message", [
    (["summary", "resnet-50"], "unknown model 'resnet-50'; did you mean 'resnet50'?"),
    (["summary", "resnet50", "--input-size", "16"], "--input-size 16 is too small for resnet50"),
    (["summary", "resnet50", "--variant", "v2"], "unknown variant 'v2'"),
    (["summary", "resnet50", "--num-classes", "0"], "--num-classes must be at least 1"),
])
def test_cli_mistakes_exit_2_with_one_line(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("resnets summary: error: ")
    assert message in captured.err
