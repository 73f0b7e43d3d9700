"""The training engine: recipes, schedules, a real run that learns, exact resume, safe checkpoints, NaN guard."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from resnets import UserError
from resnets.cli import main
from resnets.train import NonFiniteLossError, resolve_config, train
from resnets.train.checkpoint import load_checkpoint, save_checkpoint
from resnets.train.optim import LRSchedule, param_groups
from resnets.weights import load_model

# A tiny run: resnet20 on 256 images of the shipped sample, 4 steps of 64 per epoch.
TINY = dict(model="resnet20", data="sample", train_images=256, test_images=128, batch_size=64, epochs=2,
            progress=False, log_every=2, seed=3)


def tiny(out: Path, **changes: object):
    return resolve_config({**TINY, "out": str(out), **changes})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(tiny(out), log=lambda _: None)


# ---- recipes and schedules ----------------------------------------------------------------------------------

def test_cifar_paper_recipe_is_section_4_2() -> None:
    cfg = resolve_config({"model": "resnet56"}, recipe="cifar-paper")
    assert (cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.batch_size) == ("sgd", 0.9, 1e-4, 128)
    assert (cfg.iterations, cfg.epochs, cfg.pad, cfg.flip) == (64000, None, 4, True)
    assert cfg.decay_norm_and_bias and cfg.label_smoothing == 0 and not cfg.ema and not cfg.zero_init_residual
    sched = LRSchedule.from_config(cfg, total_steps=64000, steps_per_epoch=390)
    assert [sched(s) for s in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert cfg.warmup == 0


def test_cifar_paper_warms_up_resnet110() -> None:
    cfg = resolve_config({"model": "resnet110"}, recipe="cifar-paper")
    sched = LRSchedule.from_config(cfg, total_steps=64000, steps_per_epoch=390)
    assert [sched(s) for s in (0, 399, 400, 31999, 32000, 48000)] == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.01, 0.001])


def test_imagenet_paper_recipe() -> None:
    cfg = resolve_config({"model": "resnet50"}, recipe="imagenet-paper")
    assert (cfg.batch_size, cfg.epochs, cfg.weight_decay, cfg.image_size, cfg.resize) == (256, 90, 1e-4, 224, 256)
    sched = LRSchedule.from_config(cfg, total_steps=90 * 5005, steps_per_epoch=5005)
    steps = (0, 30 * 5005 - 1, 30 * 5005, 60 * 5005, 90 * 5005 - 1)
    assert [sched(s) for s in steps] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001])


def test_fast_recipe_and_overrides(tmp_path: Path) -> None:
    cfg = resolve_config({"model": "resnet20", "data": "cifar10"})
    assert cfg.recipe == "cifar-fast" and cfg.ema and cfg.zero_init_residual and not cfg.decay_norm_and_bias
    assert cfg.effective_lr == pytest.approx(cfg.lr * cfg.batch_size / 128)
    sched = LRSchedule.from_config(cfg, total_steps=1000, steps_per_epoch=100)
    assert sched(0) < sched(149) == pytest.approx(cfg.effective_lr) and sched(999) < 0.01 * cfg.effective_lr
    # --epochs replaces the paper recipe's iteration count; a config file and flags override the recipe
    assert resolve_config({"epochs": 3}, recipe="cifar-paper").iterations is None
    (tmp_path / "c.toml").write_text('recipe = "cifar-paper"\nlr = 0.05\nbatch_size = 64\n')
    cfg = resolve_config({"batch_size": 32}, config_file=tmp_path / "c.toml")
    assert (cfg.recipe, cfg.lr, cfg.batch_size, cfg.iterations) == ("cifar-paper", 0.05, 32, 64000)
    (tmp_path / "c.json").write_text(json.dumps({"mixup_alpha": 0.2}))
    assert resolve_config(config_file=tmp_path / "c.json").mixup_alpha == 0.2


@pytest.mark.parametrize("kwargs, message", [
    (dict(recipe="cifar-papr"), "unknown recipe 'cifar-papr'; did you mean 'cifar-paper'"),
    (dict(typed={"learning_rate": 0.1}), "unknown config key 'learning_rate'"),
    (dict(typed={"model": "resnet21"}), "unknown model 'resnet21'"),
    (dict(typed={"precision": "fp8"}), "precision must be one of"),
    (dict(typed={"batch_size": 10, "accum_steps": 3}), "multiple of accum_steps"),
    (dict(config_file="/nonexistent/cfg.toml"), "does not exist"),
])
def test_config_errors_are_user_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        resolve_config(**kwargs)


# ---- options: declared once, resolved one way for fresh and resumed runs ----------------------------------------

def test_options_declare_flags_choices_and_what_may_change_on_resume() -> None:
    from resnets.cli import build_parser
    from resnets.train.config import RESUMABLE, options

    assert RESUMABLE == {"stop_after_steps", "progress", "tensorboard", "plots", "workers", "log_every",
                         "checkpoint_every", "eval_every", "epochs", "iterations", "device"}
    assert options()["device"].choices == ("auto", "cpu", "cuda") and options()["mixup_alpha"].flag == "--mixup"
    args = build_parser().parse_args(["train", "--mixup", "0.2", "--no-ema", "--tensorboard", "--image-size", "160",
                                      "--device", "cpu", "--stop-after-steps", "3"])
    assert (args.mixup_alpha, args.ema, args.tensorboard, args.image_size, args.device, args.stop_after_steps) == \
        (0.2, False, True, 160, "cpu", 3)
    assert args.lr is None and args.channels_last is None and args.download is None  # not typed: None
    with pytest.raises(UserError, match="shortcut must be A \\(zero padding\\) or B"):
        resolve_config({"shortcut": "C"})


def test_torchrun_command_repeats_the_typed_flags() -> None:
    from resnets.cli import build_parser
    from resnets.cli.train import torchrun_command

    argv = ["--model", "resnet32", "--mixup", "0.2", "--no-ema", "--tensorboard", "--no-progress", "--set", "pad=2",
            "--stop-after-steps", "3", "--image-size", "40"]
    parser = build_parser()
    command = torchrun_command(parser.parse_args(["train", *argv, "--nproc", "2"]))
    assert command[command.index("--nproc-per-node") + 1] == "2"
    again = parser.parse_args(command[command.index("train"):])
    assert vars(again) == {**vars(parser.parse_args(["train", *argv])), "nproc": None}


def _saved_run(run_dir: Path, **changes: object) -> Path:
    """A run folder whose last.pt holds only the config of ``tiny(run_dir, **changes)`` (enough to resolve)."""
    from resnets.train.checkpoint import CHECKPOINT_VERSION

    run_dir.mkdir()
    save_checkpoint({"version": CHECKPOINT_VERSION, "config": tiny(run_dir, **changes).to_dict()}, run_dir / "last.pt")
    return run_dir


def test_resume_resolves_the_runs_config_then_file_then_typed(tmp_path: Path) -> None:
    run = _saved_run(tmp_path / "run", stop_after_steps=3, progress=False, tensorboard=True)
    cfg = resolve_config(resume=run)
    assert cfg.to_dict() == {**tiny(run, tensorboard=True).to_dict(), "progress": True}  # not stopped again at 3
    # a typed setting applies even at its default value (log_every 50); a typed length replaces the run's
    (tmp_path / "c.toml").write_text("eval_every = 2\nlog_every = 7\n")
    cfg = resolve_config({"log_every": 50, "iterations": 12, "out": str(run)}, config_file=tmp_path / "c.toml",
                         recipe="cifar-fast", resume=run)
    assert (cfg.log_every, cfg.eval_every, cfg.iterations, cfg.epochs, cfg.lr) == (50, 2, 12, None, tiny(run).lr)
    with pytest.raises(UserError, match="no checkpoint at"):
        resolve_config(resume=tmp_path)


@pytest.mark.parametrize("typed, recipe, said", [
    ({"model": "resnet56"}, None, "its model is 'resnet20', not 'resnet56': drop --model"),
    ({"mixup_alpha": 0.2}, None, "its mixup_alpha is 0.0, not 0.2: drop --mixup"),
    ({"milestones": [1]}, None, "its milestones is [], not [1]: drop --milestones"),
    ({}, "cifar-paper", "its recipe is 'cifar-fast', not 'cifar-paper': drop --recipe"),
    ({"out": "elsewhere"}, None, "its out is '{run}', not 'elsewhere': drop --out"),
])
def test_resume_refuses_what_a_run_cannot_change(tmp_path: Path, typed: dict, recipe: str | None, said: str) -> None:
    run = _saved_run(tmp_path / "run")
    with pytest.raises(UserError, match=f"^--resume continues {re.escape(str(run))} with its own settings; "
                                        f"{re.escape(said.format(run=run))}, or start a new run with --out$"):
        resolve_config(typed, recipe=recipe, resume=run)


def test_no_weight_decay_on_norms_and_biases() -> None:
    from resnets import create_model

    model = create_model("resnet20")
    decay, no_decay = param_groups(model, 5e-4, decay_norm_and_bias=False)
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"]) and decay["weight_decay"] == 5e-4
    assert no_decay["weight_decay"] == 0 and len(no_decay["params"]) == 2 * 19 + 1  # BN weight+bias, fc bias
    assert len(param_groups(model, 1e-4, decay_norm_and_bias=True)) == 1


# ---- a real run -----------------------------------------------------------------------------------------------

def test_training_on_the_sample_learns(tmp_path: Path) -> None:
    """The whole shipped sample (3,000 train / 1,000 test images), 4 epochs of the fast recipe."""
    result = train(resolve_config({"data": "sample", "batch_size": 64, "epochs": 4, "log_every": 10,
                                   "label_smoothing": 0.0, "progress": False, "out": str(tmp_path / "run")}),
                   log=lambda _: None)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert steps[-1]["train_loss"] < 0.9 * steps[0]["train_loss"]  # from 2.30 (chance); seed 0: 1.89
    epochs = [r["val_acc"] for r in records if r["kind"] == "epoch"]
    assert epochs == sorted(epochs) and epochs[-1] > 25.0  # chance is 10% (+-1 on 1,000); seed 0: 22 -> 30.6%
    model = load_model(result.best_weights)
    assert model.classes[0] == "airplane" and len(model.normalization["mean"]) == 3


def test_run_dir_contents(tiny_run) -> None:
    run = tiny_run.run_dir
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "best.safetensors",
                 "final.safetensors", "loss.png", "accuracy.png", "lr.png"):
        assert (run / name).stat().st_size > 0, name
    assert json.loads((run / "config.json").read_text())["train_images"] == 256
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    assert header.startswith("kind,epoch,step,lr") and len(rows) == 4 + 2  # 4 step rows, 2 epoch rows
    ckpt = torch.load(run / "last.pt", weights_only=True)  # plain tensors and containers only
    assert ckpt["step"] == 8 and ckpt["epoch"] == 2 and set(ckpt["rng"]) >= {"torch", "python", "numpy", "data"}
    assert tiny_run.final["epoch"] == 2 and tiny_run.step == 8


def test_finished_run_ships_its_final_weights(tiny_run, tmp_path: Path) -> None:
    from resnets.weights import read_state_dict

    ckpt = torch.load(tiny_run.run_dir / "last.pt", weights_only=True)
    final = read_state_dict(tiny_run.final_weights)
    _assert_same_tensors(ckpt["ema"]["module"], final)  # the shipped (EMA) weights after the last step
    # a run stopped early has none; resuming it to the end writes them
    out = tmp_path / "stopped"
    train(tiny(out, stop_after_steps=3), log=lambda _: None)
    assert not (out / "final.safetensors").exists()
    train(tiny(tmp_path / "ignored"), resume=out, log=lambda _: None)
    _assert_same_tensors(final, read_state_dict(out / "final.safetensors"))


def test_existing_run_dir_is_refused(tiny_run) -> None:
    with pytest.raises(UserError, match="already holds a run"):
        train(tiny(tiny_run.run_dir), log=lambda _: None)


# ---- exact resume ---------------------------------------------------------------------------------------------

def _assert_same_tensors(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_interrupted_run_resumes_bit_identically(tmp_path: Path, tiny_run) -> None:
    # Interrupted mid-epoch 2 by a KeyboardInterrupt from a step callback, then resumed.
    def interrupt(state) -> None:
        if state.step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "b"), on_step=[interrupt], log=lambda _: None)
    partial = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (partial["step"], partial["epoch"], partial["batch"]) == (6, 1, 2)
    result = train(tiny(tmp_path / "ignored"), resume=tmp_path / "b", log=lambda _: None)
    assert result.step == 8 and not (tmp_path / "ignored").exists()
    full = torch.load(tiny_run.run_dir / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for key in ("model", "ema", "optimizer"):
        _assert_same_tensors(full[key], resumed[key], key)
    assert full["metrics"][-1]["train_loss"] == resumed["metrics"][-1]["train_loss"]
    assert full["metrics"][-1]["val_acc"] == resumed["metrics"][-1]["val_acc"]


def test_stop_after_steps_then_resume_from_cli(tmp_path: Path, tiny_run) -> None:
    out = tmp_path / "c"
    args = ["train", "--data", "sample", "--train-images", "256", "--test-images", "128", "--batch-size", "64",
            "--epochs", "2", "--seed", "3", "--no-progress", "--log-every", "2", "--out", str(out)]
    assert main([*args, "--stop-after-steps", "3"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 3
    # --log-every 50 is the default value, typed: it applies (not mistaken for "not given")
    assert main(["train", "--resume", str(out), "--no-progress", "--log-every", "50"]) == 0
    full = torch.load(tiny_run.run_dir / "last.pt", weights_only=True)
    _assert_same_tensors(full["model"], torch.load(out / "last.pt", weights_only=True)["model"])
    assert json.loads((out / "config.json").read_text())["log_every"] == 50
    assert not {4, 6} & {r["step"] for r in read_records(out) if r["kind"] == "step"}  # logged every 50


# ---- checkpoints survive crashes --------------------------------------------------------------------------------

def test_checkpoint_killed_mid_write_leaves_previous_whole(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    script = textwrap.dedent(f"""
        import sys, time, torch
        from resnets.train.checkpoint import save_checkpoint
        save_checkpoint({{"version": 1, "step": 1, "w": torch.ones(1000)}}, {str(path)!r})
        real_save = torch.save
        def slow_save(obj, f):
            with open(f, "wb") as fh:
                fh.write(b"PK" + b"x" * 100000)  # half a file
                fh.flush()
                print("MID", flush=True)
                time.sleep(60)
        torch.save = slow_save
        save_checkpoint({{"version": 1, "step": 2, "w": torch.zeros(1000)}}, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "MID"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(1000))


