"""Where one training step's time goes: the parts of the resnets loop timed apart, against the whole step.

The loop's own pieces on synthetic CIFAR-size data held on the device (``DeviceBatches``): cutting and
augmenting a batch, forward + backward under autocast, the SGD step, the EMA update and the device-side
totals, each timed alone over the same number of steps, then the whole step. On CUDA each figure is CUDA
events around ``steps`` repetitions after a warm-up; on CPU, wall time. Prints one JSON line.

    python benchmarks/step_profile.py --model resnet20 --batch 512 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import nn


def timed(fn: Callable[[], object], steps: int, device: torch.device) -> float:
    """Milliseconds per call of ``fn`` over ``steps`` calls, after three warm-up calls."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / steps
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) * 1e3 / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--images", type=int, default=10000, help="synthetic training set size")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    args = ap.parse_args()

    from resnets import create_model
    from resnets.data.batches import DeviceBatches
    from resnets.data.tensors import ImageTensors
    from resnets.train import resolve_config
    from resnets.train.ema import ModelEMA
    from resnets.train.optim import build_optimizer
    from resnets.train.parts import StepTotals
    from resnets.train.trainer import MAX_SKIPPED_STEPS

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(0)
    data = ImageTensors(torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=gen),
                        torch.randint(0, 10, (args.images,), generator=gen), [str(i) for i in range(10)])
    batches = DeviceBatches(data, args.batch, train=True, device=device, mean=[0.5] * 3, std=[0.25] * 3)
    cfg = resolve_config({"model": args.model, "batch_size": args.batch}, recipe="cifar-fast")
    model = create_model(args.model).to(device, memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, cfg)
    ema = ModelEMA(model, cfg.ema_decay)
    totals = StepTotals(device, MAX_SKIPPED_STEPS)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    x, y = next(iter(batches))

    def stream() -> Callable[[], object]:
        it = iter(())

        def next_batch() -> object:
            nonlocal it
            try:
                return next(it)
            except StopIteration:
                it = iter(batches)
                return next(it)
        return next_batch

    def forward_backward(xb: torch.Tensor = x, yb: torch.Tensor = y) -> torch.Tensor:
        with amp:
            logits = model(xb)
            loss = criterion(logits, yb)
        loss.backward()
        return loss.detach(), (logits.detach().argmax(1) == yb).sum()

    def optimizer_step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    loss0, hits0 = forward_backward()
    step_no = [0]

    def totals_add() -> None:
        step_no[0] += 1
        totals.add(loss0, hits0, args.batch, step_no[0])

    next_batch = stream()

    def whole_step() -> None:
        xb, yb = next_batch()
        loss, hits = forward_backward(xb, yb)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)
        step_no[0] += 1
        totals.add(loss, hits, len(yb), step_no[0])

    parts = {
        "batch (cut, pad-crop, flip, normalise)": timed(stream(), args.steps, device),
        "forward + backward": timed(forward_backward, args.steps, device),
        "SGD step + zero_grad": timed(optimizer_step, args.steps, device),
        "EMA update": timed(lambda: ema.update(model), args.steps, device),
        "device totals": timed(totals_add, args.steps, device),
    }
    whole = timed(whole_step, args.steps, device)
    print(json.dumps({
        "benchmark": "step_profile", "model": args.model, "batch": args.batch, "precision": args.precision,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "ms": {k: round(v, 3) for k, v in parts.items()}, "sum_of_parts_ms": round(sum(parts.values()), 3),
        "whole_step_ms": round(whole, 3), "images_per_s": round(args.batch / whole * 1e3, 1),
    }))


if __name__ == "__main__":
    main()
