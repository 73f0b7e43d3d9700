"""Training throughput: ResNet-20 on full CIFAR-10 (JPEG folder), the resnets engine vs a plain reference loop.

Reference: as paper reproductions usually write it — torchvision ImageFolder, RandomCrop(32, 4) + flip +
ToTensor + Normalize, DataLoader (shuffle, workers), float32, NCHW, SGD momentum. Ours: ``resnets.train.train``
end to end (decoded set held in memory, batches cut and augmented with tensor ops, the loop with EMA and
logging) in several engine settings. Same model (resnet20), batch 128, same machine, one run. Reports images/s
of the steady state (after warm-up steps) and the ratio; the one-off decode of the JPEGs is reported apart.

    .venv/bin/python benchmarks/train_throughput.py [--steps 40] [--warmup 5] [--variants bf16-cl,fp32]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from resnets.data.normalization import CIFAR_MEAN as MEAN
from resnets.data.normalization import CIFAR_STD as STD

DATA = "/work/shared/data/cifar10-jpeg"
VARIANTS = {  # name -> (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "fp32-cl": ("fp32", True, False),
    "bf16": ("bf16", False, False),
    "bf16-cl": ("bf16", True, False),
    "bf16-cl-compile": ("bf16", True, True),
}


def reference(steps: int, warmup: int, batch_size: int, workers: int) -> float:
    """images/s of the plain loop: ImageFolder + DataLoader + float32 NCHW."""
    import torchvision
    from torchvision import transforms

    from resnets import create_model

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = torchvision.datasets.ImageFolder(os.path.join(DATA, "train"), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = create_model("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    start = None
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            start = time.perf_counter()
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i + 1 == warmup + steps:
            break
    assert start is not None
    return steps * batch_size / (time.perf_counter() - start)


def ours(variant: str, steps: int, warmup: int, batch_size: int, cache_dir: str) -> float:
    """images/s of ``resnets.train.train`` (cifar-fast engine: EMA, label smoothing) in one engine setting."""
    from resnets.train import resolve_config, train

    precision, channels_last, compile_ = VARIANTS[variant]
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config({"model": "resnet20", "data": DATA, "cache_dir": cache_dir, "batch_size": batch_size,
                              "iterations": warmup + steps, "precision": precision, "channels_last": channels_last,
                              "compile": compile_, "device": "cpu", "test_images": 256, "progress": False,
                              "plots": False, "out": os.path.join(tmp, "run")}, recipe="cifar-fast")
        train(cfg, on_step=[lambda s: stamps.append(time.perf_counter())], log=lambda _: None)
    return steps * batch_size / (stamps[-1] - stamps[warmup - 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    ap.add_argument("--variants", default="fp32,fp32-cl,bf16-cl", help=",".join(VARIANTS))
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/resnets"))
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f} at start")

    from resnets.data import open_data

    t = time.perf_counter()
    open_data(DATA, cache_dir=args.cache_dir)
    print(f"ours: open full CIFAR-10 JPEG folder (decode or cache hit): {time.perf_counter() - t:.1f} s")
    ref = reference(args.steps, args.warmup, args.batch_size, args.workers)
    print(f"reference (ImageFolder + DataLoader x{args.workers}, fp32, NCHW): {ref:.0f} images/s")
    for variant in args.variants.split(","):
        ips = ours(variant, args.steps, args.warmup, args.batch_size, args.cache_dir)
        print(f"ours {variant:>16}: {ips:.0f} images/s  ({ips / ref:.2f}x reference)")
    print(f"# load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
