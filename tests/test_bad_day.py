"""Issue 14, a new user's bad day: no command replaces a file it did not make (1), and every user mistake is one
line on stderr and exit 2, never a traceback (2), through the real ``resnets`` entry point."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from resnets.cli import main, report
from resnets.data.sample import extract_sample
from resnets.errors import ERROR_FILE_ENV
from test_distributed import torchrun_env

TINY = ["--train-images", "64", "--test-images", "32", "--batch-size", "32", "--epochs", "1", "--no-progress",
        "--precision", "fp32", "--workers", "0"]


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``resnets ARGV``; assert exit 2 and exactly one stderr line, ``resnets <cmd>: error: ...``; the line."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"resnets {argv[0]}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder from a tiny real ``resnets train`` on the shipped sample."""
    run = tmp_path_factory.mktemp("bad-day") / "R"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    assert (run / "best.pt").is_file() and (run / "best.safetensors").is_file()
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run, to compare byte for byte."""
    return Path(shutil.copytree(trained, tmp_path / "R"))


@pytest.fixture(scope="module")
def image() -> str:
    test = Path(extract_sample()) / "test"
    return str(sorted((test / "airplane").iterdir())[0])


# ---- 1. never overwrite a user's file ----------------------------------------------------------------------


def test_export_never_replaces_the_runs_files(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = hashes(run)
    assert main(["export", "--weights", str(run / "best.safetensors"), "--format", "torchscript"]) == 0
    assert (run / "best.torchscript.pt").is_file()
    assert {k: v for k, v in hashes(run).items() if k in before} == before  # best.pt is still the checkpoint
    exported = hashes(run)
    line = one_line_error(capsys, ["export", "--weights", str(run / "best.safetensors"), "--format", "torchscript"])
    assert "exists; give --force" in line and hashes(run) == exported
    assert main(["export", "--weights", str(run / "best.safetensors"), "--format", "torchscript", "--force"]) == 0
    line = one_line_error(capsys, ["export", "--weights", str(run / "best.safetensors"), "--out",
                                   str(run / "best.safetensors")])
    assert "which this command reads" in line
    assert {k: v for k, v in hashes(run).items() if k in before} == before


def test_every_command_leaves_existing_run_files_byte_identical(run: Path, tmp_path: Path, image: str) -> None:
    before = hashes(run)
    weights = str(run / "best.safetensors")
    index = str(tmp_path / "index.safetensors")
    for argv in (["eval", "--weights", weights, "--max-images", "32", "--workers", "0"],
                 ["predict", "--weights", weights, image],
                 ["embed", "--weights", weights, image, "--out", index],
                 ["search", "--index", index, image],
                 ["explain", "--weights", weights, image, "--out", str(tmp_path / "cam.png")],
                 ["export", "--weights", weights, "--format", "torchscript"],
                 ["summary", "resnet20"],
                 ["train", *TINY, "--out", str(run)]):  # refused: the folder holds a run
        main(argv)
        assert {k: v for k, v in hashes(run).items() if k in before} == before, argv


# ---- 2. every user mistake is one line ---------------------------------------------------------------------


def _unwritable_cases(run: Path, blocker: Path, image: str) -> list[tuple[list[str], str]]:
    weights = str(run / "best.safetensors")
    below = str(blocker / "x")
    sample = str(Path(extract_sample()))
    return [
        (["train", *TINY, "--out", below], "is a file, not a folder"),
        (["train", *TINY, "--out", str(blocker)], "is a file, not a folder"),
        (["eval", "--weights", weights, "--max-images", "32", "--out", below], "is a file, not a folder"),
        (["eval", "--weights", weights, "--max-images", "32", "--out", str(blocker)], "is a file, not a folder"),
        (["embed", "--weights", weights, image, "--out", below + ".safetensors"], "is a file, not a folder"),
        (["embed", "--weights", weights, image, "--out", str(run)], "is a folder; give a file name"),
        (["explain", "--weights", weights, image, "--out", below + ".png"], "is a file, not a folder"),
        (["explain", "--weights", weights, image, "--out", str(run)], "is a folder; give a file name"),
        (["export", "--weights", weights, "--format", "torchscript", "--out", below + ".pt"],
         "is a file, not a folder"),
        (["shard", sample, "--out", below], "is a file, not a folder"),
        (["shard", sample, "--out", str(blocker)], "is a file, not a folder"),
        (["experiment", "degradation", "--depths", "20", "--kinds", "resnet", "--out", below],
         "is a file, not a folder"),
        (["experiment", "degradation", "--depths", "20", "--kinds", "resnet", "--out", str(blocker)],
         "is a file, not a folder"),
    ]


def test_unwritable_outputs_are_one_line_before_the_work(run: Path, tmp_path: Path, image: str,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import resnets.evaluate

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation ran before its output folder was checked")

    monkeypatch.setattr(resnets.evaluate, "evaluate_model", no_work)
    blocker = tmp_path / "afile"
    blocker.write_text("mine\n")
    before, mine = hashes(run), hashes(tmp_path)
    for argv, says in _unwritable_cases(run, blocker, image):
        assert says in one_line_error(capsys, argv), argv
        assert hashes(run) == before and hashes(tmp_path) == mine, argv  # nothing written, nothing left


def test_read_only_output_folder_is_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # a folder nobody may write in, root included (CI runs as root, which ignores the mode bits above)
    unwritable = [locked / "x"] if os.geteuid() != 0 else [Path("/sys/kernel/resnets-out")]
    try:
        for out in unwritable:
            line = one_line_error(capsys, ["eval", "--weights", str(run / "best.safetensors"), "--out", str(out)])
            assert "--out" in line and ("cannot" in line or "not permitted" in line.lower()), line
    finally:
        locked.chmod(0o700)


def test_search_index_that_is_not_an_index(run: Path, tmp_path: Path, image: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an index\n")
    for index in (text, run / "best.safetensors", run / "last.pt", run / "metrics.csv"):
        line = one_line_error(capsys, ["search", "--index", str(index), image])
        assert "embedding index" in line, line


def test_corrupt_cifar_archive(tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    noise = tmp_path / "noise" / "cifar-10-python.tar.gz"
    noise.parent.mkdir()
    noise.write_bytes(os.urandom(50_000))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = os.urandom(200_000)
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    truncated = tmp_path / "truncated" / "cifar-10-python.tar.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(buf.getvalue()[:40_000])
    assert gzip.decompress(buf.getvalue())  # the whole one is a fine gzip: the damage is the truncation
    weights = str(run / "best.safetensors")
    for archive in (noise, truncated):
        out = tmp_path / f"run-{archive.parent.name}"
        assert "download it again" in one_line_error(capsys, ["train", *TINY, "--data", str(archive),
                                                               "--out", str(out)])
        assert not out.exists()
        assert "cannot read archive" in one_line_error(capsys, ["eval", "--weights", weights, "--data",
                                                                 str(archive), "--out", str(out)])


def test_set_values_are_type_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from resnets.cli.train import parse_set

    line = one_line_error(capsys, ["train", "--set", "lr=abc", "--out", str(tmp_path / "r")])
    assert "--set lr=abc: lr must be a number, not 'abc' (e.g. lr=0.1)" in line
    assert "whole number" in one_line_error(capsys, ["train", "--set", "batch_size=1.5", "--out", str(tmp_path)])
    config = tmp_path / "c.json"
    config.write_text('{"ema": "yes"}')
    assert "ema must be true or false" in one_line_error(capsys, ["train", "--config", str(config)])
    assert parse_set(["milestones=[100,150]", "deterministic=true", "variant=d", "out=123", "epochs=1"]) == \
        {"milestones": [100, 150], "deterministic": True, "variant": "d", "out": "123", "epochs": 1}
    assert not (tmp_path / "r").exists()


def test_closed_pipe_ends_quietly(run: Path) -> None:
    """``resnets predict FOLDER | head -1``: 1,000 lines (over a pipe's 64 KiB) into a pipe that closes."""
    test = Path(extract_sample()) / "test"
    command = f"set -o pipefail; '{sys.executable}' -m resnets predict --weights '{run / 'best.safetensors'}' " \
              f"'{test}' | head -1"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    noise = [ln for ln in proc.stderr.splitlines() if not ln.startswith("predicting: ")]  # progress lines aside
    assert proc.returncode == 141 and noise == [], proc.stderr[-3000:]  # 128 + SIGPIPE, like a Unix tool
    assert len(proc.stdout.splitlines()) == 1


def test_rank_errors_are_printed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Plain torchrun: rank 0 prints, others are quiet; under --nproc the first rank writes the launcher's file."""
    monkeypatch.setenv("RANK", "1")
    report("resnets train: error: x", record=True)
    monkeypatch.setenv("RANK", "0")
    report("resnets train: error: y", record=True)
    assert capsys.readouterr().err == "resnets train: error: y\n"
    monkeypatch.setenv(ERROR_FILE_ENV, str(tmp_path / "error"))
    for rank, message in (("1", "first"), ("0", "second")):
        monkeypatch.setenv("RANK", rank)
        report(message, record=True)
        report("interrupted")
    assert capsys.readouterr().err == "" and (tmp_path / "error").read_text() == "first\n"


def _stderr_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_nproc_user_error_is_one_line_once(tmp_path: Path) -> None:
    """A wrong --data under --nproc 2: the line once, no torchrun ChildFailedError, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "resnets", "train", *TINY, "--nproc", "2", "--data",
                           str(tmp_path / "nope"), "--out", str(tmp_path / "run")],
                          env=torchrun_env(), capture_output=True, text=True, timeout=240)
    lines = _stderr_lines(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert lines == [f"resnets train: error: data not found: {tmp_path / 'nope'} (expected a folder with train/ "
                     "and val/ or test/, a CIFAR archive or folder, 'cifar10', 'cifar100' or 'sample')"], lines


def test_nproc_ctrl_c_prints_one_message(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group) under --nproc 2: one 'interrupted', the checkpoint whole."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "resnets", "train", *TINY, "--epochs", "500", "--train-images",
                             "256", "--checkpoint-every", "2", "--nproc", "2", "--out", str(out)],
                            env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-4000:]
    assert _stderr_lines(stderr) == ["resnets train: interrupted"], stderr[-4000:]
    assert "continue with: resnets train --resume" in stdout
