"""Training throughput on CPU: ResNet-20 on a CIFAR-size JPEG folder, the resnets engine against two plain loops.

Reference "ImageFolder": as paper reproductions usually write it — torchvision ImageFolder, RandomCrop(32, 4) +
flip + ToTensor + Normalize per image, DataLoader (shuffle, workers), float32, NCHW, SGD momentum.
Reference "in memory": the same training set decoded once into a uint8 tensor N x 3 x 32 x 32 held in memory (as
ours holds it), each batch indexed from a shuffled order, padded by 4, randomly cropped and flipped as uint8,
then converted and normalised per batch; in the number format and layout ``--precision auto`` gives ours
(channels_last), same SGD step. It is what ours would be without the engine (EMA, label smoothing, logging,
the meters), so their ratio is like for like.
Ours: ``resnets.train.train`` end to end (``cifar-fast`` engine: EMA, label smoothing, logging) in each setting
of ``--variants``; ``auto`` is what a user gets by default (``--precision auto``, channels_last).
Same model (resnet20), batch 128, same machine, one run. Reports steady-state images/s (after warm-up steps) and
the ratios; the one-off decode of the JPEGs is reported apart.

    .venv/bin/python benchmarks/train_throughput.py [--data DIR] [--steps 40] [--warmup 5] [--rounds 1]
        [--variants auto,fp32-cl]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from resnets.data.normalization import CIFAR_MEAN as MEAN
from resnets.data.normalization import CIFAR_STD as STD

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg"
VARIANTS = {  # name -> (precision, channels_last, compile)
    "auto": ("auto", True, False),
    "fp32": ("fp32", False, False),
    "fp32-cl": ("fp32", True, False),
    "bf16": ("bf16", False, False),
    "bf16-cl": ("bf16", True, False),
    "bf16-cl-compile": ("bf16", True, True),
}


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def reference(root: str, steps: int, warmup: int, batch_size: int, workers: int) -> float:
    """images/s of the plain loop: ImageFolder + DataLoader + float32 NCHW."""
    import torchvision
    from torchvision import transforms

    from resnets import create_model

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = torchvision.datasets.ImageFolder(os.path.join(root, "train"), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = create_model("resnet20")
    optimizer = _sgd(model)
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
    if start is None or i + 1 < warmup + steps:
        raise SystemExit(f"{root}/train has fewer than {warmup + steps} batches of {batch_size}; lower --steps")
    return steps * batch_size / (time.perf_counter() - start)


def augment_uint8(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a uint8 batch B x 3 x H x W, still uint8."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # B x 1 x H x 1
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # B x 1 x 1 x W
    crops = padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    flip = (torch.rand(b, generator=generator) < 0.5)[:, None, None, None]
    return torch.where(flip, crops.flip(3), crops)


def in_memory(images: torch.Tensor, labels: torch.Tensor, steps: int, warmup: int, batch_size: int,
              precision: str) -> float:
    """images/s of a plain loop over a uint8 tensor set in memory: crop + flip on uint8, normalised per batch,
    under autocast to ``precision``'s format, channels_last."""
    from resnets import create_model
    from resnets.runtime import autocast_context, autocast_dtype

    cpu = torch.device("cpu")
    dtype = autocast_dtype(precision)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    if len(order) < (warmup + steps) * batch_size:
        raise SystemExit(f"{len(order)} training images are fewer than {warmup + steps} batches of {batch_size}; "
                         "lower --steps")
    torch.manual_seed(0)
    model = create_model("resnet20").to(memory_format=torch.channels_last).train()
    optimizer = _sgd(model)
    criterion = torch.nn.CrossEntropyLoss()
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        idx = order[i * batch_size:(i + 1) * batch_size]
        x = augment_uint8(images[idx], 4, generator)
        x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with autocast_context(cpu, dtype):
            loss = criterion(model(x), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def ours(data: str, variant: str, steps: int, warmup: int, batch_size: int, cache_dir: str) -> tuple[float, str]:
    """(images/s, precision used) of ``resnets.train.train`` (cifar-fast engine: EMA, label smoothing) in one
    engine setting."""
    from resnets.train import resolve_config, train

    precision, channels_last, compile_ = VARIANTS[variant]
    stamps: list[float] = []
    used: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config({"model": "resnet20", "data": data, "cache_dir": cache_dir, "batch_size": batch_size,
                              "iterations": warmup + steps, "precision": precision, "channels_last": channels_last,
                              "compile": compile_, "device": "cpu", "test_images": 256, "progress": False,
                              "plots": False, "out": os.path.join(tmp, "run")}, recipe="cifar-fast")
        train(cfg, on_step=[lambda s: stamps.append(time.perf_counter())], log=used.append)
    said = (re.search(r" on cpu, (fp32|bf16)", line) for line in used)  # the run's first line names its format
    chosen = next((m.group(1) for m in said if m), "?")
    return steps * batch_size / (stamps[-1] - stamps[warmup - 1]), chosen


def resolve_data(arg: str | None) -> tuple[str, str]:
    """(the spec ours opens, the folder the references read) for ``--data``; a one-line exit when missing."""
    from resnets.data import extract_sample

    if arg == "sample":
        return "sample", str(extract_sample())
    root = Path(arg) if arg else DEFAULT_DATA
    if not (root / "train").is_dir():
        where = f"{arg}/train" if arg else f"the default {DEFAULT_DATA.resolve()}"
        raise SystemExit(f"train_throughput.py: no training folder at {where}; give --data DIR (a folder with "
                         "train/ of class folders, e.g. ../shared/data/cifar10-jpeg) or --data sample")
    return str(root), str(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="an image folder with train/ (CIFAR-size images) or 'sample'; "
                    "default ../shared/data/cifar10-jpeg beside the checkout, if it exists")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    ap.add_argument("--variants", default="auto,fp32-cl", help=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=1, help="alternate the in-memory reference and ours N times")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/resnets"))
    args = ap.parse_args()
    if args.warmup < 1:
        raise SystemExit("train_throughput.py: --warmup must be at least 1")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"train_throughput.py: unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    spec, root = resolve_data(args.data)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f} at start; data {root}")

    from resnets import create_model
    from resnets.data import open_data
    from resnets.runtime import choose_precision

    t = time.perf_counter()
    splits = open_data(spec, cache_dir=args.cache_dir, progress=False)
    print(f"ours: open the training folder (decode or cache hit): {time.perf_counter() - t:.1f} s; "
          f"{len(splits.train)} images")
    auto = choose_precision("auto", torch.device("cpu"), create_model("resnet20").to(memory_format=torch.channels_last),
                            image_size=32, training=True, model_key="resnet20")
    ref = reference(root, args.steps, args.warmup, args.batch_size, args.workers)
    print(f"reference ImageFolder (DataLoader x{args.workers}, fp32, NCHW): {ref:.0f} images/s")
    for r in range(args.rounds):  # the in-memory reference and ours alternate, so a busy spell hits both
        tag = f"[round {r + 1}] " if args.rounds > 1 else ""
        mem = in_memory(splits.train.images, splits.train.labels, args.steps, args.warmup, args.batch_size, auto)
        print(f"{tag}reference in memory (uint8 tensors, crop + flip per batch, {auto} (what auto picks), "
              f"channels_last): {mem:.0f} images/s; load average {os.getloadavg()[0]:.1f}", flush=True)
        for variant in args.variants.split(","):
            ips, used = ours(spec, variant, args.steps, args.warmup, args.batch_size, args.cache_dir)
            print(f"{tag}ours {variant:>16} ({used}): {ips:.0f} images/s  ({ips / ref:.2f}x ImageFolder, "
                  f"{ips / mem:.2f}x in memory{'' if used == auto else ', another precision'}); "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"# load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
