"""What this machine's CPU can do fast: the facts behind every ``precision="auto"``.

On CPUs without AMX, bf16 runs at about half the float32 matrix rate (measured on the AVX512-BF16
development box: docs/results.md), so ``auto`` means bf16 only where AMX tiles exist.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16) that oneDNN uses."""
    if not torch.backends.mkldnn.is_available():
        return False
    if flags := _cpu_flags():
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()
                and torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX"))


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX-BF16 tile units (Sapphire Rapids and later, where the OS enables them)."""
    if flags := _cpu_flags():
        return "amx_bf16" in flags
    return torch.backends.cpu.get_cpu_capability() == "AMX"
