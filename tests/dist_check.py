"""Run by tests/test_distributed.py under torchrun (2 ranks, gloo): checks the collectives of one step.

Writes ``OUT/rank<r>.json`` with what it found; the test compares the ranks with a one-process reference.
With ``OUT hang`` (tests/test_distributed_runs.py) the ranks get stuck instead, SIGTERM only noted as the
loop notes it: rank 0 in a barrier that rank 1 never joins; each writes ``OUT/hang<r>.pid`` once it is there.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

from resnets.train import distributed as D
from resnets.train.parts import StepTotals


def main(out: Path) -> None:
    env = D.init_distributed(torch.device("cpu"))
    torch.manual_seed(0)
    full = torch.randn(8, 4, 5, 5) * 3 + 1  # the global batch; this rank sees its half
    mine = full.chunk(env.world_size)[env.rank].clone().requires_grad_(True)
    bn = D.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)), env.device)
    with torch.no_grad():
        bn[0].weight.copy_(torch.linspace(0.5, 2, 4))
        bn[0].bias.copy_(torch.linspace(-1, 1, 4))
    model = D.wrap_ddp(bn, env)
    weights = torch.arange(full.numel(), dtype=torch.float32).view_as(full).chunk(env.world_size)[env.rank]
    loss = (model(mine) * weights).sum() / full.shape[0] * env.world_size  # local mean -> DDP averages
    loss.backward()
    # the trainer's read of its step totals: a NaN on rank 1 trips every rank; a stop on rank 0 stops all
    totals = StepTotals(env.device, guard_streak=1)
    totals.add(torch.tensor(float("nan") if env.rank == 1 else 1.0), torch.tensor(1.0), 4, step=7)
    *_, nan_bad, nan_stop = totals.read(env, False)
    totals = StepTotals(env.device, guard_streak=1)
    totals.add(torch.tensor(2.0 + env.rank), torch.tensor(3.0), 4, step=8)
    loss_sum, hits, seen, _, stop = totals.read(env, env.rank == 0)
    result = {"rank": env.rank, "world": env.world_size, "grad_x": mine.grad.tolist(),
              "grad_w": bn[0].weight.grad.tolist(), "grad_b": bn[0].bias.grad.tolist(),
              "running_mean": bn[0].running_mean.tolist(), "running_var": bn[0].running_var.tolist(),
              "nan_step": nan_bad[0] if nan_bad else None, "nan_stop": nan_stop, "loss": loss_sum / seen,
              "correct": hits, "stop": stop,
              "run_dir": D.broadcast_object(env, f"run-of-rank-{env.rank}")}
    D.on_main(env, (out / "main-only.txt").write_text, "written by rank 0\n")
    (out / f"rank{env.rank}.json").write_text(json.dumps(result))
    D.shutdown(env)


def hang(out: Path) -> None:
    """Stuck ranks: rank 0 waits in a barrier, rank 1 sleeps; SIGTERM is noted, not acted on."""
    env = D.init_distributed(torch.device("cpu"))
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the loop's handler: a request, acted on later
    (out / f"hang{env.rank}.pid").write_text(str(os.getpid()))
    if env.rank == 0:
        D.barrier(env)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    hang(Path(sys.argv[1])) if sys.argv[2:] == ["hang"] else main(Path(sys.argv[1]))
