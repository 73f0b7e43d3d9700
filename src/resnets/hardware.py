"""Which number format runs fastest here: the facts behind every ``precision="auto"``.

On CPUs the answer is measured, never guessed from feature flags: bf16 runs at half the float32 rate on an
AVX512-BF16 Xeon without AMX, and 1.3-2.3x faster than float32 on AVX512-BF16 Zen 5 (docs/results.md).
``cpu_precision`` times the model's own forward (and backward, for training) in both formats for about a
second, and caches the verdict per CPU model, PyTorch version, thread count, model and input size in
``<cache dir>/precision-probe.json``. On CUDA, bf16 where the GPU has it natively, else fp16.
"""

from __future__ import annotations

import copy
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

PROBE_SECONDS = 1.0  # time budget of one probe (at least MIN_ROUNDS rounds of each format are timed)
MIN_ROUNDS = 3
BF16_MARGIN = 0.9  # bf16 is chosen only when its median time is under 90% of float32's
CLEAR_LOSS = 3.0  # a round where bf16 takes over 3x float32's time ends the probe (an AVX2-only CPU: 5-10x)


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU reports bf16 instructions (AVX512-BF16 or AMX-BF16): shown in reports, never used to
    choose a precision (``cpu_precision`` measures instead)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        flags = []
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def cuda_autocast_dtype() -> torch.dtype:
    """bf16 on GPUs with native bf16 (Ampere and later), else fp16 (which needs a gradient scaler)."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def probe_cache_path() -> Path:
    """Where probe verdicts are kept (beside the data cache; not created)."""
    from .data.cache import default_cache_dir

    return default_cache_dir() / "precision-probe.json"


def probe_key(model_key: str, input_shape: tuple[int, ...], training: bool) -> str:
    """The cache key of one probe: CPU, PyTorch version, threads, what ran and on what shape."""
    shape = "x".join(str(s) for s in input_shape)
    mode = "train" if training else "infer"
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {model_key} {mode} {shape}"


def time_formats(model: nn.Module, input_shape: tuple[int, ...], *, training: bool,
                 seconds: float = PROBE_SECONDS) -> dict[str, float]:
    """Median seconds of one call of a copy of ``model`` in float32 and in bf16 autocast, interleaved.

    Training: forward and backward in train mode; inference: forward under ``inference_mode``. Both
    channels_last, on a random batch of ``input_shape``; the model itself is not touched.
    """
    net = copy.deepcopy(model).cpu().to(memory_format=torch.channels_last).train(training)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(input_shape, generator=gen).contiguous(memory_format=torch.channels_last)

    def call(bf16: bool) -> float:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        start = time.perf_counter()
        if training:
            with autocast:
                out = net(x)
            out.float().sum().backward()
            net.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast:
                net(x)
        return time.perf_counter() - start

    call(False), call(True)  # warm-up: oneDNN builds its kernels on the first call of each format
    times: dict[bool, list[float]] = {False: [], True: []}
    start = time.perf_counter()
    while True:  # at least MIN_ROUNDS rounds, unless they would take over three times the budget
        for bf16 in (False, True):
            times[bf16].append(call(bf16))
        spent = time.perf_counter() - start
        if spent >= seconds and (len(times[True]) >= MIN_ROUNDS or spent >= 3 * seconds):
            break
        if times[True][-1] > CLEAR_LOSS * times[False][-1]:  # bf16 emulated (no native units): no doubt
            break
    return {"fp32_s": statistics.median(times[False]), "bf16_s": statistics.median(times[True]),
            "rounds": len(times[True])}


def cpu_precision(model: nn.Module, input_shape: tuple[int, ...], *, training: bool, model_key: str,
                  measure: Callable[..., dict[str, float]] = time_formats) -> str:
    """``"bf16"`` where bf16 autocast ran ``model`` clearly faster than float32 on this CPU, else ``"fp32"``.

    Measured once per ``probe_key`` and cached; ``measure`` is the timing function (tests swap it).
    """
    key = probe_key(model_key, input_shape, training)
    path = probe_cache_path()
    cached = _read_json(path)
    entry = cached.get(key)
    if not (isinstance(entry, dict) and entry.get("choice") in ("bf16", "fp32")):
        timing = measure(model, input_shape, training=training)
        choice = "bf16" if timing["bf16_s"] < BF16_MARGIN * timing["fp32_s"] else "fp32"
        entry = {**timing, "choice": choice, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        cached[key] = entry
        _write_json(path, cached)
    return str(entry["choice"])


def probe_input_shape(image_size: int) -> tuple[int, int, int, int]:
    """A batch shape whose float32 training step takes tens of milliseconds: 32 images at 32x32, fewer above."""
    batch = max(1, min(32, (32 * 32 * 32) // (image_size * image_size)))
    return (batch, 3, image_size, image_size)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write; a cache that cannot be written is not an error (the probe just runs again next time)."""
    from .outputs import atomic_write

    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True)))
    except OSError:
        pass
