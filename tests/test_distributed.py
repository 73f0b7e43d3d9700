"""Data-parallel helpers: rank sharding of batch orders, one-step collectives on 2 gloo ranks, launch env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from resnets.data import DeviceBatches, ImageTensors, RankBatches
from resnets.errors import UserError
from resnets.train import distributed as D

ROOT = Path(__file__).resolve().parents[1]


def torchrun_env() -> dict[str, str]:
    """Environment for a child torchrun: one thread per rank, loopback only, short collective timeout."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", RESNETS_DIST_TIMEOUT="60", PYTHONUNBUFFERED="1")
    return env


def errors(stderr: str) -> str:
    """The lines of a child's stderr that are not warnings (for assertion messages)."""
    return "\n".join(line for line in stderr.splitlines() if "Warning" not in line and "warn(" not in line)[-4000:]


def test_rank_batches_are_slices_of_the_single_process_batches() -> None:
    g = torch.Generator().manual_seed(1)
    data = ImageTensors(torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (50,), generator=g), [str(i) for i in range(10)])

    def batches() -> DeviceBatches:
        b = DeviceBatches(data, 12, train=True, mean=[0.5] * 3, std=[0.25] * 3, seed=3, channels_last=False)
        b.set_epoch(2)
        return b

    single = list(batches())
    ranks = [RankBatches(batches(), r, 2) for r in range(2)]
    assert len(ranks[0]) == len(single) == 4
    per_rank = [list(r) for r in ranks]
    for b, (x, y) in enumerate(single):  # same images, same crops and flips, same labels
        assert torch.equal(torch.cat([per_rank[0][b][0], per_rank[1][b][0]]), x)
        assert torch.equal(torch.cat([per_rank[0][b][1], per_rank[1][b][1]]), y)
    resumed = list(ranks[1].iter_from(3))
    assert len(resumed) == 1 and torch.equal(resumed[0][0], per_rank[1][3][0])
    with pytest.raises(UserError, match="divisible"):
        RankBatches(batches(), 0, 5)


def test_single_process_env_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    env = D.init_distributed(torch.device("cpu"))
    assert (env.rank, env.world_size, env.enabled, env.is_main) == (0, 1, False, True)
    assert D.all_reduce_sum(env, torch.tensor([2.5, 3.0])).tolist() == [2.5, 3.0]  # one process: the values
    assert D.backend_for(torch.device("cuda")) == "nccl" and D.backend_for(torch.device("cpu")) == "gloo"
    assert D.restart_count() == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(UserError, match="MASTER_ADDR"):
        D.init_distributed(torch.device("cpu"))
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match="inconsistent"):
        D.launched_world()
    monkeypatch.setenv("RESNETS_DIST_TIMEOUT", "0")
    with pytest.raises(UserError, match="positive"):
        D.timeout_seconds()


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    """GlobalBatchNorm2d + DDP on 2 ranks: gradients and running stats equal one process on the whole batch."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           str(ROOT / "tests" / "dist_check.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=torchrun_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, errors(proc.stderr)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert (tmp_path / "main-only.txt").is_file()

    torch.manual_seed(0)
    full = (torch.randn(8, 4, 5, 5) * 3 + 1).requires_grad_(True)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2, 4))
        bn.bias.copy_(torch.linspace(-1, 1, 4))
    weights = torch.arange(full.numel(), dtype=torch.float32).view_as(full)
    ((bn(full) * weights).sum() / full.shape[0]).backward()

    grad_x = torch.cat([torch.tensor(r["grad_x"]) for r in ranks]) / 2  # each rank's input grad is W x its share
    torch.testing.assert_close(grad_x, full.grad, rtol=1e-4, atol=1e-4)
    for r in ranks:
        torch.testing.assert_close(torch.tensor(r["grad_w"]), bn.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.tensor(r["grad_b"]), bn.bias.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.tensor(r["running_mean"]), bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.tensor(r["running_var"]), bn.running_var, rtol=1e-5, atol=1e-6)
        assert r["nan_step"] == (7 if r["rank"] == 1 else -1) and r["nan_stop"] is False  # a NaN reaches every rank
        assert (r["loss"], r["correct"], r["stop"]) == (2.5, 6.0, True)  # global mean, sum, any-rank stop
        assert r["run_dir"] == "run-of-rank-0"
