"""Settings read from a file (a run's last.pt, a --config JSON/TOML) never run a command, fetch a URL or write
outside the current folder; the same values typed on the command line do what they say."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resnets import UserError
from resnets.cli import build_parser, main
from resnets.cli.train import torchrun_command
from resnets.train import resolve_config, train
from resnets.train.checkpoint import load_checkpoint, save_checkpoint
from resnets.train.config import unsafe_reason

PIPE = "pipe:touch PWNED; true"
TINY = dict(model="resnet20", data="sample", train_images=128, test_images=64, batch_size=64, epochs=1,
            progress=False, plots=False, seed=1)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder written by the trainer itself (stopped after one step): a real last.pt."""
    out = tmp_path_factory.mktemp("real") / "run"
    train(resolve_config({**TINY, "out": str(out), "stop_after_steps": 1}), log=lambda _: None)
    return out


def crafted(real_run: Path, dest: Path, **config: object) -> Path:
    """A copy of ``real_run`` whose last.pt (rewritten by the project's checkpoint writer) says ``config``."""
    dest.mkdir()
    state = load_checkpoint(real_run / "last.pt")
    state["config"].update(config)
    save_checkpoint(state, dest / "last.pt")
    return dest


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_resume_refuses_a_saved_pipe_in_one_line_and_runs_nothing(real_run: Path, in_tmp: Path) -> None:
    run = crafted(real_run, in_tmp / "run", data=PIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "resnets", "train", "--resume", "run", "--no-progress"],
                          cwd=in_tmp, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"resnets train: error: {Path('run') / 'last.pt'}: data {PIPE!r} is a shell command (pipe:); a setting "
        f"read from a file runs none: type --data '{PIPE}' if you trust it"]
    assert not (in_tmp / "PWNED").exists() and not (run / "PWNED").exists()


def test_train_api_resume_refuses_a_saved_pipe_the_config_does_not_repeat(real_run: Path, in_tmp: Path) -> None:
    # train(config, resume=RUN) reads the run's own settings again: the file's pipe is refused there too
    run = crafted(real_run, in_tmp / "run", data=PIPE)
    with pytest.raises(UserError, match=r"last\.pt: data 'pipe:touch PWNED; true' is a shell command"):
        train(resolve_config({**TINY, "out": str(in_tmp / "other")}), resume=run, log=lambda _: None)
    assert not (in_tmp / "PWNED").exists()


def test_a_typed_pipe_on_resume_reaches_the_data_layer(real_run: Path, in_tmp: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    crafted(real_run, in_tmp / "run", data=PIPE, train_images=None, test_images=None)
    assert main(["train", "--resume", "run", "--no-progress", "--data", PIPE]) == 2
    assert (in_tmp / "PWNED").exists()  # the shell ran it: the user typed it
    assert "cannot read shard pipe:touch PWNED; true" in capsys.readouterr().err


@pytest.mark.parametrize("key, value, said", [
    ("data", PIPE, "is a shell command (pipe:)"),
    ("data", "https://example.com/train-{000000..000009}.tar", "is a URL"),
    ("data", "shards/a.tar::s3://bucket/b.tar", "is a URL"),
    ("out", "/tmp/elsewhere", "is outside the current folder"),
    ("out", "runs/../../up", "is outside the current folder"),
    ("cache_dir", "~/.cache/x", "is outside the current folder"),
])
@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_config_file_refuses_commands_urls_and_folders_elsewhere(in_tmp: Path, key: str, value: str, said: str,
                                                                 suffix: str, capsys: pytest.CaptureFixture[str]
                                                                 ) -> None:
    path = in_tmp / f"c{suffix}"
    path.write_text(json.dumps({key: value}) if suffix == ".json" else f"[train]\n{key} = {json.dumps(value)}\n")
    elsewhere = [] if key == "data" else ["--data", "no-such-folder"]  # without the rule: fails fast, not trains
    assert main(["train", "--config", str(path), "--no-progress", "--epochs", "1", *elsewhere]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"resnets train: error: {path}: {key} {value!r} {said}")
    assert not (in_tmp / "PWNED").exists() and not (in_tmp / "runs").exists()


def test_config_file_value_typed_again_wins_and_relative_folders_pass(in_tmp: Path) -> None:
    (in_tmp / "c.json").write_text(json.dumps({"data": PIPE, "out": "/tmp/x", "cache_dir": "../c"}))
    cfg = resolve_config({"data": "pipe:cat x.tar", "out": "/abs/typed", "cache_dir": "cache"},
                         config_file=in_tmp / "c.json")
    assert (cfg.data, cfg.out, cfg.cache_dir) == ("pipe:cat x.tar", "/abs/typed", "cache")
    (in_tmp / "ok.toml").write_text('data = "shards/train-{000000..000003}.tar"\nout = "runs/a"\n'
                                    'cache_dir = "cache/x"\n')
    cfg = resolve_config(config_file=in_tmp / "ok.toml")
    assert (cfg.data, cfg.out, cfg.cache_dir) == ("shards/train-{000000..000003}.tar", "runs/a", "cache/x")


def test_a_typed_pipe_reaches_the_data_layer_through_the_ranks_command(in_tmp: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # --nproc passes the typed flags on to each rank, which reads --config itself: the typed pipe stays typed
    (in_tmp / "c.json").write_text(json.dumps({"data": "pipe:touch FROM_FILE; true", "epochs": 1}))
    argv = ["train", "--config", "c.json", "--data", "pipe:touch TYPED; cat x.tar", "--no-progress", "--nproc", "2"]
    command = torchrun_command(build_parser().parse_args(argv))
    rank_argv = command[command.index("train"):]
    assert main(rank_argv) == 2  # x.tar is missing: the data layer says so, after running the typed pipe
    assert (in_tmp / "TYPED").exists() and not (in_tmp / "FROM_FILE").exists()
    assert "cannot read shard pipe:touch TYPED; cat x.tar" in capsys.readouterr().err


@pytest.mark.parametrize("spec", [
    "pipe:cat x.tar", " pipe:cat x.tar", "a.tar::pipe:cat b.tar", "{pi,x}pe:cat a.tar", "http://h/a.tar",
    "https://h/a-{0..3}.tar", "ftp://h/a.tar", "gs://b/a.tar", "s3://b/a.tar", "sftp://h/a.tar", "file:{pipe:x,y}",
])
def test_data_specs_that_run_or_fetch_are_unsafe_from_a_file(spec: str) -> None:
    assert unsafe_reason("data", spec) is not None


@pytest.mark.parametrize("spec", [
    "sample", "cifar10", "/data/imagenet", "shards/train-{000000..000099}.tar", "a.tar::b.tar", "file:/d/a.tar",
    "C:/data/imagenet", "data/cifar-10-python.tar.gz",
])
def test_local_data_specs_are_fine_from_a_file(spec: str) -> None:
    assert unsafe_reason("data", spec) is None


@pytest.mark.parametrize("config, said", [
    ({"bogus": 1}, "holds no resnets training config (unknown settings)"),
    ({"data": 5}, "data must be text, not 5"),
])
def test_resume_refuses_a_saved_config_that_is_not_one(real_run: Path, in_tmp: Path, config: dict,
                                                       said: str) -> None:
    run = crafted(real_run, in_tmp / "run", **config)
    with pytest.raises(UserError, match=re.escape(f"{run / 'last.pt'}") + r":? " + re.escape(said)):
        resolve_config(resume=run)
