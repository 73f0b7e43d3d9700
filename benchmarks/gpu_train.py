"""ResNet training throughput with synthetic data: resnets as a user gets it against torchvision, like for like.

Every row runs the same batch through the same SGD step (momentum 0.9, weight decay 1e-4), in one process:

* ``reference_fp32``: torchvision's model, eager float32 NCHW with PyTorch's defaults as a user gets them
  (TF32 convolutions on, cudnn.benchmark off). Context only: not the headline.
* ``reference`` / ``reference_compiled``: torchvision's model with the usual mixed-precision recipe, in the
  number format ours runs in (bf16 autocast on a GPU with bf16), channels_last, cudnn.benchmark on; eager,
  then ``torch.compile``.
* ``ours`` / ``ours_compiled``: ``resnets.create_model`` as ``resnets train`` runs it by default (precision
  ``auto``, channels_last, cudnn.benchmark on a GPU, eager), then with ``--compile``.

The headline ratios are like for like: ``ours / reference`` (eager against eager) and ``ours_compiled /
reference_compiled``; ``ours / reference_fp32`` is kept for context. Prints one JSON line per row as it
finishes, then the summary line with all rows and ratios (last); ``benchmarks/gpu.sh`` calls it.

    python benchmarks/gpu_train.py --model resnet50 --batch 256 --steps 30
    python benchmarks/gpu_train.py --device cpu --quick      # a smoke test of the script at tiny sizes
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_steps(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the first step, compilation included; seconds per step after the warm-up steps)."""
    t = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
        return first, start.elapsed_time(end) / 1e3 / steps
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return first, (time.perf_counter() - t) / steps


def _make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    """One SGD step on (x, y) under autocast to ``dtype`` (None: float32); fp16 with a gradient scaler."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(x.device.type) if dtype == torch.float16 else None

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    return step


def _row(name: str, setting: str, batch: int, first: float, per_step: float, device: torch.device) -> dict[str, Any]:
    row = {"row": name, "setting": setting, "images_per_s": round(batch / per_step, 1),
           "first_step_s": round(first, 1)}
    if device.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=None, help="default 256 (--quick: 4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps; default 30 (--quick: 2)")
    ap.add_argument("--warmup", type=int, default=None, help="default 5 (--quick: 1)")
    ap.add_argument("--size", type=int, default=None, help="image side; default 224 (--quick: 64)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                    help="ours and the like-for-like reference rows (auto: what resnets train picks)")
    ap.add_argument("--no-compile", action="store_true", help="skip the two compiled rows")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs (CPU too)")
    args = ap.parse_args()
    quick = args.quick
    batch = args.batch or (4 if quick else 256)
    steps = args.steps or (2 if quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 5)
    size = args.size or (64 if quick else 224)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu for a smoke test)")
    import torchvision

    from resnets import create_model
    from resnets.runtime import autocast_dtype, choose_precision

    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    ours_model = create_model(args.model).to(device, memory_format=torch.channels_last).train()
    precision = choose_precision(args.precision, device, ours_model, image_size=size, training=True,
                                 model_key=args.model)
    dtype = autocast_dtype(precision)
    fmt = f"{precision} autocast" if dtype is not None else "float32"
    rows: dict[str, dict[str, Any]] = {}

    def run(name: str, setting: str, model: nn.Module, inputs: torch.Tensor, step_dtype: torch.dtype | None,
            benchmark: bool, compile_: bool) -> None:
        torch.backends.cudnn.benchmark = benchmark
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fn = torch.compile(model) if compile_ else model
        first, per_step = _time_steps(_make_step(fn, inputs, y, step_dtype), steps, warmup, device)
        rows[name] = _row(name, setting, batch, first, per_step, device)
        print(json.dumps(rows[name]), flush=True)  # each row at once: a compile that runs out of time leaves the rest

    reference = getattr(torchvision.models, args.model)(weights=None).to(device).train()
    defaults = ": TF32 convolutions, no cudnn.benchmark" if device.type == "cuda" else ""
    run("reference_fp32", f"torchvision eager float32 NCHW (PyTorch defaults{defaults})", reference, x, None,
        benchmark=False, compile_=False)
    del reference
    recipe = f"{fmt}, channels_last" + (", cudnn.benchmark" if device.type == "cuda" else "")
    for compiled in (False, True) if not args.no_compile else (False,):
        reference = getattr(torchvision.models, args.model)(weights=None).to(device, memory_format=torch.channels_last)
        run("reference_compiled" if compiled else "reference",
            f"torchvision {'compiled' if compiled else 'eager'}, {recipe}", reference.train(), x_cl, dtype,
            benchmark=True, compile_=compiled)
        del reference
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for compiled in (False, True) if not args.no_compile else (False,):
        ours = ours_model if not compiled else create_model(args.model).to(device, memory_format=torch.channels_last)
        run("ours_compiled" if compiled else "ours",
            f"resnets {'--compile' if compiled else 'default (eager)'}: precision {args.precision} -> {recipe}",
            ours.train(), x_cl, dtype, benchmark=device.type == "cuda", compile_=compiled)
        del ours
    ips = {name: row["images_per_s"] for name, row in rows.items()}
    ratios = {"ours / reference (eager, like for like)": round(ips["ours"] / ips["reference"], 2),
              "ours / reference_fp32 (context: not like for like)": round(ips["ours"] / ips["reference_fp32"], 2)}
    if not args.no_compile:
        ratios["ours_compiled / reference_compiled (like for like)"] = round(
            ips["ours_compiled"] / ips["reference_compiled"], 2)
        ratios["ours_compiled / ours (what --compile buys)"] = round(ips["ours_compiled"] / ips["ours"], 2)
    print(json.dumps({
        "benchmark": "gpu_train_synthetic", "model": args.model, "batch": batch, "size": size, "steps": steps,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "torchvision": torchvision.__version__, "precision": precision, "rows": rows, "ratios": ratios,
    }))


if __name__ == "__main__":
    main()
