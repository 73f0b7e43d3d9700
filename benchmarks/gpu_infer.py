"""ResNet inference throughput: resnets as a user gets it against torchvision, like for like, eager and compiled.

Random weights and inputs (speed only), one process, the same batch for every row:

* ``reference_fp32``: torchvision's model, eager float32 NCHW with PyTorch's defaults as a user gets them (TF32
  convolutions on, cudnn.benchmark off). Context only: not the headline.
* ``reference`` / ``reference_compiled``: torchvision's model with the usual mixed-precision recipe, in the
  number format ours runs in (bf16 autocast on a GPU with bf16), channels_last; eager, then ``torch.compile``.
* ``ours`` / ``ours_compiled``: ``resnets.create_model`` as ``resnets eval --device cuda`` runs it by default
  (precision ``auto``, channels_last, eager), then compiled.
* ``ours_folded`` / ``ours_folded_compiled`` and ``reference_folded`` / ``reference_folded_compiled``: batch
  norm folded into the convolutions (``resnets.infer.fastpath.fold_batchnorm``, which folds torchvision's
  ResNets too) and the weights cast to bf16: the fastest form, compared with torchvision given the same.

Every row after ``reference_fp32`` runs with cudnn.benchmark on. The headline ratios are like for like:
``ours / reference`` (eager), ``ours_compiled / reference_compiled``, and the folded pairs; ``ours /
reference_fp32`` is kept for context. One JSON line per row as it finishes (so a compile that runs out of
time still leaves the rows before it), then the summary with every row and ratio (last);
``benchmarks/gpu.sh`` calls it. A compiled row's ``first_call_s`` after the first one is shortened by the
kernels inductor already compiled for an earlier row; the steady-state figures are not affected.

    python benchmarks/gpu_infer.py --batch 256 --iters 50
    python benchmarks/gpu_infer.py --device cpu --quick      # a smoke test of the script at tiny sizes
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def measure(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int, warmup: int,
            dtype: torch.dtype | None) -> tuple[float, float]:
    """(seconds of the first call, compilation included; seconds per batch over ``iters`` after the warm-up),
    under inference mode and autocast to ``dtype`` (None: none)."""
    device = x.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        t = time.perf_counter()
        run(x)
        sync()
        first = time.perf_counter() - t
        for _ in range(warmup):
            run(x)
        sync()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                run(x)
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t = time.perf_counter()
            for _ in range(iters):
                run(x)
            seconds = time.perf_counter() - t
    return first, seconds / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=None, help="default 256 (--quick: 4)")
    ap.add_argument("--iters", type=int, default=None, help="timed batches; default 50 (--quick: 2)")
    ap.add_argument("--warmup", type=int, default=None, help="default 10 (--quick: 1)")
    ap.add_argument("--size", type=int, default=None, help="image side; default 224 (--quick: 64)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                    help="ours and the like-for-like reference rows (auto: what resnets eval picks)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    ap.add_argument("--no-folded", action="store_true", help="skip the BN-folded rows")
    ap.add_argument("--mode", default=None, help="torch.compile mode (default: the default mode, quick to compile)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs (CPU too)")
    args = ap.parse_args()
    quick = args.quick
    batch = args.batch or (4 if quick else 256)
    iters = args.iters or (2 if quick else 50)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 10)
    size = args.size or (64 if quick else 224)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu for a smoke test)")

    import torchvision

    from resnets import create_model
    from resnets.infer.fastpath import fold_batchnorm
    from resnets.runtime import autocast_dtype, choose_precision

    device = torch.device(args.device)
    cl = torch.channels_last
    torch.manual_seed(0)
    x32 = torch.randn(batch, 3, size, size, device=device)
    x_cl = x32.contiguous(memory_format=cl)
    precision = choose_precision(args.precision, device, create_model(args.model).to(device, memory_format=cl).eval(),
                                 image_size=size, model_key=args.model)
    dtype = autocast_dtype(precision)
    fmt = f"{precision} autocast" if dtype is not None else "float32"
    rows: dict[str, dict[str, Any]] = {}
    modes = (False,) if args.no_compile else (False, True)

    def run(name: str, setting: str, model: nn.Module, x: torch.Tensor, run_dtype: torch.dtype | None,
            compiled: bool, benchmark: bool = True) -> None:
        torch.backends.cudnn.benchmark = benchmark
        fn = torch.compile(model, mode=args.mode) if compiled else model
        first, per_batch = measure(fn, x, iters, warmup, run_dtype)
        rows[name] = {"row": name, "setting": setting + (", compiled" if compiled else ", eager"),
                      "images_per_s": round(batch / per_batch, 1), "ms_per_batch": round(per_batch * 1e3, 2),
                      "first_call_s": round(first, 1)}
        print(json.dumps(rows[name]), flush=True)

    def torchvision_model() -> nn.Module:
        return getattr(torchvision.models, args.model)(weights=None).to(device).eval()

    def ours_model() -> nn.Module:
        return create_model(args.model).to(device).eval()

    defaults = ": TF32 convolutions, no cudnn.benchmark" if device.type == "cuda" else ""
    run("reference_fp32", f"torchvision float32 NCHW (PyTorch defaults{defaults})", torchvision_model(), x32, None,
        compiled=False, benchmark=False)
    for compiled in modes:
        suffix = "_compiled" if compiled else ""
        run(f"reference{suffix}", f"torchvision, {fmt}, channels_last", torchvision_model().to(memory_format=cl),
            x_cl, dtype, compiled)
        run(f"ours{suffix}", f"resnets default ({args.precision} -> {fmt}, channels_last)",
            ours_model().to(memory_format=cl), x_cl, dtype, compiled)
    if not args.no_folded:
        # bf16 weights where ours runs in bf16 (the input cast to match); else folded in float32 under autocast
        wdtype = dtype if dtype is not None else torch.float32
        xf = x_cl.to(wdtype)
        folded = f"BN folded, {str(wdtype).removeprefix('torch.')} weights, channels_last"
        for compiled in modes:
            suffix = "_compiled" if compiled else ""
            for who, make in (("reference", torchvision_model), ("ours", ours_model)):
                model = fold_batchnorm(make()).to(device, memory_format=cl).to(wdtype)
                run(f"{who}_folded{suffix}", f"{'torchvision' if who == 'reference' else 'resnets'}, {folded}",
                    model, xf, None, compiled)
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    ips = {name: row["images_per_s"] for name, row in rows.items()}
    ratios: dict[str, float] = {}
    for suffix in ("", "_folded"):
        for mode in modes:
            key = f"{suffix}{'_compiled' if mode else ''}"
            if f"ours{key}" in ips:
                ratios[f"ours{key} / reference{key} (like for like)"] = round(ips[f"ours{key}"] / ips[f"reference{key}"], 2)
    ratios["ours / reference_fp32 (context: not like for like)"] = round(ips["ours"] / ips["reference_fp32"], 2)
    if "ours_folded" in ips:
        ratios["ours_folded / ours (what folding and bf16 weights buy)"] = round(ips["ours_folded"] / ips["ours"], 2)
    print(json.dumps({
        "benchmark": "gpu_infer", "model": args.model, "batch": batch, "size": size, "iters": iters,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "torchvision": torchvision.__version__, "precision": precision, "compile_mode": args.mode,
        "rows": rows, "ratios": ratios,
    }))


if __name__ == "__main__":
    main()
