"""Data-parallel training on PyTorch's own engine: process group from torchrun, rank sharding, global BN.

A run started by ``torchrun`` (or ``resnets train --nproc N``) has ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in its environment; :func:`init_distributed` joins the process group
(gloo on CPU, NCCL on CUDA) with a bounded timeout, so a lost peer ends the run instead of hanging it.
Under torchrun each rank also watches its launcher (:func:`watch_launcher`): if the launcher dies, even by
SIGKILL, the rank gets SIGTERM (the loop checkpoints and stops), and exits anyway after a grace period.

The batch size of the config is the **global** batch: each of the ``W`` ranks takes a contiguous ``B / W``
slice of every global batch of the single-process order (``DeviceBatches.iter_from(rank=, world_size=)``),
so the union of the ranks' batches at step ``s`` is exactly the single-process batch at step ``s``, and the
epoch and batch position of a checkpoint mean the same thing whatever the number of processes.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ERROR_FILE_ENV, UserError

#: Default seconds a collective may wait for a peer before the run fails (``$RESNETS_DIST_TIMEOUT`` overrides).
DEFAULT_TIMEOUT_S = 300.0

#: Seconds a rank whose launcher died has to checkpoint and stop before it exits regardless
#: (``$RESNETS_ORPHAN_GRACE_S`` overrides); it notices within ``LAUNCHER_POLL_S``.
ORPHAN_GRACE_S = 20.0
LAUNCHER_POLL_S = 0.5
#: Set by :func:`launch` for the ranks: the pid of the ``resnets train --nproc`` process.
LAUNCHER_PID_ENV = "RESNETS_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the run: global rank, world size, rank on its node, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only rank that writes files and logs."""
        return self.rank == 0


