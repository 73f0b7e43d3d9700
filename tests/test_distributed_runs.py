"""End-to-end data-parallel runs on the shipped sample: 2 gloo processes vs 1, a killed rank, a killed launcher,
a torchrun restart, two simulated nodes on loopback, and shards vs the folder they came from. Every child has a
timeout."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnets.data.sample import extract_sample
from resnets.data.shards import write_shards
from resnets.train import resolve_config, train
from test_distributed import errors, torchrun_env

# A tiny run: resnet20 on 256 sample images, global batch 32 (16 per rank), fp32, no augmentation noise.
TINY = ["--model", "resnet20", "--train-images", "256", "--test-images", "200", "--batch-size", "32",
        "--precision", "fp32", "--seed", "0", "--no-progress", "--workers", "0"]


def _overrides(**extra: object) -> dict[str, object]:
    base = dict(model="resnet20", train_images=256, test_images=200, batch_size=32, precision="fp32", seed=0,
                progress=False, workers=0, plots=False)
    base.update(extra)
    return base


def _resnets(*args: str, timeout: float = 150, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnets", "train", *args], env=env or torchrun_env(),
                          capture_output=True, text=True, timeout=timeout)


def _params(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "last.pt", weights_only=True)["model"]
    return {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}


def test_two_processes_match_one_process(tmp_path: Path) -> None:
    """SyncBN: 2 ranks == 1 process (float tolerance). Per-rank BN: == 1 process with 2 micro-batches."""
    single = train(resolve_config(_overrides(iterations=6, out=str(tmp_path / "one"))), log=lambda _: None)
    proc = _resnets(*TINY, "--iterations", "6", "--nproc", "2", "--sync-bn", "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, errors(proc.stderr)
    assert proc.stdout.count("training resnet20") == 1 and "x 2 processes (gloo)" in proc.stdout  # rank 0 logs
    one, two = torch.load(tmp_path / "one" / "last.pt", weights_only=True), \
        torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert two["world_size"] == 2 and two["step"] == 6
    for key, value in one["model"].items():  # every weight and BN running statistic
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=2e-5, msg=key)
    assert abs(two["metrics"][-1]["train_loss"] - single.final["train_loss"]) < 1e-4
    assert two["metrics"][-1]["val_acc"] == single.final["val_acc"]
    # without SyncBN each rank normalises its own 16 images: the maths of 2 micro-batches of 16 in one process
    accum = train(resolve_config(_overrides(iterations=6, accum_steps=2, out=str(tmp_path / "acc"))),
                  log=lambda _: None)
    assert accum.step == 6
    proc = _resnets(*TINY, "--iterations", "6", "--nproc", "2", "--out", str(tmp_path / "ranks"))
    assert proc.returncode == 0, errors(proc.stderr)
    ref, got = _params(tmp_path / "acc"), _params(tmp_path / "ranks")
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=2e-5, msg=key)


def test_two_processes_fine_tune_like_one_across_the_unfreeze(tmp_path: Path) -> None:
    """--init with the head first (freeze_epochs) and stage LRs: 2 ranks (SyncBN) == 1 process, across the epoch
    where the backbone unfreezes (the DDP wrapper then reduces the gradients of the stages that train now)."""
    from resnets import create_model
    from resnets.weights import save_weights

    save_weights(create_model("resnet20", num_classes=4), tmp_path / "w.safetensors",
                 classes=["a", "b", "c", "d"], normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    tune = dict(init=str(tmp_path / "w.safetensors"), freeze_epochs=1, lr_stage_decay=0.5, iterations=10)
    train(resolve_config(_overrides(**tune, out=str(tmp_path / "one"))), log=lambda _: None)  # 8 steps an epoch
    proc = _resnets(*TINY[2:], "--init", str(tmp_path / "w.safetensors"), "--freeze-epochs", "1",
                    "--lr-stage-decay", "0.5", "--iterations", "10", "--nproc", "2", "--sync-bn",
                    "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, errors(proc.stderr)
    assert "epoch 2: unfreezing" in proc.stdout
    one, two = torch.load(tmp_path / "one" / "last.pt", weights_only=True), \
        torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=2e-5, msg=key)


def _worker_pid(tag: str, rank: int, timeout: float = 60) -> int:
    """The pid of the torchrun worker of ``rank`` whose environment carries ``RESNETS_TEST_TAG=tag``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RESNETS_TEST_TAG={tag}".encode() in environ and f"RANK={rank}".encode() in environ \
                    and b"TORCHELASTIC_RESTART_COUNT=0" in environ:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank} found")


