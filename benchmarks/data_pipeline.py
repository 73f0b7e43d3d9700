"""Steady-state data pipeline figures on an ImageNet-size JPEG folder the script builds from the CIFAR-10 copy.

    .venv/bin/python benchmarks/data_pipeline.py                       # CPU: the loaders alone, per worker
    python benchmarks/data_pipeline.py --device cuda --images 25600    # GPU: (a), (b), (c) below as well

The folder (``--folder``, default ``runs/imagenet-size-N``, built once): N CIFAR-10 training JPEGs upscaled
(bicubic) to 500x375 with Gaussian noise (sigma 11), saved at quality 90 (about 67 KiB each), in train/ and a
small val/. Every figure is images/s after warm-up, at the same batch size and on the same images:

* loader alone, per worker (every device): the plain torchvision loop (ImageFolder + DataLoader, PIL decode,
  RandomResizedCrop and flip on uint8 tensors) and ``resnets``' streamed loader with reduced-DCT decoding on
  and off, each with ``--workers`` workers;
* ``--device cuda`` also: (a) the model alone on device-resident data (bf16 autocast, channels_last, eager),
  (b) ``resnets train`` end to end as a user runs it (its metrics after the first log interval), (c) the plain
  loop above feeding the same model, normalised on the GPU.

``--cifar-decode DIR`` instead gives the small-image figures: decoding CIFAR-10 JPEGs into the cache (cold,
cached) and DeviceBatches throughput. One JSON line per row (plain lines for ``--cifar-decode``); figures depend
on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg"


def build_folder(out: Path, images: int, cifar: Path, val_every: int = 8) -> Path:
    """``out``/train and ``out``/val of ``images`` 500x375 JPEGs made from CIFAR-10's (built once)."""
    from PIL import Image

    done = out / ".complete"
    if done.is_file():
        return out
    classes = sorted(p.name for p in (cifar / "train").iterdir() if p.is_dir())
    files = [sorted((cifar / "train" / c).glob("*.jpg")) for c in classes]
    rng = np.random.default_rng(0)
    for i in range(images):
        label = i % len(classes)
        src = files[label][i // len(classes)]
        split = "val" if i % val_every == val_every - 1 else "train"
        target = out / split / classes[label] / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            big = np.asarray(im.convert("RGB").resize((500, 375), Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = np.clip(big + rng.normal(0, 11, big.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(target, quality=90)
    done.write_text(f"{images}\n")
    return out


def rate(batches, warmup: int, count: int) -> float:
    """Images/s over ``count`` batches after ``warmup`` of the iterable ``batches``."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    start, seen = time.perf_counter(), 0
    for _ in range(count):
        seen += len(next(it)[1])
    return seen / (time.perf_counter() - start)


def plain_loader(folder: Path, batch: int, workers: int, size: int) -> torch.utils.data.DataLoader:
    """The plain loop: torchvision ImageFolder (PIL decode), RandomResizedCrop and flip on uint8 tensors."""
    from torchvision import datasets
    from torchvision.transforms import v2

    tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
    data = datasets.ImageFolder(str(folder / "train"), transform=tf)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


def ours_loader(folder: Path, batch: int, workers: int, size: int, reduced: bool):
    from resnets.data.streaming import streaming_loader

    return streaming_loader(folder / "train", None, train=True, batch_size=batch, workers=workers, image_size=size,
                            reduced_decode=reduced, pin_memory=torch.cuda.is_available())


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def loaders_alone(args: argparse.Namespace, folder: Path) -> None:
    w = max(1, args.workers)
    warm = 2 * w
    for name, make in (("plain torchvision", lambda: plain_loader(folder, args.batch, args.workers, args.size)),
                       ("resnets, reduced-DCT decode", lambda: ours_loader(folder, args.batch, args.workers,
                                                                           args.size, True)),
                       ("resnets, full decode", lambda: ours_loader(folder, args.batch, args.workers,
                                                                    args.size, False))):
        loader = make()
        r = rate(_epochs(loader), warm, args.batches)
        emit({"row": f"loader alone: {name}", "workers": args.workers, "batch": args.batch, "size": args.size,
              "images_per_s": round(r, 1), "per_worker": round(r / w, 1)})
        del loader


def _epochs(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def model_alone(args: argparse.Namespace) -> float:
    """(a) the model on device-resident data: bf16 autocast, channels_last, SGD steps."""
    import resnets

    device = torch.device(args.device)
    model = resnets.create_model(args.model).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    torch.backends.cudnn.benchmark = True

    def steps():
        while True:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            yield x, y

    return rate(steps(), 5, args.batches)


def plain_with_model(args: argparse.Namespace, folder: Path) -> float:
    """(c) the plain loop feeding the model, normalised on the GPU."""
    import resnets
    from resnets.data.feed import DeviceFeed
    from resnets.data.normalization import IMAGENET_MEAN, IMAGENET_STD

    device = torch.device(args.device)
    model = resnets.create_model(args.model).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    feed = DeviceFeed(device, IMAGENET_MEAN, IMAGENET_STD)
    loader = plain_loader(folder, args.batch, args.workers, args.size)

    def steps():
        for x, y in feed(_epochs(loader)):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            yield x, y

    return rate(steps(), 2 * max(1, args.workers), args.batches)


def train_end_to_end(args: argparse.Namespace, folder: Path) -> float:
    """(b) ``resnets train`` as a user runs it: images/s of its step records after the first."""
    out = ROOT / "runs" / f"bench-data-pipeline-{os.getpid()}"
    every = max(1, args.batches // 4)
    cmd = [sys.executable, "-m", "resnets", "train", "--model", args.model, "--data", str(folder),
           "--recipe", "imagenet-fast", "--device", args.device, "--batch-size", str(args.batch),
           "--iterations", str(every * 5), "--log-every", str(every), "--eval-every", "1000",
           "--workers", str(args.workers), "--image-size", str(args.size), "--out", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out, ignore_errors=True)
    steps = [r["images_per_s"] for r in records if "images_per_s" in r and r.get("train_loss") is not None]
    return float(np.mean(steps[1:])) if len(steps) > 1 else float("nan")


def cifar_decode(data: Path, batch_size: int = 128, batches: int = 100) -> None:
    """Decoding the CIFAR-10 JPEGs into the cache (cold, cached) and DeviceBatches throughput."""
    import tempfile

    from resnets.data import DeviceBatches, load_image_folder
    from resnets.data.decode import decode_files
    from resnets.data.folder import find_classes, scan_split

    rows = scan_split(data, find_classes(data))
    subset = [data / r[0] for r in rows[:: max(1, len(rows) // 10000)]][:10000]
    for workers in (1, 2):
        start = time.perf_counter()
        decode_files(subset, workers=workers)
        print(f"decode {len(subset)} files, {workers} thread(s): {len(subset) / (time.perf_counter() - start):,.0f} "
              "images/s")
    cache = Path(tempfile.mkdtemp(prefix="resnets-bench-"))
    try:
        images, report = load_image_folder(data, cache_dir=cache)
        print(f"cold (decode + write cache): {len(images):,} images in {report.seconds:.1f} s")
        images, report = load_image_folder(data, cache_dir=cache)
        print(f"cached (scan + read cache):  {len(images):,} images in {report.seconds:.2f} s")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    loader = DeviceBatches(images, batch_size, train=True, mean=images.mean(), std=images.std(), seed=0)
    r = rate(loader.iter_from(0), 1, min(batches, len(loader) - 1))
    print(f"DeviceBatches train (pad 4 + crop + flip + normalise, channels_last) batch {batch_size}, CPU: "
          f"{r:,.0f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=1024, help="JPEGs in the built folder")
    parser.add_argument("--folder", type=Path, default=None, help="default runs/imagenet-size-N")
    parser.add_argument("--cifar", type=Path, default=CIFAR, help="the CIFAR-10 JPEG copy (train/<class>/*.jpg)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="timed batches after warm-up")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--cifar-decode", type=Path, default=None, metavar="DIR",
                        help="only the small-image figures, on DIR (e.g. ../shared/data/cifar10-jpeg/train)")
    args = parser.parse_args()
    if args.cifar_decode is not None:
        cifar_decode(args.cifar_decode)
        return
    folder = build_folder(args.folder or ROOT / "runs" / f"imagenet-size-{args.images}", args.images, args.cifar)
    sizes = [p.stat().st_size for p in (folder / "train").rglob("*.jpg")]
    emit({"machine": f"{os.cpu_count()} CPUs", "load_average": round(os.getloadavg()[0], 1),
          "torch": torch.__version__, "folder": str(folder), "train_images": len(sizes),
          "mean_kib": round(float(np.mean(sizes)) / 1024, 1),
          "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None})
    loaders_alone(args, folder)
    if args.device == "cuda":
        a = model_alone(args)
        emit({"row": "(a) model alone, device-resident data", "images_per_s": round(a, 1)})
        c = plain_with_model(args, folder)
        emit({"row": "(c) plain torchvision loop + model", "images_per_s": round(c, 1)})
        b = train_end_to_end(args, folder)
        emit({"row": "(b) resnets train end to end", "images_per_s": round(b, 1),
              "b_over_a": round(b / a, 3), "b_over_c": round(b / c, 3)})


if __name__ == "__main__":
    main()
