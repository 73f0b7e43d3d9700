"""precision="auto": measured per model on this CPU, cached, forced by an explicit choice; CUDA picks natively."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnets import create_model
from resnets.hardware import cpu_precision, probe_cache_path, probe_key, time_formats
from resnets.infer.fastpath import FastModel
from resnets.runtime import autocast_dtype, choose_precision


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RESNETS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fixed(fp32_s: float, bf16_s: float, calls: list[tuple[tuple[int, ...], bool]]):
    def measure(model: torch.nn.Module, shape: tuple[int, ...], *, training: bool) -> dict[str, float]:
        calls.append((shape, training))
        return {"fp32_s": fp32_s, "bf16_s": bf16_s, "rounds": 3}
    return measure


def test_time_formats_runs_the_model_in_both_formats_without_touching_it() -> None:
    model = create_model("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    timing = time_formats(model, (4, 3, 32, 32), training=True, seconds=0.05)
    assert timing["fp32_s"] > 0 and timing["bf16_s"] > 0 and timing["rounds"] >= 1  # 3 unless the machine is busy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched
    assert all(p.grad is None for p in model.parameters())


def test_probe_chooses_the_faster_format_and_caches_it(private_cache: Path) -> None:
    model, calls = create_model("resnet20"), []
    assert cpu_precision(model, (8, 3, 32, 32), training=True, model_key="resnet20",
                         measure=fixed(1.0, 0.6, calls)) == "bf16"
    # cached: a second call does not measure, even with a timing that would say otherwise
    assert cpu_precision(model, (8, 3, 32, 32), training=True, model_key="resnet20",
                         measure=fixed(1.0, 2.0, calls)) == "bf16"
    assert len(calls) == 1
    entry = json.loads(probe_cache_path().read_text())[probe_key("resnet20", (8, 3, 32, 32), True)]
    assert entry["choice"] == "bf16" and entry["fp32_s"] == 1.0 and str(private_cache) in str(probe_cache_path())
    # another mode, shape or model is measured on its own; bf16 must be clearly faster (10%) to win
    assert cpu_precision(model, (8, 3, 32, 32), training=False, model_key="resnet20",
                         measure=fixed(1.0, 0.95, calls)) == "fp32"
    assert cpu_precision(model, (8, 3, 32, 32), training=True, model_key="resnet56",
                         measure=fixed(1.0, 1.5, calls)) == "fp32"
    assert len(calls) == 3


def test_probe_key_names_cpu_pytorch_threads_model_mode_and_shape() -> None:
    key = probe_key("resnet50", (1, 3, 224, 224), False)
    assert torch.__version__ in key and f"{torch.get_num_threads()} threads" in key
    assert "resnet50 infer 1x3x224x224" in key


def plant(choice: str, model_key: str, shape: tuple[int, ...], training: bool) -> None:
    path = probe_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({probe_key(model_key, shape, training): {"choice": choice}}))


@pytest.mark.parametrize("choice, expected", [("bf16", torch.bfloat16), ("fp32", None)])
def test_train_and_eval_auto_follow_the_probe(choice: str, expected: torch.dtype | None) -> None:
    model = create_model("resnet20")
    plant(choice, "resnet20", (32, 3, 32, 32), True)
    cpu = torch.device("cpu")
    assert autocast_dtype(choose_precision("auto", cpu, model, image_size=32, training=True, model_key="resnet20")) == expected
    assert autocast_dtype(choose_precision("fp32", cpu, model, image_size=32, training=True, model_key="resnet20")) is None
    assert autocast_dtype(choose_precision("bf16", cpu)) == torch.bfloat16


@pytest.mark.parametrize("choice", ["bf16", "fp32"])
def test_predict_auto_follows_the_probe_of_the_folded_model(choice: str) -> None:
    plant(choice, "resnet20 folded", (32, 3, 32, 32), False)
    fast = FastModel(create_model("resnet20").eval(), "auto", input_size=32, model_key="resnet20")
    assert fast.precision == choice
    assert FastModel(create_model("resnet20").eval(), "fp32", input_size=32).precision == "fp32"


def test_fp16_on_cpu_is_refused() -> None:
    from resnets import UserError

    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        autocast_dtype(choose_precision("fp16", torch.device("cpu")))


def test_cuda_auto_asks_for_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []

    def native(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native.answer  # type: ignore[attr-defined]

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", native)
    native.answer = True  # type: ignore[attr-defined]
    assert autocast_dtype(choose_precision("auto", torch.device("cuda"))) == torch.bfloat16
    native.answer = False  # type: ignore[attr-defined]  # e.g. a T4 or V100: fp16 (with a gradient scaler)
    assert autocast_dtype(choose_precision("auto", torch.device("cuda"))) == torch.float16
    assert asked == [False, False]


def test_resume_restores_cuda_rng_only_for_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from resnets.train.checkpoint import rng_state, set_rng_state

    state = rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8) + i for i in range(4)]  # saved on a 4-GPU machine
    restored: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append(int(device)))
    set_rng_state(state)
    assert restored == [0]


def test_deterministic_kernels_by_default_on_cpu_only() -> None:
    from resnets.runtime import use_deterministic
    from resnets.train import resolve_config

    cfg = resolve_config({})
    assert cfg.deterministic is None
    assert use_deterministic(cfg.deterministic, torch.device("cpu")) is True
    assert use_deterministic(cfg.deterministic, torch.device("cuda")) is False  # cudnn.benchmark on
    assert use_deterministic(resolve_config({"deterministic": True}).deterministic, torch.device("cuda")) is True
    assert use_deterministic(resolve_config({"deterministic": False}).deterministic, torch.device("cpu")) is False


def test_deterministic_flag_is_parsed() -> None:
    from resnets.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["train"]).deterministic is None
    assert parse(["train", "--deterministic"]).deterministic is True
    assert parse(["train", "--no-deterministic"]).deterministic is False
