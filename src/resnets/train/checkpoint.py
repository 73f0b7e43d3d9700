"""Training checkpoints: plain tensors and containers only (``torch.load(weights_only=True)``), written atomically.

The file is written beside its destination, fsynced, renamed into place and the directory fsynced, so a
crash or ``kill -9`` mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..outputs import atomic_write

# 2: the meters' sums as {"epoch": {...}, "window": {...}} (1: flat "epoch_loss", "win_loss"... keys)
CHECKPOINT_VERSION = 2


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same directory, fsync, rename, fsync dir)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code runs); UserError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path} is not a readable checkpoint ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or "version" not in state:
        raise UserError(f"{path} is not a resnets training checkpoint")
    if state["version"] == 1:
        return _upgrade_v1(state)
    if state["version"] != CHECKPOINT_VERSION:
        raise UserError(f"{path} is a version {state['version']} checkpoint; this resnets reads versions 1 to "
                        f"{CHECKPOINT_VERSION}: upgrade resnets to resume it")
    return state


def _upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """A version 1 checkpoint in version 2's layout: the sums by window (``epoch_loss`` -> ``epoch.loss``)."""
    sums = state.get("sums", {})
    state["sums"] = {window: {name: sums.get(f"{prefix}{name}", 0) for name in ("loss", "correct", "seen", "time")}
                     for window, prefix in (("epoch", "epoch_"), ("window", "win_"))}
    state["version"] = CHECKPOINT_VERSION
    return state


def rng_state(data_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random-number state the run touches, as plain tensors and lists."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], data_generator: torch.Generator | None = None) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state["cuda"] and torch.cuda.is_available():  # a machine with fewer GPUs restores those it has
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    if data_generator is not None and "data" in state:
        data_generator.set_state(state["data"])
