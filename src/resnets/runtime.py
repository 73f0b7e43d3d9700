"""Where and how a model runs: the device, the number format (autocast dtype), determinism and seeds.

Train, eval, predict, the fast inference path and the experiments all choose these here, once:

* :func:`resolve_device` - ``auto``/``cpu``/``cuda`` to a ``torch.device``.
* :func:`choose_precision` - ``auto``/``fp32``/``bf16``/``fp16`` to the name of the format a model runs in
  (``auto``: bf16 or fp16 on CUDA; on CPU what the probe in :mod:`resnets.hardware` timed faster).
* :func:`autocast_dtype`, :func:`autocast_context` - that name as an autocast dtype and context.
* :func:`use_deterministic`, :func:`seed_everything`, :func:`derive_seed` - reproducibility.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UserError

#: Number formats by name: the autocast dtype (None: float32, no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; UserError for CUDA without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU here")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device '{device}'; use cpu, cuda or auto")
    return torch.device(device)


def choose_precision(precision: str, device: torch.device, model: nn.Module | None = None, *,
                     image_size: int = 32, training: bool = False, model_key: str = "model") -> str:
    """The number format ``model`` runs in on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``auto``: on CUDA, bf16 where the GPU has it natively, else fp16; on CPU, bf16 only where the probe
    (``hardware.cpu_precision``, cached) timed ``model`` at ``image_size`` faster in bf16 than in float32
    (training or inference) on this machine; float32 without a model to time. fp16 needs CUDA.
    """
    if precision == "auto":
        from .hardware import cpu_precision, cuda_autocast_dtype, probe_input_shape

        if device.type == "cuda":
            return precision_name(cuda_autocast_dtype())
        if model is None:
            return "fp32"
        return cpu_precision(model, probe_input_shape(image_size), training=training, model_key=model_key)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; use auto, bf16, fp16 or fp32")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("fp16 needs a CUDA device; on CPU use bf16 or fp32")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a format name from :func:`choose_precision` (None: float32)."""
    return PRECISIONS[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """``torch.bfloat16`` -> ``"bf16"``; None -> ``"fp32"``."""
    return next(name for name, d in PRECISIONS.items() if d == dtype)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op for float32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def use_deterministic(deterministic: bool | None, device: torch.device) -> bool:
    """``deterministic`` if set; else on for CPU (resume is bit-exact), off for CUDA (cudnn.benchmark)."""
    return deterministic if deterministic is not None else device.type == "cpu"


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch, CUDA, Python and NumPy; with ``deterministic``, ask PyTorch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def derive_seed(purpose: str, *parts: Any) -> int:
    """A 63-bit seed for one ``purpose`` (``"batches"``, ``"shards"``...) mixed from ``parts`` (the run's seed,
    the epoch...): the same parts give the same seed on every machine and Python."""
    digest = hashlib.sha256(":".join(map(str, (f"resnets-{purpose}", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