def test_failed_write_keeps_previous_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"version": 1, "step": 1}, path)

    def broken(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"version": 1, "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_unreadable_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        train(tiny(tmp_path / "x"), resume=tmp_path, log=lambda _: None)


# ---- the non-finite loss guard -----------------------------------------------------------------------------------

def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    def poison(state) -> None:
        if state.step == 5:  # epoch 1 (steps 1-4) ended and was checkpointed
            with torch.no_grad():
                state.model.conv1.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 6 \(epoch 2\).*last good checkpoint"):
        train(tiny(tmp_path / "n", epochs=3), on_step=[poison], log=lambda _: None)
    ckpt = load_checkpoint(tmp_path / "n" / "last.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_nan_loss_exits_non_zero_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", "--data", "sample", "--train-images", "128", "--test-images", "64", "--batch-size", "64",
               "--epochs", "1", "--lr", "1e30", "--no-progress", "--out", str(tmp_path / "big")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("resnets train: error: loss became") and "--lr" in err[-1]


def test_learning_rate_schedule_is_logged(tmp_path: Path) -> None:
    # Every step record's LR is the one the optimiser used for that step, the schedule's pure function of the
    # step, and the one-cycle curve written out by hand: cifar-fast at batch 64 peaks at 0.2 * 64 / 128 = 0.1;
    # warm-up 0.25 of 8 steps rises over 2 steps, then the LR falls linearly towards 0 over the other 6.
    applied: dict[int, list[float]] = {}

    def read_lr(state) -> None:  # after step ``state.step``: the LR its update used, in every group
        applied[state.step] = [g["lr"] for g in state.optimizer.param_groups]

    cfg = tiny(tmp_path / "r", log_every=1, warmup=0.25)
    run = train(cfg, on_step=[read_lr], log=lambda _: None)
    records = read_records(run.run_dir)
    logged = {r["step"]: r["lr"] for r in records if r["kind"] == "step"}
    assert sorted(logged) == list(range(1, 9))
    by_hand = {1: 0.05, 2: 0.1, 3: 0.1, 4: 0.1 * 5 / 6, 5: 0.1 * 4 / 6, 6: 0.1 * 3 / 6, 7: 0.1 * 2 / 6,
               8: 0.1 * 1 / 6}
    assert logged == pytest.approx(by_hand, rel=1e-12, abs=0)
    schedule = LRSchedule.from_config(cfg, total_steps=8, steps_per_epoch=4)
    assert logged == {step: schedule(step - 1) for step in logged}  # exactly: the same function
    assert applied == {step: [lr] * len(applied[step]) for step, lr in logged.items()}
    assert [r["lr"] for r in records if r["kind"] == "epoch"] == [logged[4], logged[8]]


def test_progressive_resizing_trains_small_then_full_and_resumes_exactly(tmp_path: Path) -> None:
    changes = dict(epochs=3, resize_from=16, resize_until=0.67, train_images=128, test_images=64)
    full = train(tiny(tmp_path / "full", **changes), log=lambda _: None)
    epochs = [r for r in read_records(full.run_dir) if r["kind"] == "epoch"]
    assert [r["train_size"] for r in epochs] == [16, 24, 32]

    def interrupt(state) -> None:
        if state.step == 3:  # inside epoch 2, at 24 pixels
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "cut", **changes), on_step=[interrupt], log=lambda _: None)
    train(tiny(tmp_path / "ignored", **changes), resume=tmp_path / "cut", log=lambda _: None)
    _assert_same_tensors(torch.load(full.run_dir / "last.pt", weights_only=True)["model"],
                         torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"])


def test_progressive_resizing_settings_are_checked() -> None:
    with pytest.raises(UserError, match="resize_from must be at least 8"):
        resolve_config({**TINY, "resize_from": 4})
    with pytest.raises(UserError, match="resize_until"):
        resolve_config({**TINY, "resize_from": 16, "resize_until": 0})


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_progressive_resizing_reaches_streamed_data(tmp_path: Path) -> None:
    """--resize-from on a streamed folder: the workers crop each epoch to its scheduled side (issue 25)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(tmp_path / split / "a" / f"{i}.png")
    cfg = resolve_config({"model": "resnet18", "data": str(tmp_path), "batch_size": 2, "epochs": 2,
                          "workers": 0, "image_size": 64, "resize": 72, "resize_from": 32, "resize_until": 1.0,
                          "progress": False, "out": str(tmp_path / "run")})
    result = train(cfg, log=lambda _: None)
    sizes = [r.get("train_size") for r in read_records(result.run_dir) if r["kind"] == "epoch"]
    assert sizes == [32, 48]


def test_eval_every_evaluates_every_nth_epoch_and_the_last(tmp_path: Path) -> None:
    result = train(tiny(tmp_path / "run", epochs=3, eval_every=2, train_images=128, test_images=64),
                   log=lambda _: None)
    epochs = [r for r in read_records(result.run_dir) if r["kind"] == "epoch"]
    assert ["val_acc" in r for r in epochs] == [False, True, True]
    assert result.best["epoch"] in (2, 3) and result.final["epoch"] == 3
    with pytest.raises(UserError, match="eval_every"):
        resolve_config({**TINY, "eval_every": 0})