def _launch_and_kill(tmp_path: Path, extra: list[str], iterations: int) -> tuple[subprocess.Popen, float, str]:
    out = tmp_path / "run"
    tag = f"{os.getpid()}-{tmp_path.name}"
    env = torchrun_env() | {"RESNETS_TEST_TAG": tag}
    log = open(tmp_path / "log.txt", "w+")  # noqa: SIM115 - read back below
    proc = subprocess.Popen([sys.executable, "-m", "resnets", "train", *TINY, "--iterations", str(iterations),
                             "--checkpoint-every", "2", "--nproc", "2", "--out", str(out), *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "run ended before its first checkpoint"
            time.sleep(0.1)
        os.kill(_worker_pid(tag, 1), signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=120)
        return proc, time.monotonic() - killed, (log.seek(0), log.read())[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_killed_rank_ends_the_run_quickly(tmp_path: Path) -> None:
    proc, seconds, output = _launch_and_kill(tmp_path, [], iterations=2000)
    assert proc.returncode != 0, output[-2000:]
    assert seconds < 30, f"took {seconds:.1f} s to stop after a rank died"


def _children(pid: int) -> list[int]:
    """The pids of the live children of ``pid`` (from /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` is running (a zombie is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _wait_gone(pids: list[int], timeout: float) -> float:
    """Seconds until every process of ``pids`` has exited; AssertionError after ``timeout``."""
    start = time.monotonic()
    while any(_alive(p) for p in pids):
        assert time.monotonic() - start < timeout, f"still running after {timeout:.0f} s: " \
            f"{[p for p in pids if _alive(p)]}"
        time.sleep(0.1)
    return time.monotonic() - start


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("victim", ["resnets", "torchrun"])
def test_killed_launcher_stops_the_ranks(tmp_path: Path, victim: str) -> None:
    """SIGKILL of ``resnets train --nproc 2`` (or of its torchrun agent): the ranks checkpoint and exit in < 30 s."""
    out = tmp_path / "run"
    tag = f"{os.getpid()}-{tmp_path.name}"
    log = open(tmp_path / "log.txt", "w+")  # noqa: SIM115 - read back below
    proc = subprocess.Popen([sys.executable, "-m", "resnets", "train", *TINY, "--iterations", "5000",
                             "--checkpoint-every", "2", "--nproc", "2", "--out", str(out)],
                            env=torchrun_env() | {"RESNETS_TEST_TAG": tag}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    everyone = [proc.pid]
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "run ended before its first checkpoint"
            time.sleep(0.1)
        ranks = [_worker_pid(tag, rank) for rank in range(2)]
        agents = _children(proc.pid)
        assert len(agents) == 1, agents
        everyone += agents + ranks
        assert sorted(_children(agents[0])) == sorted(ranks)  # the ranks are the torchrun agent's children
        os.kill(proc.pid if victim == "resnets" else agents[0], signal.SIGKILL)
        if victim == "resnets":
            proc.wait(timeout=10)  # reap it, as a shell would
        seconds = _wait_gone(ranks + agents, timeout=30)
        log.seek(0)
        output = log.read()
        assert "stopped (SIGTERM)" in output, errors(output)  # rank 0 checkpointed on its way out
        state = torch.load(out / "last.pt", weights_only=True)
        assert state["step"] >= 2 and state["world_size"] == 2
        assert not list(out.glob(".last.pt.*")), "a checkpoint was left half-written"
        print(f"ranks gone {seconds:.1f} s after the {victim} launcher was killed")
    finally:
        _kill_all(everyone)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()


def test_orphaned_ranks_stuck_in_a_collective_exit(tmp_path: Path) -> None:
    """Launcher killed while rank 0 waits in a barrier rank 1 never joins (and rank 1 ignores SIGTERM): both exit
    after the grace period instead of waiting for the collective timeout, or forever."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           str(Path(__file__).parent / "dist_check.py"), str(tmp_path), "hang"]
    env = torchrun_env() | {"RESNETS_ORPHAN_GRACE_S": "2", "RESNETS_DIST_TIMEOUT": "600"}
    agent = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while not all((tmp_path / f"hang{r}.pid").is_file() for r in range(2)):
            assert agent.poll() is None and time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.1)
        time.sleep(0.5)  # rank 0 is in its barrier now
        ranks = [int((tmp_path / f"hang{r}.pid").read_text()) for r in range(2)]
        assert sorted(_children(agent.pid)) == sorted(ranks)
        agent.kill()
        agent.wait(timeout=10)
        seconds = _wait_gone(ranks, timeout=15)
        print(f"stuck ranks gone {seconds:.1f} s after the launcher was killed")
    finally:
        _kill_all(ranks)
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=30)


def test_max_restarts_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    proc, _, output = _launch_and_kill(tmp_path, ["--max-restarts", "1"], iterations=24)
    assert proc.returncode == 0, errors(output)
    assert "resuming resnet20" in output  # the restarted workers went on from last.pt
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 24 and (tmp_path / "run" / "best.safetensors").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = []
    for _ in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", f"t{os.getpid()}",
               "--local-addr", "127.0.0.1", "-m", "resnets", "train", *TINY, "--iterations", "4",
               "--out", str(tmp_path / "run")]
        nodes.append(subprocess.Popen(cmd, env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    try:
        outputs = [n.communicate(timeout=150) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
    assert [n.returncode for n in nodes] == [0, 0], errors(outputs[0][1] + outputs[1][1])
    assert sum("x 2 processes (gloo)" in out for out, _ in outputs) == 1  # one rank 0, over two "nodes"
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["world_size"] == 2


def test_shards_train_like_the_folder(tmp_path: Path) -> None:
    """The same 640 + 200 sample images as a folder and as shards: same accuracy within 10 points."""
    sample = extract_sample()
    folder = tmp_path / "images"
    for split, per_class in (("train", 64), ("test", 20)):
        for class_dir in sorted((sample / split).iterdir()):
            dest = folder / split / class_dir.name
            dest.mkdir(parents=True)
            for f in sorted(class_dir.iterdir())[:per_class]:
                shutil.copy(f, dest / f.name)
    write_shards(folder, tmp_path / "shards", max_count=160, log=lambda _: None)
    common = dict(model="resnet20", batch_size=64, epochs=4, precision="fp32", seed=0, progress=False,
                  plots=False, workers=0, ema=False)
    from_folder = train(resolve_config(dict(common, data=str(folder), out=str(tmp_path / "a"))), log=lambda _: None)
    from_shards = train(resolve_config(dict(common, data=str(tmp_path / "shards" / "train-{000000..000003}.tar"),
                                            out=str(tmp_path / "b"))), log=lambda _: None)
    assert from_shards.step == from_folder.step == 40
    assert from_folder.final["val_acc"] > 15 and from_shards.final["val_acc"] > 15  # both learn (chance: 10)
    assert abs(from_shards.final["val_acc"] - from_folder.final["val_acc"]) <= 10