def env_int(name: str, default: int) -> int:
    """Integer environment variable ``name``, or ``default``; UserError if it is set but not an integer."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def launched_world() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun set them; (0, 1, 0) when not launched by torchrun."""
    rank, world, local = env_int("RANK", 0), env_int("WORLD_SIZE", 1), env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"inconsistent launch environment: RANK={rank} WORLD_SIZE={world}")
    return rank, world, local


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (``--max-restarts``); 0 on the first try."""
    return env_int("TORCHELASTIC_RESTART_COUNT", 0)


def backend_for(device: torch.device) -> str:
    """The process-group backend for ``device``: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def timeout_seconds() -> float:
    """Seconds a collective waits for its peers: ``$RESNETS_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`."""
    value = os.environ.get("RESNETS_DIST_TIMEOUT")
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise UserError(f"RESNETS_DIST_TIMEOUT={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise UserError(f"RESNETS_DIST_TIMEOUT must be positive, got {value}")
    return seconds


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Have Linux send ``sig`` to this process when the thread that started it exits; False where unsupported."""
    prctl = _prctl()
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _start_time(pid: int) -> str | None:
    """``pid``'s start time from /proc (tells a reused pid apart); None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else fields[19]


def _pid_alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` still runs (and is the same process, where /proc tells)."""
    if os.path.isdir("/proc/self"):
        return started is not None and _start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def orphan_grace_seconds() -> float:
    """Seconds an orphaned rank may take to stop: ``$RESNETS_ORPHAN_GRACE_S`` or :data:`ORPHAN_GRACE_S`."""
    value = os.environ.get("RESNETS_ORPHAN_GRACE_S")
    try:
        return float(value) if value else ORPHAN_GRACE_S
    except ValueError:
        raise UserError(f"RESNETS_ORPHAN_GRACE_S={value!r} is not a number of seconds") from None


_watching = False


def watch_launcher() -> bool:
    """Under torchrun, end this rank when its launcher dies (even by SIGKILL); whether a watch was started.

    The rank gets SIGTERM at once (``PR_SET_PDEATHSIG`` on Linux) or within :data:`LAUNCHER_POLL_S` (a daemon
    thread that sees its parent, or the ``resnets train --nproc`` process, gone), so the loop checkpoints and
    stops; if it is still running :func:`orphan_grace_seconds` later (a collective waiting for a dead peer),
    the thread ends the process. Checkpoints are written atomically, so the last one stays whole.
    """
    global _watching
    if _watching or "TORCHELASTIC_RUN_ID" not in os.environ and LAUNCHER_PID_ENV not in os.environ:
        return False
    grace = orphan_grace_seconds()
    parent = os.getppid()
    launcher = env_int(LAUNCHER_PID_ENV, 0)
    launcher_started = _start_time(launcher) if launcher > 0 else None
    # If the parent died before this call, the rendezvous with its store fails, and under --nproc the
    # launcher, which exits when torchrun does, is seen gone.
    set_parent_death_signal(signal.SIGTERM)

    def gone() -> str | None:
        if os.getppid() != parent:  # reparented (pid 1 itself may be the launcher, in a container)
            return f"its launcher (pid {parent})"
        if launcher > 0 and not _pid_alive(launcher, launcher_started):
            return f"resnets train --nproc (pid {launcher})"
        return None

    def watch() -> None:
        while (what := gone()) is None:
            time.sleep(LAUNCHER_POLL_S)
        rank = os.environ.get("RANK", "?")
        print(f"resnets: rank {rank}: {what} is gone; checkpointing and stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # again where the parent-death signal came already: harmless
        time.sleep(grace)
        print(f"resnets: rank {rank}: still running {grace:g} s after the launcher died; exiting (the last "
              "checkpoint is whole)", file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="resnets-launcher-watch", daemon=True).start()
    _watching = True
    return True


def launch(command: list[str]) -> int:
    """Run the torchrun ``command`` (``--nproc``): it gets SIGTERM if this process dies; its exit status.

    Its ranks know this process by ``$RESNETS_LAUNCHER_PID`` and stop if it goes. On Ctrl-C (which torchrun
    also gets, and passes to the ranks) this waits for the ranks' checkpoint before giving up on them. A rank's
    UserError is written to ``$RESNETS_ERROR_FILE`` (see ``resnets.cli.report``) and printed here once: 2.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="resnets-launch-") as tmp:
        error_file = os.path.join(tmp, "error")
        code = _launch(command, error_file)
        if code == 128 + signal.SIGINT and not os.path.isfile(error_file):
            # torchrun and the ranks stopped on a Ctrl-C that this process saw after its wait had returned
            # (or not at all): the same one "interrupted" line and status as when it saw it in time
            raise KeyboardInterrupt
        if code != 0 and os.path.isfile(error_file):
            with open(error_file) as fh:
                message = fh.read().strip()
            if message:
                print(message, file=sys.stderr)
                return 2
        return code


def _launch(command: list[str], error_file: str) -> int:
    """:func:`launch` with the ranks' error file ``error_file``."""
    me = os.getpid()
    prctl = _prctl()

    def die_with_launcher() -> None:  # in the child, before exec: nothing that could take a lock
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != me:  # the launcher died before the prctl
            os._exit(1)

    env = os.environ | {LAUNCHER_PID_ENV: str(me), ERROR_FILE_ENV: error_file}
    with subprocess.Popen(command, env=env, preexec_fn=die_with_launcher) as proc:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            try:
                proc.wait(timeout=orphan_grace_seconds() + 15)
            except (KeyboardInterrupt, subprocess.TimeoutExpired):
                proc.kill()
            raise


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group torchrun describes (a no-op for one process); the rank's device.

    ``device`` is the resolved device type of the run; on CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    rank, world, local = launched_world()
    watch_launcher()  # under torchrun: stop when the launcher dies
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if world == 1:
        return DistEnv(0, 1, 0, device, None)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise UserError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun "
                            "(or resnets train --nproc N)")
    backend = backend_for(device)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        timeout = datetime.timedelta(seconds=timeout_seconds())
        store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
        # torchrun keeps its store across --max-restarts: without a per-attempt prefix a restarted rank can
        # read a dead peer's address left by the previous attempt and fail to connect.
        store = dist.PrefixStore(f"resnets/attempt_{restart_count()}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout, **kwargs)
    return DistEnv(rank, world, local, device, backend)


def shutdown(env: DistEnv) -> None:
    """Leave the process group after a last barrier, so no rank closes connections a peer still reads."""
    if env.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def on_main(env: DistEnv, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Call ``fn`` on rank 0 only; None elsewhere."""
    return fn(*args, **kwargs) if env.is_main else None


def broadcast_object(env: DistEnv, obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a picklable value, e.g. a run directory name)."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for one process)."""
    if env.enabled:
        dist.barrier()




def all_reduce_sum(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor; the input itself for one process)."""
    if not env.enabled:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out)
    return out


def combine_eval(env: DistEnv, result: dict[str, Any]) -> dict[str, Any]:
    """Merge per-rank ``evaluate_model`` results (each on a disjoint slice of the set) into the whole set's."""
    if not env.enabled:
        return result
    confusion = result["confusion"].to(env.device)
    n = float(confusion.sum())
    sums = torch.tensor([result["loss"] * n, result["top5"] * n, n], dtype=torch.float64, device=env.device)
    sums, confusion = all_reduce_sum(env, sums), all_reduce_sum(env, confusion)
    total = max(1.0, float(sums[2]))
    merged = dict(result)
    merged.update(loss=float(sums[0]) / total, top5=float(sums[1]) / total,
                  top1=100.0 * float(confusion.diag().sum()) / total, confusion=confusion.cpu())
    return merged


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of every rank's input is the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks, on any device.

    PyTorch's ``SyncBatchNorm`` runs only on accelerators; this one all-reduces the per-channel sum and sum
    of squares (in float64) with an autograd-aware all-reduce, so its forward, backward and running
    statistics are those of one process seeing the whole global batch. Outside a multi-process run it is
    an ordinary BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        x64 = x.to(torch.float64)
        local = torch.cat([x64.sum(dim=(0, 2, 3)), (x64 * x64).sum(dim=(0, 2, 3)),
                           x64.new_full((1,), x.numel() / channels)])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels:2 * channels] / count - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[operator]
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        shift = mean.to(x.dtype)
        y = (x - shift.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``model`` made global-batch: ``nn.SyncBatchNorm`` on CUDA, else GlobalBatchNorm2d."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _replace_bn(model)


def _replace_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats, device=module.weight.device if module.affine else None)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _replace_bn(child))
    return module


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks (the model itself otherwise)."""
    if not env.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)  # buffers (BN running stats) follow rank 0
