"""ResNet-50 inference throughput on one CUDA GPU: BN folded, bf16 weights, channels_last, torch.compile.

Random weights and inputs (speed only). Prints one JSON line for the reference (torchvision's model, eager
float32 NCHW, PyTorch's default settings), then one for ours eager and one compiled, each with its ratio to the reference (the
last line is the headline figure); ``benchmarks/gpu.sh`` calls it.

    python benchmarks/gpu_infer.py --batch 256 --iters 50
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-compile", action="store_true", help="eager instead of torch.compile")
    ap.add_argument("--mode", default=None, help="torch.compile mode (default: the default mode, quick to compile)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")

    import torchvision

    from resnets import create_model
    from resnets.infer.fastpath import fold_batchnorm

    device = torch.device("cuda")
    reference = getattr(torchvision.models, args.model)(weights=None).to(device).eval()
    x32 = torch.randn(args.batch, 3, args.size, args.size, device=device)
    ref = measure(reference, x32, args, "reference", "float32", channels_last=False, folded=False)
    ref["setting"] = "torchvision eager float32 NCHW (PyTorch defaults)"
    print(json.dumps(ref), flush=True)
    del reference, x32
    torch.cuda.empty_cache()

    torch.backends.cudnn.benchmark = True
    model = fold_batchnorm(create_model(args.model)).to(device, memory_format=torch.channels_last)
    model = model.to(torch.bfloat16).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device, dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    # Eager first, printed at once, so a compile that runs out of time still leaves a figure.
    runs = [("eager", model)]
    if not args.no_compile:
        runs.append(("compiled", torch.compile(model, mode=args.mode)))
    for name, run in runs:
        result = measure(run, x, args, name, "bfloat16", channels_last=True, folded=True)
        result["ratio"] = round(result["images_per_s"] / ref["images_per_s"], 2)
        print(json.dumps(result), flush=True)


def measure(run: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace, name: str, dtype: str,
            channels_last: bool, folded: bool) -> dict[str, object]:
    """Images/s of ``run`` on ``x`` over ``args.iters`` batches, after the first call and a warm-up."""
    with torch.inference_mode():
        t = time.perf_counter()
        run(x)
        torch.cuda.synchronize()
        first = time.perf_counter() - t
        for _ in range(args.warmup):
            run(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.iters):
            run(x)
        end.record()
        torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3
    return {
        "benchmark": "gpu_infer", "model": args.model, "batch": args.batch, "size": args.size,
        "dtype": dtype, "channels_last": channels_last, "bn_folded": folded, "path": name,
        "compile_mode": args.mode if name == "compiled" else None, "first_call_s": round(first, 1),
        "images_per_s": round(args.batch * args.iters / seconds, 1),
        "ms_per_batch": round(seconds / args.iters * 1e3, 2), "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    main()
