"""ResNet training throughput on one CUDA GPU with synthetic data: resnets' engine settings vs torchvision eager.

Ours: ``resnets.create_model`` in channels_last, bf16 autocast, ``torch.compile``, cudnn.benchmark (the
engine's CUDA defaults); the reference: torchvision's model in float32, NCHW, eager, with PyTorch's defaults
as a user gets them (TF32 for convolutions on, cudnn.benchmark off). Also, in the same run, torchvision with
bf16 autocast and channels_last (the usual mixed-precision recipe), so the ratio is fair. Same batch, same SGD
step. Prints one JSON line with images/s of all three and the ratios; ``benchmarks/gpu.sh`` calls it.

    python benchmarks/gpu_train.py --model resnet50 --batch 256 --steps 30
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import nn


def _time_steps(step: Callable[[], None], steps: int, warmup: int) -> tuple[float, float]:
    """(seconds of the first step, including compilation; seconds per step after warm-up)."""
    t = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    return first, start.elapsed_time(end) / 1e3 / steps


def _make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    import torchvision

    from resnets import create_model

    device = torch.device("cuda")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    x_cl = x.contiguous(memory_format=torch.channels_last)
    reference = getattr(torchvision.models, args.model)(weights=None).to(device).train()
    ref_first, ref_step = _time_steps(_make_step(reference, x, y, bf16=False), args.steps, args.warmup)
    reference = reference.to(memory_format=torch.channels_last)
    amp_first, amp_step = _time_steps(_make_step(reference, x_cl, y, bf16=True), args.steps, args.warmup)
    del reference
    torch.cuda.empty_cache()

    torch.backends.cudnn.benchmark = True
    ours = create_model(args.model).to(device, memory_format=torch.channels_last).train()
    run = ours if args.no_compile else torch.compile(ours)
    torch.cuda.reset_peak_memory_stats()
    our_first, our_step = _time_steps(_make_step(run, x_cl, y, bf16=True), args.steps, args.warmup)
    print(json.dumps({
        "benchmark": "gpu_train_synthetic", "model": args.model, "batch": args.batch, "size": args.size,
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "ours": {"setting": "bf16 autocast, channels_last" + ("" if args.no_compile else ", compiled"),
                 "images_per_s": round(args.batch / our_step, 1), "first_step_s": round(our_first, 1),
                 "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)},
        "reference": {"setting": "torchvision eager float32 NCHW (PyTorch defaults)",
                      "images_per_s": round(args.batch / ref_step, 1), "first_step_s": round(ref_first, 1)},
        "reference_amp": {"setting": "torchvision eager, bf16 autocast, channels_last",
                          "images_per_s": round(args.batch / amp_step, 1), "first_step_s": round(amp_first, 1)},
        "ratio": round(ref_step / our_step, 2), "ratio_vs_amp": round(amp_step / our_step, 2),
    }))


if __name__ == "__main__":
    main()
